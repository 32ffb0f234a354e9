"""cgroups: pure decisions, the pure-v2 paths on a rules-keeping fake, real children here.

Three layers of tests:

* pure: detect() on sample texts of real host shapes, plan_layout(), limit_writes();
* a fake cgroup2 (``FakeCgroup2``) that keeps the kernel's v2 rules (no internal
  processes, controllers flow down through subtree_control, busy rmdir refused), to
  drive setup/create/teardown/cleanup_stale as on a pure v2 host, which CI lacks;
* privileged: real children on this host's cgroups, looking from inside, attacking
  (memory hog, fork bomb, spinner, escapees), and checking nothing leaks.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import itertools
import os
import select
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from agentlibos.errors import InvalidArgument, SandboxError
from agentlibos.sandbox.cgroups import (
    CGROUPS_LAYER,
    GROUP_PREFIX,
    UNIFIED,
    CgroupFs,
    CgroupHost,
    CgroupLimits,
    CgroupManager,
    LimitWrite,
    ProcessCgroup,
    describe,
    detect,
    group_name,
    join,
    limit_writes,
    plan_layout,
)

MiB = 1 << 20

# ----------------------------------------------------------------- sample host texts

# This machine (and CI): v1 controllers, each its own mount, beside a controller-less
# cgroup2; the memory cgroup is not the root.
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/35b0118fe4c004173132516edbb95199
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
HYBRID_FILES = {"/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
                "/proc/sys/kernel/osrelease": "6.18.44-fc-v769\n"}

# A Fedora-like pure v2 host; the process sits in a login session's scope.
V2_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw,seclabel
27 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,seclabel,nsdelegate,memory_recursiveprot
64 1 259:3 / / rw,relatime shared:1 - btrfs /dev/nvme0n1p3 rw,seclabel,compress=zstd:1
"""
SCOPE = "/user.slice/user-1000.slice/session-3.scope"
V2_CGROUP = f"0::{SCOPE}\n"
V2_FILES = {f"/sys/fs/cgroup{SCOPE}/cgroup.controllers": "cpu memory pids\n",
            f"/sys/fs/cgroup{SCOPE}/cgroup.kill": "",
            f"/sys/fs/cgroup{SCOPE}/cgroup.freeze": "0\n",
            "/proc/sys/kernel/osrelease": "6.8.9-300.fc40.x86_64\n"}

# A v1-only host (no cgroup2 at all, an older kernel): cpu and cpuacct co-mounted.
V1_MOUNTINFO = """\
25 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup \
rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup \
cgroup rw,cpuacct,cpu
30 25 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup \
rw,memory
31 25 0:26 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup \
rw,pids
32 25 0:27 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup \
rw,freezer
"""
V1_CGROUP = """\
11:pids:/system.slice/agentlibos.service
10:freezer:/
4:cpu,cpuacct:/system.slice/agentlibos.service
3:memory:/system.slice/agentlibos.service
1:name=systemd:/system.slice/agentlibos.service
"""
V1_FILES = {"/proc/sys/kernel/osrelease": "4.9.0-19-amd64\n"}

