"""OS isolation for AgentProcesses. ``contain.apply`` runs the layers in order.

One module per kernel concept (cgroups, namespaces, landlock, privileges, rlimits,
seccomp), ``profile`` decides what a process gets, ``contain`` applies it in the child,
``doctor`` reports what this host can enforce.
"""

__all__ = ["cgroups", "contain", "doctor", "landlock", "namespaces", "pdeathsig",
           "privileges", "profile", "rlimits", "seccomp"]
