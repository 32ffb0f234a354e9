"""JIT TypeScript tools: finding Deno, the runner, and the argv that runs it stripped."""

__all__ = ["deno"]