NO_CGROUP_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
"""


# ------------------------------------------------------------------------ detect()


def test_detect_finds_this_hosts_hybrid_layout() -> None:
    h = detect(HYBRID_MOUNTINFO, HYBRID_CGROUP, files=HYBRID_FILES)
    assert h.version == "hybrid"
    assert h.own_dirs["memory"] == ("/sys/fs/cgroup/memory/process_api/"
                                    "35b0118fe4c004173132516edbb95199")
    assert h.own_dirs["pids"] == "/sys/fs/cgroup/pids"
    assert h.own_dirs[UNIFIED] == "/sys/fs/cgroup/unified"
    assert h.usable == {"memory", "pids", "cpu", "freezer", "kill"}
    assert h.hierarchy_of("memory") == "memory"
    assert h.hierarchy_of("kill") == UNIFIED
    assert h.v2_controllers == {"hugetlb"}
    assert h.problems == ()


def test_detect_pure_v2_systemd_session_scope() -> None:
    h = detect(V2_MOUNTINFO, V2_CGROUP, files=V2_FILES)
    assert h.version == "v2"
    assert h.mounts == {UNIFIED: "/sys/fs/cgroup"}
    assert h.own == {UNIFIED: SCOPE}
    assert h.own_dirs == {UNIFIED: f"/sys/fs/cgroup{SCOPE}"}
    assert h.usable == {"memory", "pids", "cpu", "freezer", "kill"}
    assert all(h.hierarchy_of(c) == UNIFIED for c in ("memory", "pids", "cpu", "kill"))
    assert h.problems == ()


def test_detect_v2_names_a_controller_the_parent_did_not_delegate() -> None:
    files = {**V2_FILES, f"/sys/fs/cgroup{SCOPE}/cgroup.controllers": "pids\n"}
    h = detect(V2_MOUNTINFO, V2_CGROUP, files=files)
    assert h.usable == {"pids", "freezer", "kill"}
    memory = [p for p in h.problems if p.startswith("memory:")]
    assert len(memory) == 1
    assert SCOPE in memory[0] and "cgroup.controllers: pids" in memory[0]
    assert "Delegate=yes" in memory[0]


def test_detect_given_texts_reads_nothing_and_says_what_is_unknown() -> None:
    h = detect(V2_MOUNTINFO, V2_CGROUP)  # no files: the controllers cannot be known
    assert h.version == "v2"
    assert not {"memory", "pids", "cpu", "kill"} & h.usable
    assert any("cannot read" in p and "cgroup.controllers" in p for p in h.problems)


def test_detect_an_old_v2_kernel_has_the_freezer_but_no_cgroup_kill() -> None:
    files = {f"/sys/fs/cgroup{SCOPE}/cgroup.controllers": "cpu memory pids",
             "/proc/sys/kernel/osrelease": "5.10.0-28-amd64"}
    h = detect(V2_MOUNTINFO, V2_CGROUP, files=files)
    assert "kill" not in h.usable and "freezer" in h.usable
    assert h.hierarchy_of("freezer") == UNIFIED
    assert any(p.startswith("kill:") and "freezes" in p for p in h.problems)


def test_detect_v1_only_host_falls_back_on_the_freezer_for_kill() -> None:
    h = detect(V1_MOUNTINFO, V1_CGROUP, files=V1_FILES)
    assert h.version == "v1"
    assert h.own_dirs["cpu"] == "/sys/fs/cgroup/cpu,cpuacct/system.slice/agentlibos.service"
    assert h.own_dirs["cpuacct"] == h.own_dirs["cpu"]
    assert h.own_dirs["freezer"] == "/sys/fs/cgroup/freezer"
    assert h.usable == {"memory", "pids", "cpu", "freezer"}
    assert [p.split(":")[0] for p in h.problems] == ["kill"]


def test_detect_with_no_cgroups_at_all() -> None:
    h = detect(NO_CGROUP_MOUNTINFO, "0::/\n")
    assert h.version is None
    assert h.usable == frozenset()
    assert any("no cgroup filesystem is mounted" in p for p in h.problems)
    assert describe(h).startswith("cgroups: unavailable: no cgroup filesystem")


def test_detect_maps_a_containers_bind_mounted_subtree() -> None:
    # Docker without a cgroup namespace: the mount's root is the container's cgroup.
    mi = ("40 31 0:32 /docker/0abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
          "41 31 0:33 /docker/0abc /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n")
    h = detect(mi, "4:memory:/docker/0abc/agent\n3:freezer:/docker/0abc\n")
    assert h.own_dirs == {"memory": "/sys/fs/cgroup/memory/agent",
                          "freezer": "/sys/fs/cgroup/freezer"}


def test_detect_reports_a_cgroup_outside_every_mount_root() -> None:
    mi = "40 31 0:32 /docker/0abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    h = detect(mi, "4:memory:/elsewhere\n")
    assert "memory" not in h.usable
    assert any("/elsewhere is not visible" in p for p in h.problems)


def test_detect_reports_a_read_only_cgroupfs() -> None:
    mi = "27 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"
    h = detect(mi, V2_CGROUP, files=V2_FILES)
    assert h.usable == frozenset()
    assert any("read-only" in p for p in h.problems)


def test_detect_sees_through_a_supervisor_that_already_sits_in_its_leaf() -> None:
    h = detect(V2_MOUNTINFO, f"0::{SCOPE}/agentlibos-77/supervisor\n", files=V2_FILES)
    assert h.own == {UNIFIED: SCOPE}


def test_detect_unescapes_mount_points() -> None:
    mi = r"40 31 0:32 / /mnt/my\040cgroups rw - cgroup cgroup rw,pids" + "\n"
    assert detect(mi, "8:pids:/\n").own_dirs == {"pids": "/mnt/my cgroups"}


def test_detect_reads_the_real_host_without_crashing() -> None:
    h = detect()
    line = describe(h)
    assert line.startswith("cgroups: ") and "\n" not in line
    assert "\n" not in describe()
    assert CGROUPS_LAYER == "cgroups"


def test_describe_says_where_each_limit_is_enforced() -> None:
    assert describe(detect(HYBRID_MOUNTINFO, HYBRID_CGROUP, files=HYBRID_FILES)) == (
        "cgroups: hybrid (memory v1, pids v1, cpu v1, kill via cgroup.kill)")
    assert describe(detect(V2_MOUNTINFO, V2_CGROUP, files=V2_FILES)) == (
        "cgroups: v2 (memory v2, pids v2, cpu v2, kill via cgroup.kill)")
    v1 = describe(detect(V1_MOUNTINFO, V1_CGROUP, files=V1_FILES))
    assert v1.startswith("cgroups: v1 (memory v1, pids v1, cpu v1, kill via freezer); kill: ")


# ------------------------------------------------------------------- plan_layout()


def test_layout_on_hybrid_joins_the_killable_hierarchy_first() -> None:
    h = detect(HYBRID_MOUNTINFO, HYBRID_CGROUP, files=HYBRID_FILES)
    lay = plan_layout(h, "agentlibos-5")
    assert [x.key for x in lay.hierarchies] == [UNIFIED, "freezer", "memory", "pids", "cpu"]
    assert lay.subtree_control_writes() == ()  # hybrid's cgroup2 has nothing to enable
    mem = lay.hierarchy_for("memory")
    assert mem is not None
    assert lay.agent_dir(mem, "12") == ("/sys/fs/cgroup/memory/process_api/"
                                        "35b0118fe4c004173132516edbb95199/agentlibos-5/agents/12")


def test_layout_on_v2_enables_the_controllers_top_down() -> None:
    lay = plan_layout(detect(V2_MOUNTINFO, V2_CGROUP, files=V2_FILES), "agentlibos-5")
    own = f"/sys/fs/cgroup{SCOPE}"
    assert len(lay.hierarchies) == 1
    assert lay.hierarchies[0].serves == {"memory", "pids", "cpu", "freezer", "kill"}
    assert lay.subtree_control_writes() == (
        (f"{own}/cgroup.subtree_control", "+memory +pids +cpu"),
        (f"{own}/agentlibos-5/cgroup.subtree_control", "+memory +pids +cpu"),
        (f"{own}/agentlibos-5/agents/cgroup.subtree_control", "+memory +pids +cpu"),
    )
    assert lay.supervisor_dir(lay.hierarchies[0]) == f"{own}/agentlibos-5/supervisor"


def test_layout_on_v1_puts_the_freezer_first_and_merges_co_mounted_controllers() -> None:
    lay = plan_layout(detect(V1_MOUNTINFO, V1_CGROUP, files=V1_FILES), "agentlibos-5")
    assert [x.key for x in lay.hierarchies] == ["freezer", "memory", "pids", "cpu"]


@pytest.mark.parametrize("group", ["supervisor-1", "agentlibos-../x", "agentlibos-a/b", "",
                                   "agentlibos-" + "x" * 200])
def test_layout_refuses_a_group_name_that_is_not_ours_or_not_a_name(group: str) -> None:
    with pytest.raises(InvalidArgument, match="group"):
        plan_layout(detect(V2_MOUNTINFO, V2_CGROUP, files=V2_FILES), group)


def test_group_name_is_the_prefix_and_the_pid() -> None:
    assert group_name(42) == "agentlibos-42"
    assert group_name() == f"agentlibos-{os.getpid()}"


# ------------------------------------------------------------------ limit_writes()

V1: dict[str, str] = {"memory": "v1", "pids": "v1", "cpu": "v1"}


def test_one_and_a_half_cores_is_a_150ms_quota_per_100ms_period() -> None:
    lim = CgroupLimits(cpu_max_cores=1.5)
    assert limit_writes(lim, {"cpu": "v1"}) == (
        LimitWrite("cpu", "cpu.cfs_period_us", "100000"),
        LimitWrite("cpu", "cpu.cfs_quota_us", "150000"))
    assert limit_writes(lim, {"cpu": "v2"}) == (LimitWrite("cpu", "cpu.max", "150000 100000"),)


def test_a_fifth_of_a_core_rounds_to_whole_microseconds() -> None:
    assert limit_writes(CgroupLimits(cpu_max_cores=0.2), {"cpu": "v2"})[0].value == "20000 100000"
    assert limit_writes(CgroupLimits(cpu_max_cores=1 / 3), {"cpu": "v2"})[0].value == (
        "33333 100000")
    assert limit_writes(CgroupLimits(cpu_max_cores=0.01), {"cpu": "v2"})[0].value == "1000 100000"


def test_v1_memory_limits_swap_too_and_writes_it_second() -> None:
    assert limit_writes(CgroupLimits(memory_max_bytes=64 * MiB), {"memory": "v1"}) == (
        LimitWrite("memory", "memory.limit_in_bytes", "67108864"),
        LimitWrite("memory", "memory.memsw.limit_in_bytes", "67108864", optional=True))


def test_v2_memory_allows_no_swap_and_kills_the_whole_group_on_oom() -> None:
    assert limit_writes(CgroupLimits(memory_max_bytes=64 * MiB), {"memory": "v2"}) == (
        LimitWrite("memory", "memory.max", "67108864"),
        LimitWrite("memory", "memory.swap.max", "0", optional=True),
        LimitWrite("memory", "memory.oom.group", "1", optional=True))


def test_pids_limit_is_the_same_file_in_both_versions() -> None:
    for v in ("v1", "v2"):
        assert limit_writes(CgroupLimits(pids_max=8), {"pids": v}) == (
            LimitWrite("pids", "pids.max", "8"),)


def test_no_limits_means_no_writes() -> None:
    assert limit_writes(CgroupLimits(), {}) == ()
    assert limit_writes(CgroupLimits(None, None, None), {"memory": "v1"}) == ()


def test_a_limit_without_its_controller_is_refused_not_dropped() -> None:
    with pytest.raises(SandboxError, match="cgroups: a cpu limit was asked for"):
        limit_writes(CgroupLimits(cpu_max_cores=1.0), {"memory": "v1", "pids": "v1"})


@pytest.mark.parametrize("kw", [{"memory_max_bytes": 0}, {"memory_max_bytes": -1},
                                {"memory_max_bytes": True}, {"pids_max": 0},
                                {"pids_max": 1.5}, {"cpu_max_cores": 0.0},
                                {"cpu_max_cores": 0.001}, {"cpu_max_cores": float("nan")},
                                {"cpu_max_cores": float("inf")}, {"cpu_max_cores": "1"}])
def test_nonsense_limits_are_refused_with_their_name(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(kw))):
        CgroupLimits(**kw)  # type: ignore[arg-type]


def test_join_names_the_file_it_could_not_join() -> None:
    with pytest.raises(SandboxError, match=r"cgroups: cannot join /nonexistent/x/cgroup\.procs"):
        join(["/nonexistent/x/cgroup.procs"])


# ------------------------------------------------------- a fake that keeps v2's rules

_DOMAIN = frozenset({"memory", "pids", "cpu", "io"})
_CTL_FILES = {
    "memory": ("memory.max", "memory.swap.max", "memory.oom.group", "memory.events",
               "memory.current", "memory.peak"),
    "pids": ("pids.max", "pids.events", "pids.current", "pids.peak"),
    "cpu": ("cpu.max", "cpu.weight"),
    "io": ("io.max",),
}


@dataclass
class _Node:
    procs: set[int] = field(default_factory=set)
    subtree: set[str] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)
    born: float = field(default_factory=time.monotonic)


class FakeCgroup2:
    """A cgroup2 hierarchy in memory, keeping the kernel's rules that setup relies on.

    No internal processes (a non-root cgroup with controllers in subtree_control takes
    no process, and one with processes cannot enable any); a controller can be enabled
    only if the parent offers it, and disabled only if no child still enables it; its
    files exist only where the parent enabled it; rmdir refuses a busy cgroup;
    cgroup.kill empties a subtree. Implements agentlibos.sandbox.cgroups.CgroupFs.
    """

    def __init__(self, mount: str = "/sys/fs/cgroup") -> None:
        self.mount = mount
        self.nodes: dict[str, _Node] = {mount: _Node(subtree={"cpu", "io", "memory", "pids"})}
        self.writes: list[tuple[str, str]] = []
        self.killed: list[int] = []
        self.fail: dict[str, int] = {}  # path -> errno to fail writes/mkdirs with
        self.read_only: set[str] = set()  # cgroups this process may not write

    # test set-up
    def add(self, path: str, procs: tuple[int, ...] = (), subtree: tuple[str, ...] = ()) -> None:
        parts = path[len(self.mount):].strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.nodes.setdefault(self.mount + "/" + "/".join(parts[:i]), _Node())
        self.nodes[path].procs |= set(procs)
        self.nodes[path].subtree |= set(subtree)

    def where(self, pid: int) -> str | None:
        return next((p for p, n in self.nodes.items() if pid in n.procs), None)

    def under(self, path: str) -> list[str]:
        return sorted(p for p in self.nodes if p.startswith(path + "/"))

    # rules
    def _err(self, code: int, path: str) -> OSError:
        return OSError(code, os.strerror(code), path)

    def _controllers(self, d: str) -> set[str]:
        # The root offers every controller; any other cgroup what its parent enabled.
        if d == self.mount:
            return {"cpu", "io", "memory", "pids"}
        return set(self.nodes[os.path.dirname(d)].subtree)

    def _files(self, d: str) -> set[str]:
        out = {"cgroup.procs", "cgroup.controllers", "cgroup.subtree_control", "cgroup.events",
               "cpu.stat"}
        if d != self.mount:
            out |= {"cgroup.kill", "cgroup.freeze", "cgroup.type"}
            for c in self._controllers(d):
                out |= set(_CTL_FILES.get(c, ()))
        return out

    def _populated(self, d: str) -> bool:
        return any(self.nodes[p].procs for p in [d, *self.under(d)])

    def _file(self, path: str) -> tuple[str, _Node, str]:
        d, f = os.path.split(path)
        if d not in self.nodes or f not in self._files(d):
            raise self._err(errno.ENOENT, path)
        return d, self.nodes[d], f

    # CgroupFs
    def read(self, path: str) -> str:
        d, n, f = self._file(path)
        if f == "cgroup.procs":
            return "".join(f"{p}\n" for p in sorted(n.procs))
        if f == "cgroup.controllers":
            return " ".join(sorted(self._controllers(d))) + "\n"
        if f == "cgroup.subtree_control":
            return " ".join(sorted(n.subtree)) + "\n"
        if f == "cgroup.events":
            return f"populated {int(self._populated(d))}\nfrozen 0\n"
        return n.values.get(f, "max\n")

    def write(self, path: str, data: str) -> None:
        self.writes.append((path, data))
        if path in self.fail:
            raise self._err(self.fail[path], path)
        d, n, f = self._file(path)
        if f == "cgroup.procs":
            if d != self.mount and n.subtree & _DOMAIN:
                raise self._err(errno.EBUSY, path)
            pid = int(data)
            for other in self.nodes.values():
                other.procs.discard(pid)
            n.procs.add(pid)
        elif f == "cgroup.subtree_control":
            on = {t[1:] for t in data.split() if t.startswith("+")}
            off = {t[1:] for t in data.split() if t.startswith("-")}
            if on - self._controllers(d):
                raise self._err(errno.ENOENT, path)
            if d != self.mount and (on - n.subtree) and n.procs:
                raise self._err(errno.EBUSY, path)
            children = [self.nodes[c] for c in self.under(d) if os.path.dirname(c) == d]
            if any(off & c.subtree for c in children):
                raise self._err(errno.EBUSY, path)
            n.subtree = (n.subtree | on) - off
        elif f == "cgroup.kill":
            for p in [d, *self.under(d)]:
                self.killed += sorted(self.nodes[p].procs)
                self.nodes[p].procs.clear()
        else:
            n.values[f] = data

    def mkdir(self, path: str) -> None:
        if path in self.fail:
            raise self._err(self.fail[path], path)
        if os.path.dirname(path) not in self.nodes:
            raise self._err(errno.ENOENT, path)
        if path in self.nodes:
            raise self._err(errno.EEXIST, path)
        self.nodes[path] = _Node()

    def rmdir(self, path: str) -> None:
        if path not in self.nodes:
            raise self._err(errno.ENOENT, path)
        if self.under(path) or self.nodes[path].procs:
            raise self._err(errno.EBUSY, path)
        del self.nodes[path]

    def exists(self, path: str) -> bool:
        if path in self.nodes:
            return True
        d, f = os.path.split(path)
        return d in self.nodes and f in self._files(d)

    def subdirs(self, path: str) -> list[str]:
        if path not in self.nodes:
            raise self._err(errno.ENOENT, path)
        return [os.path.basename(c) for c in self.under(path) if os.path.dirname(c) == path]

    def age_s(self, path: str) -> float:
        return time.monotonic() - self.nodes[path].born

    def kill_pid(self, pid: int) -> None:
        self.killed.append(pid)
        for n in self.nodes.values():
            n.procs.discard(pid)

    def writable(self, path: str) -> bool:
        return path in self.nodes and path not in self.read_only


SERVICE = "/system.slice/agentlibos.service"
OWN = f"/sys/fs/cgroup{SERVICE}"


def _v2_host(controllers: str = "cpu memory pids") -> CgroupHost:
    return detect(V2_MOUNTINFO, f"0::{SERVICE}\n", files={
        f"{OWN}/cgroup.controllers": controllers, f"{OWN}/cgroup.kill": "",
        "/proc/sys/kernel/osrelease": "6.8.0"})


def _v2_fake(*own_procs: int) -> FakeCgroup2:
    fake = FakeCgroup2()
    fake.add("/sys/fs/cgroup/system.slice", subtree=("cpu", "memory", "pids"))
    fake.add(OWN, procs=own_procs or (os.getpid(),))
    return fake


def test_v2_setup_moves_the_supervisor_into_a_leaf_then_enables_controllers() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    assert fake.where(os.getpid()) == f"{OWN}/agentlibos-7/supervisor"
    for d in (OWN, f"{OWN}/agentlibos-7", f"{OWN}/agentlibos-7/agents"):
        assert fake.nodes[d].subtree == {"memory", "pids", "cpu"}
    moved = fake.writes.index((f"{OWN}/agentlibos-7/supervisor/cgroup.procs", str(os.getpid())))
    enabled = fake.writes.index((f"{OWN}/cgroup.subtree_control", "+memory +pids +cpu"))
    assert moved < enabled  # the other order is EBUSY: no internal processes


def test_v2_create_writes_v2_files_and_one_procs_file_in_a_leaf() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    pc = m.create("9", CgroupLimits(64 * MiB, 8, 1.5))
    agent = f"{OWN}/agentlibos-7/agents/9"
    assert pc.procs_files == (f"{agent}/self/cgroup.procs",)
    # Its tree holds no process itself, so its children's cgroups can have limits too.
    assert fake.nodes[agent].subtree == {"cpu", "memory", "pids"}
    assert pc.kill_via == "cgroup.kill"
    assert fake.nodes[agent].values == {"memory.max": "67108864", "memory.swap.max": "0",
                                        "memory.oom.group": "1", "pids.max": "8",
                                        "cpu.max": "150000 100000"}
    fake.write(pc.procs_files[0], "4242")  # what join() does in the child
    assert pc.populated()
    fake.nodes[agent].values["memory.events"] = "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n"
    fake.nodes[agent].values["pids.events"] = "max 3\n"
    assert pc.oom_killed() and pc.pids_limit_hit()
    assert pc.stats()["memory_oom_kills"] == 1 and pc.stats()["pids_max_hits"] == 3
    pc.kill()
    pc.kill()  # idempotent
    assert fake.killed == [4242] and not pc.populated()
    pc.remove()
    assert agent not in fake.nodes
    pc.kill()  # even once removed


def test_v2_teardown_restores_the_supervisors_cgroup_and_leaves_nothing() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    m.create("9", CgroupLimits(pids_max=4))  # empty: teardown may clear it
    m.teardown()
    assert fake.where(os.getpid()) == OWN
    assert fake.nodes[OWN].subtree == set()
    assert fake.under(OWN) == []


def test_v2_teardown_says_what_it_left_when_a_sibling_keeps_the_controllers() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    fake.add(f"{OWN}/agentlibos-8", subtree=("memory",))  # another supervisor's
    with pytest.raises(SandboxError) as ei:
        m.teardown()
    msg = str(ei.value)
    assert f"cannot move the supervisor back to {OWN}" in msg
    assert f"{OWN}/agentlibos-7/supervisor" in msg and "cleanup_stale()" in msg
    assert fake.under(f"{OWN}/agentlibos-7") == [f"{OWN}/agentlibos-7/supervisor"]


def test_v2_in_the_root_cgroup_shares_it_with_other_processes() -> None:
    # A container with its own cgroup namespace: the root takes processes and
    # controllers at once, so nobody else has to leave.
    host = detect(V2_MOUNTINFO, "0::/\n", files={"/sys/fs/cgroup/cgroup.controllers":
                                                 "cpu io memory pids",
                                                 "/proc/sys/kernel/osrelease": "6.1.0"})
    fake = FakeCgroup2()
    fake.add("/sys/fs/cgroup/init.scope", procs=(1,))
    fake.nodes["/sys/fs/cgroup"].procs |= {os.getpid(), 2}
    m = CgroupManager(host, "agentlibos-7", fs=fake)
    m.setup()
    m.create("1", CgroupLimits(MiB, 2, 0.5))
    m.teardown()
    assert fake.where(os.getpid()) == "/sys/fs/cgroup"
    assert fake.under("/sys/fs/cgroup") == ["/sys/fs/cgroup/init.scope"]


def test_v2_setup_in_a_shared_session_scope_fails_closed_and_undoes_itself() -> None:
    fake = _v2_fake(os.getpid(), 999)  # the login shell shares the scope
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    with pytest.raises(SandboxError) as ei:
        m.setup()
    msg = str(ei.value)
    assert msg.startswith(f"cgroups: cannot enable +memory +pids +cpu in {OWN}/cgroup.subtree")
    assert "other processes [999]" in msg and "Delegate=yes" in msg
    assert fake.where(os.getpid()) == OWN
    assert fake.under(OWN) == [] and fake.nodes[OWN].subtree == set()


def test_v2_setup_without_permission_says_not_root_and_no_delegation() -> None:
    fake = _v2_fake()
    fake.fail[f"{OWN}/agentlibos-7"] = errno.EACCES
    with pytest.raises(SandboxError, match=r"cannot create .*agentlibos-7 .*not root and no "
                                           r"delegation"):
        CgroupManager(_v2_host(), "agentlibos-7", fs=fake).setup()
    assert fake.under(OWN) == []


def test_v2_create_refuses_a_limit_the_host_cannot_enforce() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host("memory pids"), "agentlibos-7", fs=fake)
    m.setup()
    assert fake.nodes[OWN].subtree == {"memory", "pids"}
    with pytest.raises(SandboxError, match=r"agent 3 asks for a cpu limit, but cpu: .*Delegate"):
        m.create("3", CgroupLimits(cpu_max_cores=1.0))
    assert fake.under(f"{OWN}/agentlibos-7/agents") == []
    m.create("3", CgroupLimits(memory_max_bytes=MiB))


def test_v2_create_rolls_back_when_the_kernel_rejects_a_limit() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    fake.fail[f"{OWN}/agentlibos-7/agents/3/cpu.max"] = errno.EINVAL
    with pytest.raises(SandboxError, match=r"cpu limit of agent 3: writing '400000 100000' to "
                                           r".*cpu.max: the kernel rejected the value"):
        m.create("3", CgroupLimits(memory_max_bytes=MiB, cpu_max_cores=4))
    assert fake.under(f"{OWN}/agentlibos-7/agents") == []


def test_v2_cleanup_stale_removes_dead_groups_only() -> None:
    fake = _v2_fake()
    fake.add(f"{OWN}/agentlibos-1/supervisor")  # its supervisor died
    fake.add(f"{OWN}/agentlibos-1/agents/4", procs=(5555,))
    fake.add(f"{OWN}/agentlibos-2/supervisor", procs=(6666,))  # alive
    fake.add(f"{OWN}/agentlibos-2/agents/4", procs=(7777,))
    fake.add(f"{OWN}/unrelated", procs=(8888,))
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    assert m.cleanup_stale() == []  # too young to tell from one being set up
    assert m.cleanup_stale(min_age_s=0) == [f"{OWN}/agentlibos-1"]
    assert fake.killed == [5555]
    assert f"{OWN}/agentlibos-2/agents/4" in fake.nodes and f"{OWN}/unrelated" in fake.nodes


def test_setup_refuses_a_group_name_a_live_supervisor_holds() -> None:
    fake = _v2_fake()
    fake.add(f"{OWN}/agentlibos-7/supervisor", procs=(6666,))
    with pytest.raises(SandboxError, match=r"belongs to a live supervisor \(pids \[6666\]\)"):
        CgroupManager(_v2_host(), "agentlibos-7", fs=fake).setup()


# ------------------------------------------------------------- real children, here

_counter = itertools.count()
_TEST_PREFIX = f"{GROUP_PREFIX}test{os.getpid()}-"
PR_SET_CHILD_SUBREAPER = 36


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _poll(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Reaper:
    """Makes this process the subreaper of everything the tests fork, and reaps it all.

    Escapees (setsid + double fork) are reparented here rather than to pid 1, which on
    this host reaps lazily: a zombie would still look like a process for a while.
    """

    def __init__(self) -> None:
        self.status: dict[int, int] = {}
        self.forked: list[int] = []

    def fork(self, body: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = body()
            except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
                traceback.print_exc()
            finally:
                os._exit(code)
        self.forked.append(pid)
        return pid

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.status[pid] = status

    def until(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``cond``, reaping meanwhile (killed orphans come here to die)."""

        def reaped_and() -> bool:
            self.reap()
            return cond()

        return _poll(reaped_and, timeout_s)

    def wait(self, pid: int, timeout_s: float = 30.0) -> int:
        assert self.until(lambda: pid in self.status, timeout_s), f"{pid} lives on"
        return self.status[pid]


