"""Agent libOS: LLM agents as sandboxed host processes behind a capability broker."""

__version__ = "0.1.0"

__all__ = ["__version__"]
