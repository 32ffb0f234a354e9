"""Resource providers: how the broker performs effects for agents (files, HTTP)."""

__all__ = ["fs", "fstree", "net"]