def _prctl_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    _prctl_subreaper(True)
    r = Reaper()
    try:
        yield r
    finally:
        for pid in r.forked:
            with contextlib.suppress(ProcessLookupError):
                if pid not in r.status:
                    os.kill(pid, signal.SIGKILL)
        left = r.until(lambda: not psutil.Process().children(), 10.0)
        _prctl_subreaper(False)
        assert left, f"children left unreaped: {psutil.Process().children()}"


@pytest.fixture(scope="module")
def host() -> CgroupHost:
    h = detect()
    if h.version is None or not h.own_dirs:
        pytest.skip("cgroups: none usable here: " + "; ".join(h.problems))
    for d in h.own_dirs.values():
        probe = f"{d}/{_TEST_PREFIX}probe"
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                pytest.skip(f"cgroups not writable here ({probe}: {e.strerror}): not root and "
                            f"no delegation")
            raise
    return h


def _own_cgroups() -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        return f.read()


def _force_teardown(m: CgroupManager) -> None:
    """Leave nothing behind even when a test failed half way."""
    with contextlib.suppress(SandboxError):
        m.teardown()
    for h in m.layout.hierarchies:
        with contextlib.suppress(OSError):
            m.fs.write(f"{h.own_dir}/cgroup.procs", str(os.getpid()))
    m._remove_group(m.group, 2.0)


