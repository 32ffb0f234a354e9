"""Code that runs in other processes: the zygote and the agent child it forks.

Nothing here runs in the supervisor: ``zygote.py`` is its own interpreter (started
before the supervisor makes a ZeroMQ context), ``child.py`` runs in each fork.
"""

__all__ = ["child", "zygote"]
