"""The warm pool: pre-confined processes that each serve one agent, then exit.

Looked at from inside (what a pooled agent sees: its filters, its scratch, its fds,
its environment) and from the host (which host processes served which agents, the pool
refilling, ``pool_size = 0``). The hostile-agent suites run against the pool too: the
default config has one, so most of their agents are pooled processes.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths, SupervisorConfig, parse_operator_config
from agentlibos.kernel.image import Limits
from agentlibos.sandbox import cgroups, pool, seccomp
from agentlibos.sandbox.profile import effective_limits
from agentlibos.supervisor import Supervisor
from agentlibos.zygote.child import MAX_ASSIGN_FDS, POOL_ASSIGN_FD, POOL_TITLE
from agentlibos.zygote.forker import FORKER_TITLE
from tests.helpers import MakeImage, fd_targets, host_processes, run_proc

# Reports everything an earlier assignment could have left behind, then leaves traces
# of its own for the next agent to look for.
SNOOP = r'''
import ctypes, errno, os, sys

libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def raw(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

def main(ctx, args):
    with open("/proc/self/status") as f:
        status = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
    seen = {
        "scratch": sorted(os.listdir("/scratch")),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "fd_targets": sorted(os.readlink(f"/proc/self/fd/{fd}")
                             for fd in os.listdir("/proc/self/fd") if int(fd) > 2
                             and os.path.lexists(f"/proc/self/fd/{fd}")),
        "env": dict(os.environ),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "uid": os.getuid(),
        "seccomp": status["Seccomp"], "filters": status["Seccomp_filters"],
        "no_new_privs": status["NoNewPrivs"], "cap_eff": status["CapEff"],
        "cap_bnd": status["CapBnd"], "cap_prm": status["CapPrm"],
        "title": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
        # What only the pool filter allows must be refused by the agent filter on top.
        "mount": raw(libc.mount(b"none", b"/scratch", b"tmpfs", 0, None)),
        "pivot_root": raw(libc.syscall(155, b".", b".")),
        "move_mount": raw(libc.syscall(429, -1, b"", -100, b"/scratch", 4)),
        "setuid": attempt(lambda: os.setuid(0)),
        "chown": attempt(lambda: os.chown("/scratch", 0, 0)),
        "landlock": raw(libc.syscall(444, None, 0, 1)),
        "seccomp_load": raw(libc.syscall(317, 1, 0, None)),
        "pdeathsig": raw(libc.prctl(1, 0, 0, 0, 0)),
        "passwd": attempt(lambda: open("/etc/passwd").read()),
        "cgroup": open("/proc/self/cgroup").read(),
        # What the pooled process's rehearsal (sdk.runtime.rehearse) imported: forgotten.
        "rehearsal_left": [n for n in (*sys.modules, *sys.path, *sys.path_importer_cache)
                           if "rehearsal" in n],
    }
    # (/tmp is the scratch directory unless, as here, the image lies under /tmp.)
    with open(f"/scratch/trace-{ctx.pid}", "w") as f:
        f.write(ctx.client._token.hex())
    os.environ["LEFT_BY"] = str(ctx.pid)
    os.open("/scratch/trace-%d" % ctx.pid, os.O_RDONLY)  # an fd left open at exit
    return seen
'''


def pooled_children(zygote_pid: int) -> set[int]:
    """Host pids of the processes waiting in the zygote's pool (the children of its
    forker, forker.py)."""
    procs = host_processes()
    forkers = {p for p, (ppid, cmd) in procs.items()
               if ppid == zygote_pid and cmd.startswith(FORKER_TITLE.encode())}
    return {p for p, (ppid, cmd) in procs.items()
            if ppid in forkers and cmd.startswith(POOL_TITLE.encode())}


def wait_for(cond: Callable[[], bool], sup: Supervisor, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        sup.step(0.02)
    return cond()


def pool_ready(sup: Supervisor, n: int) -> bool:
    """The supervisor knows ``n`` pooled processes ready (it names the one a spawn goes
    to, so a spawn made before it heard of any goes cold)."""
    return len(pooled_children(sup.zygote.pid)) == n and len(sup.sandbox.pool_ready) == n


def gone(path: Path) -> bool:
    return not path.exists()


def unified_cgroup(proc_self_cgroup: str) -> Path:
    """The cgroup2 directory of a /proc/<pid>/cgroup text, on this host."""
    rel = next(line[3:] for line in proc_self_cgroup.splitlines() if line.startswith("0::"))
    with open("/proc/self/mounts") as f:
        mount = next(line.split()[1] for line in f if line.split()[2] == "cgroup2")
    return Path(mount + rel)


def contain_timings(sup: Supervisor, pid: int) -> dict[str, float]:
    recs = [a for a in sup.store.audit_records(pid=pid) if a.call == "proc.contain"]
    assert recs, f"pid {pid} reported no containment"
    timings: dict[str, float] = recs[0].detail["timings_ms"]
    return timings


@pytest.fixture
def pooled(paths: Paths) -> Iterator[Supervisor]:
    s = Supervisor(paths, SupervisorConfig(pool_size=2))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.privileged
def test_each_pooled_process_serves_one_agent_and_carries_nothing_from_another(
        pooled: Supervisor, make_image: MakeImage) -> None:
    img = make_image("snoop", SNOOP)
    served: dict[int, int] = {}  # host pid -> libOS pid
    seen: list[dict[str, Any]] = []
    cgroup_dirs: list[Path] = []
    for _ in range(5):
        # Wait for a full pool, so that every agent here is a pooled one.
        assert wait_for(lambda: pool_ready(pooled, 2), pooled)
        rec = run_proc(pooled, img)
        assert rec.exit_reason == "returned", rec.error
        assert "pool_namespaces" in contain_timings(pooled, rec.pid), "not a pooled process"
        # In the cgroup its pooled process made for itself before the assignment (no
        # move on the hot path), which no other process ever used; removed once it ended.
        cg = unified_cgroup(rec.result["cgroup"])
        assert cg.name == "self" and cg.parent.name.startswith("p"), cg
        assert cg.parent.parent.name == "agents", cg
        assert "pool_cgroups" in contain_timings(pooled, rec.pid)
        # It rehearsed the SDK's first steps while it waited, inside its sandbox.
        assert "pool_rehearsal" in contain_timings(pooled, rec.pid)
        tree = cg.parent
        assert tree not in cgroup_dirs, f"{tree} served two agents"
        cgroup_dirs.append(tree)
        assert wait_for(functools.partial(gone, tree), pooled), f"{tree} left behind"
        assert rec.host_pid is not None
        assert rec.host_pid not in served, (
            f"host pid {rec.host_pid} served pid {served.get(rec.host_pid)} and {rec.pid}")
        served[rec.host_pid] = rec.pid
        # It is gone: a pooled process never goes back to the pool.
        assert not Path(f"/proc/{rec.host_pid}").exists()
        assert rec.host_pid not in pooled_children(pooled.zygote.pid)
        seen.append(rec.result)
    first = seen[0]
    for got in seen:
        # A fresh scratch (its own, empty), no inherited fds beyond stdio and the
        # SDK's own, the runtime's environment only, alone in its pid namespace.
        assert got["scratch"] == []
        assert got["rehearsal_left"] == []
        assert got["fds"] == first["fds"]
        assert "LEFT_BY" not in got["env"]
        assert sorted(got["env"]) == ["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE",
                                      "TMPDIR"]
        assert got["pids"] == [1]
        assert got["uid"] == 65534 and got["cap_eff"] == "0000000000000000"
        # The bounding set was emptied before the assignment, the rest on it.
        assert got["cap_bnd"] == got["cap_prm"] == "0000000000000000"
        # Two stacked filters: the pool's, and the agent's on top, which refuses what only
        # the pool's allowed.
        assert (got["seccomp"], got["filters"], got["no_new_privs"]) == ("2", "2", "1")
        for call in ("mount", "pivot_root", "move_mount", "setuid", "chown", "landlock",
                     "seccomp_load", "pdeathsig"):
            assert got[call] == "EPERM", (call, got[call])
        # Its broker socket and nothing else: no descriptor its assignment brought (a
        # bind would show as the path of its root), none the pooled process opened.
        assert [t.split(":")[0] for t in got["fd_targets"]] == ["socket"], got["fd_targets"]
        assert got["passwd"] in ("ENOENT", "EACCES")
        assert "pooled" not in got["title"]


def socket_inodes(host_pid: int) -> set[str]:
    return {t for t in fd_targets(host_pid).values() if t.startswith("socket:")}


SOCKETS = """
import os
def main(ctx, args):
    ctx.proc.getpid()
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, closed by now
            continue
        if target.startswith("socket:"):
            out.append(target)
    return sorted(out)