@pytest.fixture
def managers(host: CgroupHost) -> Iterator[Callable[..., CgroupManager]]:
    made: list[CgroupManager] = []

    def make(h: CgroupHost | None = None, group: str | None = None) -> CgroupManager:
        m = CgroupManager(h or host, group or f"{_TEST_PREFIX}{next(_counter)}")
        made.append(m)
        m.setup()
        return m

    yield make
    for m in reversed(made):
        _force_teardown(m)


@pytest.fixture
def mgr(managers: Callable[..., CgroupManager]) -> CgroupManager:
    return managers()


@pytest.fixture(scope="module", autouse=True)
def no_leaked_cgroups() -> Iterator[None]:
    before = _own_cgroups()
    yield
    h = detect()
    leaked = [f"{d}/{n}" for d in h.own_dirs.values() if os.path.isdir(d)
              for n in os.listdir(d) if n.startswith(_TEST_PREFIX)]
    assert leaked == [], "cgroup directories leaked"
    assert _own_cgroups() == before, "the test process did not get back to its own cgroups"


def _read_lines(fd: int, n: int, reaper: Reaper, timeout_s: float = 20.0) -> list[str]:
    buf = b""
    deadline = time.monotonic() + timeout_s
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        assert left > 0, f"expected {n} lines from the child, got {buf!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.05))
        reaper.reap()
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"the child closed the pipe after {buf!r}"
            buf += chunk
    return buf.decode().splitlines()


