"""cgroup v1: one hierarchy per controller; which files carry a limit, and the freezer.

v1 has no "no internal processes" rule and no cgroup.kill: a whole tree is killed by
freezing it through ``freezer.state`` and signalling what is left (see _kernel.py).
"""

from __future__ import annotations

from typing import Final

from agentlibos.sandbox.cgroups._common import CPU_PERIOD_US, LimitWrite

FREEZER_STATE: Final = "freezer.state"
FROZEN: Final = "FROZEN"
THAWED: Final = "THAWED"


def memory_writes(limit_bytes: int) -> list[LimitWrite]:
    n = str(limit_bytes)
    # memsw (memory + swap) must be >= the memory limit, so it is written second.
    # Without it an agent that fills its limit is swapped out instead of killed.
    return [LimitWrite("memory", "memory.limit_in_bytes", n),
            LimitWrite("memory", "memory.memsw.limit_in_bytes", n, optional=True)]


def cpu_writes(quota_us: int) -> list[LimitWrite]:
    # Period first: a quota is checked against the period in force when written.
    return [LimitWrite("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
            LimitWrite("cpu", "cpu.cfs_quota_us", str(quota_us))]