"""


@pytest.mark.privileged
def test_a_pooled_process_is_connected_to_the_broker_before_its_assignment(
        pooled: Supervisor, make_image: MakeImage) -> None:
    """It connects while it waits (docs/sandbox.md): its agent makes its calls over
    that same socket, and no other."""
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    before = {p: socket_inodes(p) for p in pooled_children(pooled.zygote.pid)}
    # Two while it waits: the broker's, and the one its assignment will come down.
    assert all(len(s) == 2 for s in before.values()), before
    before = {p: s - {fd_targets(p)[str(POOL_ASSIGN_FD)]} for p, s in before.items()}
    rec = run_proc(pooled, make_image("sockets", SOCKETS))
    assert rec.exit_reason == "returned", rec.error
    assert rec.host_pid in before, "not a pooled process"
    assert rec.result == sorted(before[rec.host_pid])


@pytest.mark.privileged
def test_the_pool_refills_after_each_assignment(pooled: Supervisor,
                                                make_image: MakeImage) -> None:
    img = make_image("quick", "def main(ctx, args):\n    return 1\n")
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    before = pooled_children(pooled.zygote.pid)
    pids = [pooled.submit_run(str(img), {}) for _ in range(2)]
    assert wait_for(lambda: not any(pooled.tree_live(p) for p in pids), pooled)
    hosts = {pooled.store.get_process(p).host_pid for p in pids}
    assert hosts == before
    assert wait_for(lambda: len(pooled_children(pooled.zygote.pid)) == 2, pooled)
    assert not pooled_children(pooled.zygote.pid) & before


@pytest.mark.privileged
def test_pool_size_zero_forks_every_agent_cold(paths: Paths, make_image: MakeImage) -> None:
    img = make_image("quick", "def main(ctx, args):\n    return 1\n")
    with Supervisor(paths, SupervisorConfig(pool_size=0)) as sup:
        assert sup.sandbox.pool is None
        sup.step(0.2)
        assert pooled_children(sup.zygote.pid) == set()
        rec = run_proc(sup, img)
        assert rec.exit_reason == "returned", rec.error
        assert rec.layers == ["cgroups", "namespaces", "rlimits", "landlock", "seccomp"]
        assert "pool_namespaces" not in contain_timings(sup, rec.pid)


def test_pool_size_is_read_from_the_supervisor_table() -> None:
    assert SupervisorConfig().pool_size == 8
    cfg = parse_operator_config("[supervisor]\npool_size = 0\n", "config.toml")
    assert cfg.supervisor.pool_size == 0


def test_the_pool_filter_allows_everything_the_agent_filter_allows() -> None:
    # Stacked, the strictest verdict wins: agent code then runs under the agent filter
    # exactly, as long as the pool's refuses nothing the agent's allows.
    agent, pooled_ = seccomp.build_profile("agent"), seccomp.build_profile("pool")
    names = {r.syscall for r in agent.rules} | {r.syscall for r in pooled_.rules}
    for name in sorted(names):
        for args in ((0,) * 6, (1,) * 6, (2, 0x5401, 0, 0, 0, 0)):
            if seccomp.decide(agent, name, args) == seccomp.decide(agent, "read"):
                assert seccomp.decide(pooled_, name, args) == seccomp.decide(pooled_, "read"), (
                    name, args)
    for extra in ("mount", "move_mount", "setresuid", "landlock_restrict_self", "seccomp"):
        assert seccomp.decide(agent, extra) != seccomp.decide(agent, "read")
        assert seccomp.decide(pooled_, extra) == seccomp.decide(pooled_, "read")
    # It pivoted before it loaded the filter: no second pivot, no unmount, no new tree.
    for never in ("unshare", "setns", "ptrace", "execve", "bpf", "io_uring_setup",
                  "pivot_root", "umount2", "open_tree", "fsopen", "mount_setattr"):
        assert seccomp.decide(pooled_, never) != seccomp.decide(pooled_, "read")


def _profile(base: dict[str, Any], **change: Any) -> dict[str, Any]:
    prof: dict[str, Any] = json.loads(json.dumps({
        "modes": {"namespaces": "required", "seccomp": "required"}, "skipped": {},
        "seccomp_bpf": "00", "id_map": None, "namespaces": base["namespaces"],
        "rlimits": base["rlimits"], "mount": base["mount"]}))
    prof["mount"]["ops"]["binds"].append(["/srv/image", "/srv/image", 4129])
    prof.update(change)
    return prof


def test_fits_takes_only_profiles_the_template_is_a_part_of(tmp_path: Path) -> None:
    from agentlibos.sandbox.profile import HostView, SandboxConfig  # noqa: PLC0415

    (tmp_path / "usr").mkdir()
    view = HostView(ro_paths=(str(tmp_path / "usr"),), symlinks=(), dev_nodes=())
    tpl = pool.pool_base(config=SandboxConfig(), view=view, new_root="/r", pool_bpf=b"x")
    base = tpl["base"]
    assert pool.fits(_profile(base), base)
    assert not pool.fits(_profile(base, id_map=[0, 0]), base)  # a user namespace
    assert not pool.fits(_profile(base, rlimits={"core": 0}), base)
    assert not pool.fits(_profile(base, skipped={"seccomp": "no"}), base)
    assert not pool.fits(_profile(base, modes={"namespaces": "disabled"}), base)
    assert not pool.fits(_profile(base, seccomp_bpf=""), base)
    above = _profile(base)
    above["mount"]["ops"]["binds"].append([str(tmp_path), str(tmp_path), 4129])
    assert not pool.fits(above, base)  # it would cover a template bind
    many = _profile(base)  # more binds of its own than an assignment carries
    many["mount"]["ops"]["binds"] += [[f"/srv/{i}", f"/srv/{i}", 4129]
                                      for i in range(pool.MAX_AGENT_BINDS)]
    assert not pool.fits(many, base)
    many["mount"]["ops"]["binds"].pop()
    assert pool.fits(many, base)
    # With a nested agent's cgroups (four hierarchies at most) they fit one assignment.
    assert pool.MAX_AGENT_BINDS + 4 <= MAX_ASSIGN_FDS
    assert pool.pool_key(base) == tpl["key"] != pool.pool_key({**base, "rlimits": {}})
    assert os.path.isdir(tmp_path / "usr")


# Blocks until the host posts "go"; reports its cgroup first, through an object.
HOLD = """
def main(ctx, args):
    ctx.obj.put("cgroup", open("/proc/self/cgroup").read())
    ctx.events.wait("go")
    return None