def _reporting_child(reaper: Reaper, pc: ProcessCgroup,
                     body: Callable[[Callable[[str], None]], int]) -> tuple[int, int]:
    """Fork a child that joins ``pc`` then runs ``body(say)``; return (pid, read end)."""
    r, w = os.pipe()

    def say(line: str) -> None:
        os.write(w, f"{line}\n".encode())

    def child() -> int:
        join(pc.procs_files)
        return body(say)

    pid = reaper.fork(child)
    os.close(w)
    return pid, r


def _idle(say: Callable[[str], None]) -> int:
    say("up")
    signal.pause()
    return 0


@pytest.mark.privileged
def test_a_child_sees_itself_in_every_hierarchy(mgr: CgroupManager, reaper: Reaper) -> None:
    pc = mgr.create("inside", CgroupLimits(64 * MiB, 16, 0.5))

    def body(say: Callable[[str], None]) -> int:
        for line in _own_cgroups().splitlines():
            say(line)
        say("end")
        return 0

    pid, r = _reporting_child(reaper, pc, body)
    lines = _read_lines(r, len(_own_cgroups().splitlines()) + 1, reaper)
    os.close(r)
    assert os.WEXITSTATUS(reaper.wait(pid)) == 0
    seen = {tuple(ln.split(":", 2)[1].split(",")): ln.split(":", 2)[2] for ln in lines[:-1]}
    for h in mgr.layout.hierarchies:
        key = ("",) if h.key == UNIFIED else next(k for k in seen if h.key in k)
        assert seen[key].endswith(f"/{mgr.group}/agents/inside/self"), (h.key, seen[key])
    with open(f"{pc.memory_dir}/{'memory.max' if pc.memory_v2 else 'memory.limit_in_bytes'}",
              encoding="ascii") as f:
        assert int(f.read()) == 64 * MiB
    pc.remove()


