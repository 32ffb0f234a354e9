"""Spare nested cgroups: made inside a spawning agent's own ahead of its next child.

Privileged: real cgroups on this host. End to end, a parent's second child lands in the
spare made after its first was ready -- empty until then, with the child's own limits,
and gone with the parent. Against the sandbox manager alone: a spare that vanished, a
tree with no room left, a parent that ended before its spare was due, the cap on how
many are held, and no spares at all without the warm pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentlibos.config import Paths
from agentlibos.errors import SandboxError
from agentlibos.kernel.image import Limits
from agentlibos.sandbox.cgroups import ProcessCgroup
from agentlibos.sandbox.profile import SandboxConfig, effective_limits
from agentlibos.supervisor import Supervisor, sandboxing
from agentlibos.supervisor.sandboxing import SandboxManager
from tests import test_pool as _tp
from tests.helpers import MakeImage
from tests.test_pool import wait_for

pytestmark = pytest.mark.privileged

MiB = 1 << 20

QUICK = "def main(ctx, args):\n    return None\n"
HOLD = """
def main(ctx, args):
    ctx.events.wait("go")
    return None
"""
# One child, then (once the host says so) a second: the second takes the spare.
TWO_CHILDREN = """
def main(ctx, args):
    ctx.proc.wait(ctx.proc.spawn("quick"))
    ctx.events.wait("second")
    return ctx.proc.wait(ctx.proc.spawn("hold17"))["pid"]