"""

PARENT = """
def main(ctx, args):
    child = ctx.proc.spawn("hold")
    return ctx.proc.wait(child)["pid"]
"""


@pytest.mark.privileged
def test_a_pooled_agent_runs_under_its_own_limits_in_the_cgroup_its_process_made(
        pooled: Supervisor, make_image: MakeImage) -> None:
    img = make_image("hold", HOLD, caps=["event:wait:go"], limits={"memory": "96MiB",
                                                                   "pids": 17})
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    named = set(pooled.sandbox.pool_ready)
    pid = pooled.submit_run(str(img), {})
    assert wait_for(lambda: pooled.store.get_process(pid).state == "waiting", pooled)
    live = pooled.live[pid]
    assert live.cgroup is not None and live.cgroup.name in named
    # The limits are the agent's, written before its first line ran.
    assert int(Path(live.cgroup.pids_dir, "pids.max").read_text()) == 17
    mem = Path(live.cgroup.memory_dir)
    limit = mem / ("memory.max" if live.cgroup.memory_v2 else "memory.limit_in_bytes")
    assert int(limit.read_text()) == 96 << 20
    assert str(live.host_pid) in Path(live.cgroup.procs_files[0]).read_text().split()
    pooled.events.post("go", None, None)
    assert pooled.run_until(lambda: not pooled.tree_live(pid), 20)
    assert pooled.store.get_process(pid).exit_reason == "returned"
    assert wait_for(lambda: not Path(live.cgroup.dirs[0]).exists(), pooled)


@pytest.mark.privileged
def test_a_waiting_pooled_cgroup_holds_the_default_limits_and_each_agent_gets_its_own(
        pooled: Supervisor, make_image: MakeImage) -> None:
    """The default limits are written into a pooled cgroup once it is ready (off the
    spawn's path); a spawn with those limits writes nothing there, one with others
    writes its own -- whichever pooled process each one takes."""
    assert pooled.sandbox.cgroups is not None
    default = effective_limits(Limits(), pooled.sandbox.config)
    assert default.pids_max is not None
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    for name in list(pooled.sandbox.pool_ready):
        cg = pooled.sandbox.cgroups.pooled_cgroup(name)
        assert int(Path(cg.pids_dir or "", "pids.max").read_text()) == default.pids_max
    own = make_image("hold17", HOLD, caps=["event:wait:go"], limits={"pids": 17})
    plain = make_image("hold", HOLD, caps=["event:wait:go"])
    pids = [pooled.submit_run(str(own), {}), pooled.submit_run(str(plain), {})]
    assert wait_for(lambda: all(pooled.store.get_process(p).state == "waiting"
                                for p in pids), pooled)
    got = [int(Path(pooled.live[p].cgroup.pids_dir, "pids.max").read_text()) for p in pids]
    assert got == [17, default.pids_max]
    assert all("pool_cgroups" in contain_timings(pooled, p) for p in pids)
    assert set(pooled.sandbox._preset) <= set(pooled.sandbox.pool_ready)
    pooled.events.post("go", None, None)
    assert pooled.run_until(lambda: not any(pooled.tree_live(p) for p in pids), 20)


@pytest.mark.privileged
def test_a_nested_pooled_agent_moves_into_its_parents_tree_and_its_pool_cgroup_goes(
        pooled: Supervisor, make_image: MakeImage) -> None:
    make_image("hold", HOLD, caps=["event:wait:go"])
    parent = make_image("parent", PARENT, caps=["proc:spawn:hold", "proc:wait:children",
                                                "event:wait:go"])
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    ppid = pooled.submit_run(str(parent), {})
    assert wait_for(lambda: any(lv.caller.ppid == ppid and lv.ready and lv.waits
                                for lv in pooled.live.values()), pooled), (
        [(p.pid, p.error, p.exit_reason) for p in pooled.store.list_processes()])
    cpid = next(p for p, lv in pooled.live.items() if lv.caller.ppid == ppid)
    assert "pool_namespaces" in contain_timings(pooled, cpid), "not a pooled process"
    child, par = pooled.live[cpid], pooled.live[ppid]
    assert child.cgroup.dirs[0].startswith(par.cgroup.dirs[0] + "/")
    leftover = Path(child.pool_leftover.dirs[0])
    assert leftover.exists() and not (leftover / "self" / "cgroup.procs").read_text().split()
    # Limits are preset only for cgroups still waiting: none is kept for one a spawn took.
    assert set(pooled.sandbox._preset) <= set(pooled.sandbox.pool_ready)
    assert leftover.name not in pooled.sandbox._preset
    pooled.events.post("go", None, None)
    assert pooled.run_until(lambda: not pooled.tree_live(ppid), 20)
    assert pooled.store.get_process(ppid).exit_reason == "returned"
    assert wait_for(lambda: not leftover.exists(), pooled), f"{leftover} left behind"


@pytest.mark.privileged
def test_a_pooled_process_that_dies_unassigned_takes_its_cgroup_with_it(
        pooled: Supervisor, make_image: MakeImage) -> None:
    img = make_image("quick", "def main(ctx, args):\n    return 1\n")
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    victim = pooled.sandbox.pool_ready[0]

    def in_victim() -> list[int]:  # it joins its cgroup right after saying it is ready
        return [h for h in pooled_children(pooled.zygote.pid)
                if f"/{victim}/" in Path(f"/proc/{h}/cgroup").read_text()]

    assert wait_for(lambda: len(in_victim()) == 1, pooled)
    host = in_victim()[0]
    tree = unified_cgroup(Path(f"/proc/{host}/cgroup").read_text()).parent
    os.kill(host, 9)
    assert wait_for(lambda: victim not in pooled.sandbox.pool_ready and not tree.exists(),
                    pooled)
    # Nobody is ever handed to it, or to its cgroup.
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    rec = run_proc(pooled, img)
    assert rec.exit_reason == "returned", rec.error
    assert pooled.live.get(rec.pid) is None
    assert victim not in pooled.sandbox.pool_ready


@pytest.mark.privileged
def test_a_waiting_pooled_process_has_already_pivoted_into_its_own_root(
        pooled: Supervisor, paths: Paths) -> None:
    """The old root's unmount is off the spawn's path (docs/sandbox.md): while it waits,
    its root is its tmpfs, and the host's files -- the home, the images -- are gone."""
    assert wait_for(lambda: pool_ready(pooled, 2), pooled)
    for host_pid in pooled_children(pooled.zygote.pid):
        mounts = [line.split() for line in
                  Path(f"/proc/{host_pid}/mountinfo").read_text().splitlines()]
        root = next(m for m in mounts if m[4] == "/")
        assert root[root.index("-") + 1] == "tmpfs", root
        assert not Path(f"/proc/{host_pid}/root{paths.home}").exists()
        assert not any(m[4].startswith(str(paths.home)) for m in mounts)


@pytest.mark.privileged
def test_a_pooled_process_joins_a_cgroup_by_a_descriptor_opened_before(
        pooled: Supervisor) -> None:
    """What a nested agent's pooled process does when the zygote's move into its
    cgroups lost the race with its own join of its pooled cgroup: it joins by the
    descriptors the supervisor sent, having no path it could open."""
    assert pooled.sandbox.cgroups is not None
    cg = pooled.sandbox.cgroups.create("joinfd", cgroups.CgroupLimits())
    fds = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cg.procs_files]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            cgroups.join_fds(cg.procs_files, fds)
            mine = Path("/proc/self/cgroup").read_text()
            # Each leaf (agents/joinfd/self) is where /proc/self/cgroup says it is.
            tails = ["/".join(os.path.dirname(p).split("/")[-3:]) for p in cg.procs_files]
            os.write(w, b"in" if all(f"/{t}\n" in mine for t in tails) else mine.encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, repr(e).encode())
        os._exit(0)
    os.close(w)
    for fd in fds:
        os.close(fd)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"in"
    finally:
        os.waitpid(pid, 0)
        cg.remove(timeout_s=5)