@pytest.mark.privileged
def test_a_memory_hog_is_oom_killed(mgr: CgroupManager, reaper: Reaper) -> None:
    pc = mgr.create("hog", CgroupLimits(memory_max_bytes=64 * MiB))
    assert not pc.oom_killed()

    def body(say: Callable[[str], None]) -> int:
        hog = [b"\x01" * (16 * MiB) for _ in range(64)]  # 1 GiB, every page touched
        del hog
        return 0

    pid, r = _reporting_child(reaper, pc, body)
    os.close(r)
    status = reaper.wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert pc.oom_killed()
    st = pc.stats()
    assert st["memory_oom_kills"] >= 1
    assert st["memory_peak_bytes"] <= 64 * MiB
    assert _poll(lambda: not pc.populated(), 5.0)
    pc.remove()


@pytest.mark.privileged
def test_a_fork_bomb_is_bounded_by_pids_max(mgr: CgroupManager, reaper: Reaper) -> None:
    pc = mgr.create("bomb", CgroupLimits(pids_max=8))

    def body(say: Callable[[str], None]) -> int:
        made = eagain = 0
        for _ in range(64):
            try:
                child = os.fork()
            except BlockingIOError as e:
                eagain += e.errno == errno.EAGAIN
                continue
            if child == 0:
                signal.pause()
                os._exit(0)
            made += 1
        say(f"{made} {eagain}")
        signal.pause()
        return 0

    pid, r = _reporting_child(reaper, pc, body)
    made, eagain = map(int, _read_lines(r, 1, reaper)[0].split())
    os.close(r)
    assert made == 7 and eagain == 64 - 7  # 8 = the child and 7 grandchildren
    assert pc.pids_limit_hit()
    st = pc.stats()
    assert st["pids_current"] == 8 and st["pids_peak"] <= 8 and st["pids_max_hits"] >= 57
    pc.kill()
    assert reaper.until(lambda: not pc.populated(), 5.0)
    assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
    pc.remove()


