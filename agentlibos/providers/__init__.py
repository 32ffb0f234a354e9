"""Resource providers: how the broker performs effects for agents (files today)."""

__all__ = ["fs", "fstree"]