"""


# test_pool's supervisor with a pool of 2, found by pytest by this name.
pooled = _tp.pooled


def _procs(cg: ProcessCgroup) -> list[str]:
    return [p for f in cg.procs_files for p in Path(f).read_text().split()]


def test_a_parents_second_child_takes_the_spare_made_after_its_first(
        pooled: Supervisor, make_image: MakeImage) -> None:
    sup = pooled
    assert sup.sandbox.cgroups is not None and sup.sandbox.spares_on
    make_image("quick", QUICK)
    make_image("hold17", HOLD, caps=["event:wait:go"], limits={"pids": 17})
    parent = make_image("two", TWO_CHILDREN, caps=[
        "proc:spawn:quick", "proc:spawn:hold17", "proc:wait:children", "event:wait:second",
        "event:wait:go"])
    ppid = sup.submit_run(str(parent), {})
    spares = sup.sandbox._spares
    # Its first child has ended and it waits for "second" (a post before that is lost).
    assert wait_for(lambda: ppid in spares and "event:second" in sup.live[ppid].waits,
                    sup), [(p.pid, p.state, p.error) for p in sup.store.list_processes()]
    spare, written = spares[ppid]
    par = sup.live[ppid].cgroup
    # Inside the parent's cgroup in every hierarchy, never held a process, preset with
    # the limits of the child that asked for it (the defaults: "quick" sets none).
    assert [os.path.dirname(d) for d in spare.dirs] == list(par.dirs)
    assert all(os.path.isdir(d) for d in spare.dirs)
    assert _procs(spare) == [] and not spare.populated()
    default = effective_limits(Limits(), sup.sandbox.config).pids_max
    assert written.pids_max == default
    assert int(Path(spare.pids_dir or "", "pids.max").read_text()) == default

    sup.events.post("second", None, None)
    assert wait_for(lambda: any(lv.caller.ppid == ppid and lv.ready and lv.waits
                                for lv in sup.live.values()), sup), (
        [(p.pid, p.state, p.exit_reason, p.error) for p in sup.store.list_processes()])
    cpid = next(p for p, lv in sup.live.items() if lv.caller.ppid == ppid)
    child = sup.live[cpid]
    assert child.cgroup.dirs == spare.dirs and child.cgroup.name == spare.name
    # Its own limits, written over the preset where they differ.
    assert int(Path(child.cgroup.pids_dir, "pids.max").read_text()) == 17
    assert str(child.host_pid) in _procs(child.cgroup)
    # The spare went to it: a new one is made after it was ready, preset with its limits.
    assert wait_for(lambda: ppid in spares and spares[ppid][0].name != spare.name, sup)
    assert spares[ppid][1].pids_max == 17

    sup.events.post("go", None, None)
    assert sup.run_until(lambda: not sup.tree_live(ppid), 20)
    assert sup.store.get_process(ppid).exit_reason == "returned"
    assert sup.store.get_process(cpid).exit_reason == "returned"
    # The parent's cgroup goes, and every spare made inside it with it.
    assert wait_for(lambda: not any(os.path.exists(d) for d in par.dirs), sup)
    assert ppid not in spares


# ---------------------------------------------------------- the sandbox manager alone


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[SandboxManager]:
    paths = Paths(tmp_path)
    paths.run.mkdir()
    m = SandboxManager(paths, SandboxConfig(
        disabled=frozenset({"seccomp", "landlock", "namespaces"})))
    m.start()
    try:
        assert m.cgroups is not None, m.unavailable
        m.pool_template(2)  # no pool without those layers, but spares: cgroups suffice
        assert m.spares_on
        yield m
    finally:
        m.stop()


Deferred = list[Callable[[], None]]


def _later(due: Deferred) -> Callable[[float, Callable[[], None]], None]:
    def later(delay_s: float, fn: Callable[[], None]) -> None:
        assert 0 < delay_s < 0.1
        due.append(fn)

    return later


LIM = Limits(memory_max_bytes=64 * MiB, pids_max=8)


def _with_spare(sm: SandboxManager, tmp: Path, parent: int, child: int
                ) -> tuple[ProcessCgroup, ProcessCgroup]:
    """Parent ``parent``, its child ``child`` ready, the spare made: (parent's, spare)."""
    p = sm.prepare(parent, LIM, str(tmp), tmp)
    sm.prepare(child, LIM, str(tmp), tmp, parent_pid=parent)
    due: Deferred = []
    sm.on_ready(child, _later(due))
    assert len(due) == 1
    due[0]()
    return p.cgroup, sm._spares[parent][0]


def test_a_spare_that_vanished_is_replaced_by_a_cgroup_of_the_childs_own(
        sm: SandboxManager, tmp_path: Path) -> None:
    par, spare = _with_spare(sm, tmp_path, 7, 8)
    spare.remove()
    c = sm.prepare(9, LIM, str(tmp_path), tmp_path, parent_pid=7)
    assert c.cgroup.name == "9" and all(os.path.isdir(d) for d in c.cgroup.dirs)
    assert [os.path.dirname(d) for d in c.cgroup.dirs] == list(par.dirs)
    assert 7 not in sm._spares
    par.kill()
    par.remove()


def test_a_full_tree_refuses_a_child_though_a_spare_is_waiting(
        sm: SandboxManager, tmp_path: Path) -> None:
    par, spare = _with_spare(sm, tmp_path, 7, 8)
    assert par.pids_dir is not None
    Path(par.pids_dir, "pids.max").write_text("0")  # no room left in the parent's tree
    with pytest.raises(SandboxError, match="no room"):
        sm.prepare(9, LIM, str(tmp_path), tmp_path, parent_pid=7)
    assert not any(os.path.exists(d) for d in spare.dirs), "a refused spare is removed"
    par.remove()


def test_no_spare_is_made_for_a_parent_that_ended_before_it_was_due(
        sm: SandboxManager, tmp_path: Path) -> None:
    p = sm.prepare(7, LIM, str(tmp_path), tmp_path)
    c = sm.prepare(8, LIM, str(tmp_path), tmp_path, parent_pid=7)
    due: Deferred = []
    sm.on_ready(8, _later(due))
    sm.verdict(c.cgroup)
    sm.verdict(p.cgroup)  # the parent ended: nothing is made inside its cgroup any more
    due[0]()
    assert sm._spares == {}
    assert {n for d in p.cgroup.dirs for n in os.listdir(d)
            if os.path.isdir(os.path.join(d, n))} == {"self", "8"}  # its leaf, its child's
    p.cgroup.remove()


def test_spares_are_capped_and_off_without_the_pool(
        sm: SandboxManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandboxing, "MAX_SPARES", 1)
    a, _ = _with_spare(sm, tmp_path, 7, 8)
    b = sm.prepare(17, LIM, str(tmp_path), tmp_path)
    sm.prepare(18, LIM, str(tmp_path), tmp_path, parent_pid=17)
    due: Deferred = []
    sm.on_ready(18, _later(due))
    due[0]()
    assert list(sm._spares) == [7], "one spare held at most"
    sm.pool_template(0)
    assert not sm.spares_on
    sm.prepare(19, LIM, str(tmp_path), tmp_path, parent_pid=17)
    sm.on_ready(19, _later(due))
    assert len(due) == 1, "nothing scheduled without the pool"
    for cg in (a, b.cgroup):
        cg.remove()