@pytest.mark.privileged
def test_a_spinner_is_throttled_to_its_cpu_quota(mgr: CgroupManager, reaper: Reaper) -> None:
    pc = mgr.create("spin", CgroupLimits(cpu_max_cores=0.2))

    def body(say: Callable[[str], None]) -> int:
        say("spinning")
        while True:
            pass

    pid, r = _reporting_child(reaper, pc, body)
    _read_lines(r, 1, reaper)
    os.close(r)
    u0, t0 = pc.stats()["cpu_usage_usec"], time.monotonic()
    # Wait for 200 ms of CPU: unthrottled that takes 0.2 s; at 0.2 cores, about 1 s.
    # The kernel guarantees the lower bound on wall time, so this cannot flake fast.
    assert _poll(lambda: pc.stats()["cpu_usage_usec"] - u0 >= 200_000, 30.0)
    used_s, wall_s = (pc.stats()["cpu_usage_usec"] - u0) / 1e6, time.monotonic() - t0
    assert wall_s >= 0.7, f"{used_s:.3f} s of CPU in {wall_s:.3f} s: not throttled"
    assert used_s / wall_s <= 0.3, f"{used_s / wall_s:.2f} cores, quota 0.2"
    st = pc.stats()
    assert st["cpu_nr_throttled"] > 0 and st["cpu_throttled_usec"] > 0
    pc.kill()
    assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
    assert _poll(lambda: not pc.populated(), 5.0)
    pc.remove()


class RecordingFs:
    """The real cgroupfs, with a log of what kill() did, in order."""

    def __init__(self, inner: CgroupFs) -> None:
        self.inner = inner
        self.log: list[tuple[str, str]] = []

    def read(self, path: str) -> str:
        text = self.inner.read(path)
        self.log.append(("read", f"{os.path.basename(path)} {' '.join(text.split())}"))
        return text

    def write(self, path: str, data: str) -> None:
        self.log.append(("write", f"{os.path.basename(path)} {data}"))
        self.inner.write(path, data)

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def rmdir(self, path: str) -> None:
        self.inner.rmdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def subdirs(self, path: str) -> list[str]:
        return self.inner.subdirs(path)

    def age_s(self, path: str) -> float:
        return self.inner.age_s(path)

    def kill_pid(self, pid: int) -> None:
        self.log.append(("kill", str(pid)))
        self.inner.kill_pid(pid)

    def writable(self, path: str) -> bool:
        return self.inner.writable(path)


def _assert_froze_before_killing(log: list[tuple[str, str]], via: str) -> None:
    """Signalling by pid is safe only while the group is frozen: check that order."""
    freeze, thaw, frozen = (("freezer.state FROZEN", "freezer.state THAWED", "freezer.state FROZEN")
                            if via == "freezer" else
                            ("cgroup.freeze 1", "cgroup.freeze 0", "frozen 1"))
    kills = [i for i, (op, _) in enumerate(log) if op == "kill"]
    assert kills, log
    froze = log.index(("write", freeze))
    saw_frozen = next(i for i, (op, what) in enumerate(log) if op == "read" and frozen in what)
    thawed = log.index(("write", thaw))
    assert froze < saw_frozen < kills[0] and kills[-1] < thawed, log


def _kill_host(host: CgroupHost, via: str) -> CgroupHost:
    """The host as it would look with only this way to kill (v1-only, old v2 kernels)."""
    if via == "cgroup.kill":
        if "kill" not in host.usable:
            pytest.skip("no cgroup.kill here")
        return host
    if via == "freezer":
        if "freezer" not in host.own_dirs:
            pytest.skip("no v1 freezer here")
        return dataclasses.replace(host, usable=host.usable - {"kill"})
    if UNIFIED not in host.own_dirs:
        pytest.skip("no cgroup2 here")
    drop = ("freezer",)
    return dataclasses.replace(
        host, usable=host.usable - {"kill"},
        mounts={k: v for k, v in host.mounts.items() if k not in drop},
        own={k: v for k, v in host.own.items() if k not in drop},
        own_dirs={k: v for k, v in host.own_dirs.items() if k not in drop})


@pytest.mark.privileged
@pytest.mark.parametrize("via", ["cgroup.kill", "freezer", "cgroup.freeze"])
def test_kill_ends_every_descendant_including_escapees(
        via: str, host: CgroupHost, managers: Callable[..., CgroupManager],
        reaper: Reaper) -> None:
    m = managers(_kill_host(host, via))
    pc = m.create("tree", CgroupLimits(pids_max=64))
    assert pc.kill_via == via

    def body(say: Callable[[str], None]) -> int:
        def stay() -> None:
            say(f"stay {os.getpid()}")
            signal.pause()
            os._exit(0)

        for _ in range(3):  # plain children
            if os.fork() == 0:
                stay()
        for _ in range(2):  # new session, double fork: out of the process group and tree
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    stay()
                os._exit(0)
        if os.fork() == 0:  # a hopper: a new pid every few microseconds
            os.setsid()
            say(f"hop {os.getpid()}")
            while True:
                with contextlib.suppress(BlockingIOError):
                    if os.fork() != 0:
                        os._exit(0)
        stay()
        return 0

    pid, r = _reporting_child(reaper, pc, body)
    lines = [ln.split() for ln in _read_lines(r, 7, reaper)]
    os.close(r)
    pids = [int(p) for role, p in lines if role == "stay"]  # the hopper's pid moves on
    assert len(pids) == 6 and pid in pids
    assert [p for p in pids if not _alive(p)] == []
    assert pc.populated()
    pc.fs = rec = RecordingFs(pc.fs)
    pc.kill()
    if via != "cgroup.kill":
        _assert_froze_before_killing(rec.log, via)
    assert reaper.until(lambda: not pc.populated(), 10.0), pc.stats()
    assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
    assert reaper.until(lambda: not any(_alive(p) for p in pids), 10.0)
    assert [p for p in pids if _alive(p)] == []
    assert all(not _procs_of(d) for d in pc.dirs)
    pc.kill()  # idempotent
    pc.remove()
    pc.kill()  # and harmless once removed


def _procs_of(d: str) -> list[int]:
    with open(f"{d}/cgroup.procs", encoding="ascii") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.privileged
