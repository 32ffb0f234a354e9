"""Names, constants and limit values shared by every part of the cgroups package."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Final, Literal

from agentlibos.errors import InvalidArgument

CGROUPS_LAYER: Final = "cgroups"

# Every per-supervisor group starts with this, so cleanup_stale() can find the
# leftovers of any supervisor, whatever its pid, without touching anyone else's cgroups.
GROUP_PREFIX: Final = "agentlibos-"
SUPERVISOR_LEAF: Final = "supervisor"
AGENTS_DIR: Final = "agents"
UNIFIED: Final = "unified"  # the hierarchy key of the cgroup2 mount, in every mapping here

CPU_PERIOD_US: Final = 100_000  # the kernel default CFS period
CPU_QUOTA_MIN_US: Final = 1_000  # the kernel refuses a smaller quota (EINVAL)

# A supervisor that has made its group but not yet moved into its leaf looks exactly like
# a dead one; cleanup_stale() leaves groups younger than this alone.
STALE_MIN_AGE_S: Final = 10.0
FREEZE_TIMEOUT_S: Final = 1.0
SWEEP_TIMEOUT_S: Final = 2.0

# cgroup.kill appeared in Linux 5.14, cgroup.freeze in 5.2.
_KILL_SINCE: Final = (5, 14)
_FREEZE_SINCE: Final = (5, 2)

CgroupVersion = Literal["v1", "v2", "hybrid"]
LIMIT_CONTROLLERS: Final = ("memory", "pids", "cpu")
_FEATURES: Final = ("memory", "pids", "cpu", "freezer", "kill")
_V1_KEYS: Final = ("memory", "pids", "cpu", "cpuacct", "freezer")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")
# A nested AgentProcess's cgroup holds its own processes in this leaf and its children's
# cgroups beside it: cgroup v2 takes processes only in cgroups without controllers
# enabled for children, and the tree's limits sit on the directory above both.
SELF_LEAF: Final = "self"


@dataclass(frozen=True)
class CgroupLimits:
    """What one AgentProcess may use; ``None`` means no limit of that kind."""

    memory_max_bytes: int | None = None
    pids_max: int | None = None
    cpu_max_cores: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("memory_max_bytes", self.memory_max_bytes),
                            ("pids_max", self.pids_max)):
            v: object = value
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidArgument(f"cgroups: {name} must be a positive integer or None, "
                                      f"got {v!r}")
        c: object = self.cpu_max_cores
        if c is None:
            return
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
            raise InvalidArgument(f"cgroups: cpu_max_cores must be a number of cores or None, "
                                  f"got {c!r}")
        if c * CPU_PERIOD_US < CPU_QUOTA_MIN_US:
            raise InvalidArgument(
                f"cgroups: cpu_max_cores={c} is below the smallest quota the kernel accepts "
                f"({CPU_QUOTA_MIN_US / CPU_PERIOD_US} cores)")


@dataclass(frozen=True)
class LimitWrite:
    """One value for one file in one controller's directory of an agent's cgroup."""

    controller: str  # memory | pids | cpu
    file: str
    value: str
    # Written only when the kernel offers the file: swap accounting can be compiled out
    # or off (swapaccount=0), and memory.oom.group needs Linux 4.19.
    optional: bool = False




def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or name in (SELF_LEAF, SUPERVISOR_LEAF, AGENTS_DIR):
        raise InvalidArgument(f"cgroups: {what} {name!r} is not a plain directory name "
                              f"(letters, digits, _ . @ : + -; at most 200; not "
                              f"{SELF_LEAF}, {SUPERVISOR_LEAF} or {AGENTS_DIR})")


def group_name(pid: int | None = None) -> str:
    """The conventional group name of the supervisor with this pid (default: ours)."""
    return f"{GROUP_PREFIX}{os.getpid() if pid is None else pid}"
