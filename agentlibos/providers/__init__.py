"""Resource providers: how the broker performs effects for agents (files, HTTP, models)."""

__all__ = ["fs", "fstree", "models", "net"]