def test_remove_and_teardown_leave_no_directory(mgr: CgroupManager, reaper: Reaper) -> None:
    before = _own_cgroups()
    pc = mgr.create("rm", CgroupLimits(16 * MiB, 4, 0.5))
    pid, r = _reporting_child(reaper, pc, _idle)
    _read_lines(r, 1, reaper)
    os.close(r)
    with pytest.raises(SandboxError, match=rf"cannot remove .*/rm .*processes still in it: "
                                           rf"\[{pid}\] \(kill\(\) first\)"):
        pc.remove(timeout_s=0.05)
    with pytest.raises(SandboxError, match=rf"teardown while agents still run \(pids \[{pid}\]"):
        mgr.teardown()
    pc.kill()
    reaper.wait(pid)
    pc.remove()
    assert [d for d in pc.dirs if os.path.exists(d)] == []
    mgr.teardown()
    groups = [mgr.layout.group_dir(h) for h in mgr.layout.hierarchies]
    assert [d for d in groups if os.path.exists(d)] == []
    assert f"/{mgr.group}/supervisor" in before  # setup had moved us into our leaf...
    assert mgr.group not in _own_cgroups()  # ...and teardown moved us back


@pytest.mark.privileged
def test_cleanup_stale_kills_and_removes_a_dead_supervisors_group(
        managers: Callable[..., CgroupManager], reaper: Reaper) -> None:
    dead = managers()
    pc = dead.create("orphan", CgroupLimits(pids_max=8))
    pid, r = _reporting_child(reaper, pc, _idle)
    _read_lines(r, 1, reaper)
    os.close(r)
    live = managers()  # moves this process out of dead's leaf: dead's supervisor is "gone"
    assert dead.group not in _own_cgroups()
    mine = [dead.layout.group_dir(h) for h in dead.layout.hierarchies]
    assert not set(mine) & set(live.cleanup_stale())  # too young by default: left alone
    assert all(os.path.exists(d) for d in mine)
    removed = live.cleanup_stale(min_age_s=0)
    assert set(mine) <= set(removed)
    assert [d for d in mine if os.path.exists(d)] == []
    assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
    assert all(os.path.exists(live.layout.group_dir(h)) for h in live.layout.hierarchies)


@pytest.mark.privileged
def test_cleanup_stale_spares_a_group_whose_supervisor_lives(
        managers: Callable[..., CgroupManager], reaper: Reaper) -> None:
    other = managers()
    live = managers()
    # Stand in for `other`'s supervisor: a process in its leaf.
    sup = [f"{other.layout.supervisor_dir(h)}/cgroup.procs" for h in other.layout.hierarchies]
    r, w = os.pipe()

    def stand_in() -> int:
        join(sup)
        os.write(w, b"up\n")
        signal.pause()
        return 0

    pid = reaper.fork(stand_in)
    os.close(w)
    _read_lines(r, 1, reaper)
    os.close(r)
    assert other.layout.group_dir(other.layout.hierarchies[0]) not in live.cleanup_stale(
        min_age_s=0)
    with pytest.raises(SandboxError, match="belongs to a live supervisor"):
        CgroupManager(live.host, other.group).setup()
    os.kill(pid, signal.SIGKILL)
    reaper.wait(pid)
    assert other.layout.group_dir(other.layout.hierarchies[0]) in live.cleanup_stale(
        min_age_s=0)


@pytest.mark.privileged
def test_setup_reclaims_its_name_from_a_dead_predecessor(
        managers: Callable[..., CgroupManager], reaper: Reaper) -> None:
    first = managers()
    pc = first.create("left", CgroupLimits(pids_max=8))
    pid, r = _reporting_child(reaper, pc, _idle)
    _read_lines(r, 1, reaper)
    os.close(r)
    managers()  # this process leaves first's leaf
    again = managers(group=first.group)  # e.g. a supervisor restarted with the same pid
    assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
    assert not os.path.exists(pc.dirs[0])
    assert again.create("left", CgroupLimits(pids_max=8)).populated() is False


@pytest.mark.privileged
def test_cleanup_stale_removes_a_leftover_that_exists_in_one_hierarchy_only(
        mgr: CgroupManager) -> None:
    # A supervisor that died half way through setup, or whose other parts were cleaned by
    # a supervisor that could see only those: no process, no way to kill, just dirs.
    h = mgr.layout.hierarchies[-1]
    g = f"{h.own_dir}/{_TEST_PREFIX}partial"
    os.makedirs(f"{g}/agents/x")
    assert g in mgr.cleanup_stale(min_age_s=0)
    assert not os.path.exists(g)


@pytest.mark.privileged
def test_cleanup_stale_follows_a_dead_groups_agents_to_its_other_base(
        host: CgroupHost, managers: Callable[..., CgroupManager], reaper: Reaper) -> None:
    # On this kind of host the memory cgroup differs per session while the other
    # hierarchies are shared: a dead supervisor's group is visible to us everywhere but
    # in memory. Its agents' /proc/<pid>/cgroup says where that part is.
    if "memory" not in host.own_dirs:
        pytest.skip("no v1 memory hierarchy here")
    name = f"alos-test{os.getpid()}-elsewhere"
    base = f"{host.own_dirs['memory']}/{name}"
    os.mkdir(base)
    try:
        elsewhere = dataclasses.replace(
            host, own={**host.own, "memory": f"{host.own['memory'].rstrip('/')}/{name}"},
            own_dirs={**host.own_dirs, "memory": base})
        dead = managers(elsewhere)
        pc = dead.create("a", CgroupLimits(pids_max=8))
        pid, r = _reporting_child(reaper, pc, _idle)
        _read_lines(r, 1, reaper)
        os.close(r)
        live = managers()
        removed = live.cleanup_stale(min_age_s=0)
        assert f"{base}/{dead.group}" in removed
        assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
        assert [d for d in pc.dirs if os.path.exists(d)] == []
    finally:
        # Should be empty; if the test failed, whatever it left (the reaper kills its
        # processes) goes too, so no directory outlives the test.
        assert reaper.until(lambda: _rmdir_tree(base), 5.0), f"{base} left behind"


def _rmdir_tree(root: str) -> bool:
    """rmdir ``root`` and every cgroup below it, deepest first; True once all gone."""
    dirs = [d for d, _, _ in os.walk(root)]
    for d in sorted(dirs, key=lambda x: x.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(d)
    return not os.path.exists(root)
