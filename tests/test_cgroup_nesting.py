"""A tree shares its root's budget: children's cgroups nest in their parent's, for real.

Privileged: real cgroups on this host, real children forking and allocating. Also the
real cgroup2 path of a pure-v2 host as far as this one allows: a supervisor in a
crowded cgroup makes its group under the root cgroup, enables a controller there
(this host's cgroup2 offers only hugetlb), moves in, and cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentlibos.config import Paths
from agentlibos.errors import SandboxError
from agentlibos.kernel.image import Limits
from agentlibos.sandbox.cgroups import (
    UNIFIED,
    CgroupLimits,
    CgroupManager,
    Placement,
    ProcessCgroup,
    describe_host,
    detect,
    join,
)
from agentlibos.sandbox.profile import ParentBudget, SandboxConfig, effective_limits
from agentlibos.supervisor.sandboxing import SandboxManager
from tests import test_cgroups as _tc
from tests.test_cgroups import _TEST_PREFIX, MiB, Reaper, _idle, _read_lines, _reporting_child

# test_cgroups' fixtures, found by pytest by these names: a manager on this host's real
# cgroups, a subreaper that reaps every fork, and the check that nothing leaked.
host, managers, mgr = _tc.host, _tc.managers, _tc.mgr
reaper, no_leaked_cgroups = _tc.reaper, _tc.no_leaked_cgroups

pytestmark = pytest.mark.privileged


def _bomb_on_go(go: int) -> Callable[[Callable[[str], None]], int]:
    def body(say: Callable[[str], None]) -> int:
        say("up")
        os.read(go, 1)  # every member of the tree is in before anyone forks
        made = 0
        for _ in range(32):
            try:
                child = os.fork()
            except BlockingIOError:
                continue
            if child == 0:
                signal.pause()
                os._exit(0)
            made += 1
        say(str(made))
        signal.pause()
        return 0

    return body


def test_a_parent_limited_to_8_pids_and_its_children_together_never_exceed_8(
    mgr: CgroupManager, reaper: Reaper
) -> None:
    parent = mgr.create("1", CgroupLimits(pids_max=8))
    # Each child asks for 8 as well (what effective_limits clamps it to): alone each
    # could have 8, together they share the parent's.
    kids = [mgr.create(str(n), CgroupLimits(pids_max=8), parent=parent) for n in (2, 3)]
    assert all(k.dirs[i].startswith(parent.dirs[i] + "/") for k in kids
               for i in range(len(k.dirs)))
    go_r, go_w = os.pipe()
    started = []
    for pc in (parent, *kids):
        pid, r = _reporting_child(reaper, pc, _bomb_on_go(go_r))
        assert _read_lines(r, 1, reaper) == ["up"]
        started.append((pid, r))
    os.write(go_w, b"xyz")
    made = sum(int(_read_lines(r, 1, reaper)[0]) for _, r in started)
    # 8 in all: the parent, the two children, and whatever they forked in what was left.
    assert made == 8 - 3
    assert parent.stats()["pids_current"] == 8
    assert parent.pids_limit_hit()
    # The tree is full: a third child's cgroup is refused before anything is forked.
    with pytest.raises(SandboxError, match="no room for 4"):
        mgr.create("4", CgroupLimits(pids_max=8), parent=kids[0])
    parent.kill()  # the parent's kill takes the whole tree
    assert reaper.until(lambda: not parent.populated(), 5.0)
    for pid, r in started:
        assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
        os.close(r)
    os.close(go_r)
    os.close(go_w)
    parent.remove()  # bottom up: the children's directories first
    assert not any(os.path.exists(d) for k in (parent, *kids) for d in k.dirs)


def test_a_child_asking_for_more_memory_than_its_parent_gets_the_parents(
    mgr: CgroupManager
) -> None:
    cfg = SandboxConfig()
    mine = effective_limits(Limits(memory_max_bytes=64 * MiB, pids_max=16, wall_limit_s=60),
                            cfg)
    child = effective_limits(Limits(memory_max_bytes=512 * MiB, wall_limit_s=3600), cfg,
                             parent=ParentBudget(mine, wall_left_s=42.0))
    assert (child.memory_max_bytes, child.pids_max, child.wall_limit_s) == (64 * MiB, 16, 42.0)
    parent = mgr.create("1", CgroupLimits(mine.memory_max_bytes, mine.pids_max))
    kid = mgr.create("2", CgroupLimits(child.memory_max_bytes, child.pids_max), parent=parent)
    assert kid.memory_dir is not None
    name = "memory.max" if kid.memory_v2 else "memory.limit_in_bytes"
    assert int(Path(kid.memory_dir, name).read_text()) == 64 * MiB
    parent.remove()


def test_a_child_cgroup_with_a_larger_limit_is_still_oom_killed_at_its_parents(
    mgr: CgroupManager, reaper: Reaper
) -> None:
    # What nesting buys even if a limit were computed wrong: the kernel charges every
    # ancestor, so the parent's 48 MiB bound a child whose own limit says 512 MiB.
    parent = mgr.create("1", CgroupLimits(memory_max_bytes=48 * MiB))
    kid = mgr.create("2", CgroupLimits(memory_max_bytes=512 * MiB), parent=parent)

    def hog(say: Callable[[str], None]) -> int:
        say("up")
        blocks = []
        for _ in range(64):
            blocks.append(bytearray(4 * MiB))  # touched: zero-filled pages are charged
        say("survived")
        return 0

    pid, r = _reporting_child(reaper, kid, hog)
    assert _read_lines(r, 1, reaper) == ["up"]
    status = reaper.wait(pid)
    os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert kid.oom_killed() or parent.oom_killed()
    parent.remove()


def test_the_sandbox_manager_nests_a_child_and_a_tool_in_their_parents_cgroup(
    tmp_path: Path
) -> None:
    paths = Paths(tmp_path)
    paths.run.mkdir()
    sm = SandboxManager(paths, SandboxConfig(
        disabled=frozenset({"seccomp", "landlock", "namespaces"})))
    sm.start()
    try:
        assert sm.cgroups is not None, sm.unavailable
        assert sm.cgroup_placement is not None
        lim = Limits(memory_max_bytes=64 * MiB, pids_max=8, cpu_max_cores=1.0)
        p = sm.prepare(7, lim, str(tmp_path), tmp_path, parent_pid=None)
        c = sm.prepare(8, lim, str(tmp_path), tmp_path, parent_pid=7)
        assert isinstance(p.cgroup, ProcessCgroup) and isinstance(c.cgroup, ProcessCgroup)
        assert [d.rsplit("/", 1)[0] for d in c.cgroup.dirs] == list(p.cgroup.dirs)
        assert c.profile["cgroup_procs"] == [f"{d}/self/cgroup.procs" for d in c.cgroup.dirs]
        if sm.deno is not None:
            t = sm.prepare_tool(-1, (), tmp_path, owner_pid=8)
            assert isinstance(t.cgroup, ProcessCgroup)
            assert [d.rsplit("/", 1)[0] for d in t.cgroup.dirs] == list(c.cgroup.dirs)
        sm.verdict(c.cgroup)  # child 8 ended: nothing is made inside it any more
        assert sm._parent_cgroup(8) is None
        p.cgroup.kill()
        p.cgroup.remove()
    finally:
        sm.stop()


# ------------------------------------------- the pure-v2 root path, on this host's cgroup2


@pytest.fixture
def crowded() -> Iterator[tuple[str, str]]:
    """A non-root cgroup2 cgroup holding this process and another: a session scope."""
    h = detect()
    mount = h.mounts.get(UNIFIED)
    if mount is None or UNIFIED not in h.own_dirs:
        pytest.skip("no cgroup2 mount here")
    root = mount.rstrip("/")
    if os.path.exists(f"{root}/cgroup.type"):
        pytest.skip("this cgroup2 mount is a cgroup namespace's, not the kernel's root")
    own_before = h.own_dirs[UNIFIED]
    # Not named like a supervisor group: cleanup_stale() of any supervisor would kill it.
    scope = f"{root}/alos-test-scope-{os.getpid()}"
    os.mkdir(scope)
    other = os.fork()
    if other == 0:
        signal.pause()
        os._exit(0)
    try:
        Path(scope, "cgroup.procs").write_text(str(other))
        Path(scope, "cgroup.procs").write_text(str(os.getpid()))
        yield root, scope
    finally:
        Path(own_before, "cgroup.procs").write_text(str(os.getpid()))
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)
        with contextlib.suppress(OSError):
            os.rmdir(scope)


def test_a_supervisor_in_a_crowded_cgroup_makes_its_group_under_the_root_for_real(
    reaper: Reaper, crowded: tuple[str, str]
) -> None:
    root, scope = crowded
    offered = set(Path(root, "cgroup.controllers").read_text().split())
    if not offered:
        pytest.skip("this cgroup2 root offers no controller at all")
    ctrl = "hugetlb" if "hugetlb" in offered else sorted(offered)[0]
    # Only the cgroup2 mount, as a pure v2 host would show it, with us in the scope.
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    v2host = detect(mountinfo, f"0::/{os.path.basename(scope)}\n", files={
        f"{scope}/cgroup.controllers": Path(scope, "cgroup.controllers").read_text(),
        f"{scope}/cgroup.kill": "",
        "/proc/sys/kernel/osrelease": Path("/proc/sys/kernel/osrelease").read_text()})
    d = describe_host(v2host)
    assert d.own is not None and d.own.others and not d.own.exempt
    assert d.root is not None and d.root.exempt
    was_on = ctrl in Path(root, "cgroup.subtree_control").read_text().split()
    # The planner's reasoning, with the one controller this host can enable on cgroup2:
    # the root may enable it although it holds processes; the scope, crowded, may not.
    Path(root, "cgroup.subtree_control").write_text(f"+{ctrl}")
    with pytest.raises(OSError) as busy:
        Path(scope, "cgroup.subtree_control").write_text(f"+{ctrl}")
    assert busy.value.errno == errno.EBUSY
    placement = Placement("root", {UNIFIED: root}, (ctrl,), base_exempt=True)
    m = CgroupManager(v2host, f"{_TEST_PREFIX}root", placement=placement)
    try:
        m.setup()
        group = f"{root}/{_TEST_PREFIX}root"
        assert Path(group, "supervisor", "cgroup.procs").read_text().split() == [
            str(os.getpid())]
        assert ctrl in Path(group, "agents", "cgroup.subtree_control").read_text()
        parent = m.create("1", CgroupLimits())
        kid = m.create("2", CgroupLimits(), parent=parent)
        assert ctrl in Path(kid.dirs[0], "cgroup.controllers").read_text()
        pid, r = _reporting_child(reaper, kid, _idle)
        assert _read_lines(r, 1, reaper) == ["up"]
        os.close(r)
        assert parent.kill_via == "cgroup.kill"
        parent.kill()
        assert os.WTERMSIG(reaper.wait(pid)) == signal.SIGKILL
        assert reaper.until(lambda: not parent.populated(), 5.0)
        parent.remove()
        m.teardown()
        assert Path(scope, "cgroup.procs").read_text().split().count(str(os.getpid())) == 1
        assert not os.path.exists(group)
    finally:
        with contextlib.suppress(Exception):
            m.teardown()
        with contextlib.suppress(OSError):
            join([f"{scope}/cgroup.procs"])
        if not was_on:  # our test's own hygiene: the manager never disables at the root
            with contextlib.suppress(OSError):
                Path(root, "cgroup.subtree_control").write_text(f"-{ctrl}")
