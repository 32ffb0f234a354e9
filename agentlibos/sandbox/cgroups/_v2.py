"""cgroup v2: one hierarchy; which files carry a limit, and cgroup.subtree_control.

v2's rules shape the whole layout: a controller reaches a cgroup only when every
ancestor enabled it in its ``cgroup.subtree_control``, and a cgroup other than the root
that has any controller enabled there holds no processes ("no internal processes").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from agentlibos.sandbox.cgroups._common import CPU_PERIOD_US, LimitWrite

SUBTREE_CONTROL: Final = "cgroup.subtree_control"
KILL: Final = "cgroup.kill"
FREEZE: Final = "cgroup.freeze"
EVENTS: Final = "cgroup.events"


def memory_writes(limit_bytes: int) -> list[LimitWrite]:
    return [LimitWrite("memory", "memory.max", str(limit_bytes)),
            LimitWrite("memory", "memory.swap.max", "0", optional=True),
            # An agent is one unit: after an OOM kill of one of its processes the
            # rest is broken anyway, so the kernel kills the whole group.
            LimitWrite("memory", "memory.oom.group", "1", optional=True)]


def cpu_writes(quota_us: int) -> list[LimitWrite]:
    return [LimitWrite("cpu", "cpu.max", f"{quota_us} {CPU_PERIOD_US}")]


def enable_value(controllers: Sequence[str]) -> str:
    return " ".join(f"+{c}" for c in controllers)


def disable_value(controllers: Sequence[str]) -> str:
    return " ".join(f"-{c}" for c in controllers)


def subtree_control_writes(dirs: Sequence[str],
                           controllers: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Enable ``controllers`` down ``dirs``, top down (each write needs the one above)."""
    if not controllers:
        return ()
    value = enable_value(controllers)
    return tuple((f"{d.rstrip('/')}/{SUBTREE_CONTROL}", value) for d in dirs)
