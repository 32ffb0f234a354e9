"""Resource limits the kernel applies per process (cgroups bound the whole tree).

* ``core`` 0      -- a crash must not write the agent's memory (its credential, other
  data it read through the broker) to a core file;
* ``nofile``      -- bounds file descriptors (each one pins kernel memory);
* ``fsize``       -- bounds any single file it writes (its scratch, its log);
* ``nproc`` is not used: it counts per uid across the host; the pids cgroup is exact.
"""

from __future__ import annotations

import resource
from typing import Final

from agentlibos.errors import SandboxError

RLIMITS_LAYER: Final = "rlimits"

_NAMES: Final[dict[str, int]] = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
}


def apply(limits: dict[str, int]) -> None:
    """Set soft and hard limit of each named resource to the value (bytes, count, s)."""
    for name, value in limits.items():
        res = _NAMES.get(name)
        if res is None:
            raise SandboxError(f"rlimits: unknown limit {name!r}")
        try:
            resource.setrlimit(res, (value, value))
        except (OSError, ValueError) as e:
            raise SandboxError(f"rlimits: cannot set {name} to {value}: {e}") from None
        if resource.getrlimit(res) != (value, value):
            raise SandboxError(f"rlimits: {name} did not take")


def verify(limits: dict[str, int]) -> None:
    """Check that each limit is in place (a pooled process set them before assignment)."""
    for name, value in limits.items():
        res = _NAMES.get(name)
        if res is None or resource.getrlimit(res) != (value, value):
            raise SandboxError(f"rlimits: {name} is not {value}")
