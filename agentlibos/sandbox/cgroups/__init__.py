"""cgroups: memory, pids and CPU limits for AgentProcesses, and killing a whole tree.

One interface over the three host shapes, chosen at run time by :func:`detect`:

* **v1**: one hierarchy per controller (``/sys/fs/cgroup/memory``, ``.../pids``...);
* **hybrid**: v1 controllers beside a cgroup2 mount that has none of them but still
  offers ``cgroup.kill``, ``cgroup.freeze`` and ``cgroup.events``;
* **v2**: one cgroup2 hierarchy with the controllers, under the "no internal
  processes" rule.

The package is split by what each part does:

* deciding, pure (``_host``, ``_plan``): :func:`detect` turns the texts of
  ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` into a :class:`CgroupHost`;
  :func:`plan_placement` turns a :class:`HostDescription` into a :class:`Placement` (its
  own cgroup, a new one under the root, a delegated one) or a :class:`Refusal` with the
  command that fixes it; :func:`plan_layout` gives the directories; :func:`limit_writes`
  the files for :class:`CgroupLimits`;
* what differs by version (``_v1``, ``_v2``): limit files, the freezer, subtree_control;
* applying, thin (``_kernel``, ``_process``, ``_manager``): :class:`CgroupManager`
  performs the plans on cgroupfs *before* fork; the forked child calls :func:`join` and
  nothing else; :class:`ProcessCgroup` kills and reads back what the kernel counted.

Layout, file mapping and what is tested where: docs/sandbox-cgroups.md.
"""

from agentlibos.sandbox.cgroups._common import (
    AGENTS_DIR,
    CGROUPS_LAYER,
    CPU_PERIOD_US,
    GROUP_PREFIX,
    LIMIT_CONTROLLERS,
    SELF_LEAF,
    STALE_MIN_AGE_S,
    SUPERVISOR_LEAF,
    UNIFIED,
    CgroupLimits,
    CgroupVersion,
    LimitWrite,
    group_name,
)
from agentlibos.sandbox.cgroups._describe import describe, describe_host, place
from agentlibos.sandbox.cgroups._host import CgroupHost, detect
from agentlibos.sandbox.cgroups._kernel import HOST_FS, CgroupFs, HostFs
from agentlibos.sandbox.cgroups._manager import CgroupManager
from agentlibos.sandbox.cgroups._plan import (
    DELEGATE_COMMAND,
    CgroupLevel,
    Hierarchy,
    HostDescription,
    Layout,
    Placement,
    PlacementKind,
    Refusal,
    limit_writes,
    plan_layout,
    plan_placement,
)
from agentlibos.sandbox.cgroups._process import ProcessCgroup, join, join_fds, make_own

__all__ = [
    "AGENTS_DIR",
    "CGROUPS_LAYER",
    "CPU_PERIOD_US",
    "DELEGATE_COMMAND",
    "GROUP_PREFIX",
    "HOST_FS",
    "LIMIT_CONTROLLERS",
    "SELF_LEAF",
    "STALE_MIN_AGE_S",
    "SUPERVISOR_LEAF",
    "UNIFIED",
    "CgroupFs",
    "CgroupHost",
    "CgroupLevel",
    "CgroupLimits",
    "CgroupManager",
    "CgroupVersion",
    "Hierarchy",
    "HostDescription",
    "HostFs",
    "Layout",
    "LimitWrite",
    "Placement",
    "PlacementKind",
    "ProcessCgroup",
    "Refusal",
    "describe",
    "describe_host",
    "detect",
    "group_name",
    "join",
    "join_fds",
    "limit_writes",
    "make_own",
    "place",
    "plan_layout",
    "plan_placement",
]
