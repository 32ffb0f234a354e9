"""Resource providers: how the broker performs effects for agents (files, models)."""

__all__ = ["fs", "fstree", "models"]
