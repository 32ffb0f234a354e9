"""The pool of pre-started Deno workers: each serves exactly one (process, tool), carries
nothing from anywhere, and is confined by every layer a cold worker is -- looked at
from the kernel's side (/proc) while it serves, and through what its tool can do."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentlibos.errors import SandboxError
from agentlibos.jit import deno
from agentlibos.sandbox.profile import LAYERS
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.jit import Worker
from agentlibos.supervisor.jit_pool import check_pids_room, read_checked, self_contained
from tests.helpers import MakeImage, log_of
from tests.test_jit import call_tool, deno_processes, tool_image

COUNTER = """
    let calls = 0;
    export default function (args: Record<string, never>, libos: Libos): unknown {
      return { calls: ++calls, pid: Deno.pid };  // state lives as long as this worker
    }
"""

# Calls tool t once, then waits for the event "go" (so a test can look at its worker
# while it is warm), then calls it again.
CALL_THEN_WAIT = """
def main(ctx, args):
    first = ctx.tools.call("t", {})
    ctx.events.wait("go")
    return [first, ctx.tools.call("t", {})]
"""


def starts(sup: Supervisor, pid: int | None = None) -> list[dict[str, Any]]:
    return [a.detail for a in sup.store.audit_records(pid=pid) if a.call == "jit.start"]


def pool_ready(sup: Supervisor) -> bool:
    return len([w for w in sup.jit.pool if w.state == "ready"]) >= sup.jit.pool_size


def fill(sup: Supervisor) -> None:
    """Start the pool and wait until every pooled worker is ready."""
    sup.jit._use_pool()
    assert sup.run_until(lambda: pool_ready(sup), 30), [w.state for w in sup.jit.pool]


def go(sup: Supervisor, pid: int) -> None:
    """Post "go" once ``pid`` waits for it (a post before the wait began is not seen)."""
    assert sup.run_until(lambda: sup.store.get_process(pid).wait == "event:go", 30)
    sup.events.post("go", None, None)


def proc_file(host_pid: int, name: str) -> str:
    return Path(f"/proc/{host_pid}/{name}").read_text()


# ------------------------------------------------------------------- deciding (pure)


@pytest.mark.parametrize("source", [
    'import x from "./x.ts"; export default () => x;',
    'export default async () => (await import("./x.ts")).x;',
    "export default () => import.meta.url;",
    'export * from "./x.ts";',
    'export { default } from /* a comment */ "./x.ts";',
    "export { default } from // a line comment\n'./x.ts';",
])
def test_a_module_that_may_load_another_is_not_self_contained(source: str) -> None:
    assert not self_contained(source)


def test_a_module_that_uses_the_word_from_otherwise_is_self_contained() -> None:
    assert self_contained("export default (a: { s: string }): string[] => "
                          "Array.from(a.s); // taken from the docs")


def test_only_the_checked_bytes_of_a_regular_file_are_read(tmp_path: Path) -> None:
    tool = tmp_path / "t.ts"
    tool.write_text("export default (): number => 1;\n")
    digest = hashlib.sha256(tool.read_bytes()).hexdigest()
    assert read_checked(str(tool), {digest}.__contains__) == tool.read_text()
    # Changed since it was checked: never sent.
    assert read_checked(str(tool), set().__contains__) is None
    # A link (to a file the tool's sandbox would not show) is never followed.
    link = tmp_path / "link.ts"
    link.symlink_to(tool)
    assert read_checked(str(link), {digest}.__contains__) is None
    assert read_checked(str(tmp_path), lambda _d: True) is None  # not a file
    importer = tmp_path / "i.ts"
    importer.write_text('import x from "./t.ts"; export default x;')
    assert read_checked(str(importer), lambda _d: True) is None


def test_a_worker_is_not_moved_into_a_tree_with_no_room_for_its_threads(
    tmp_path: Path
) -> None:
    tree = tmp_path / "a" / "b" / "c"  # the tool's cgroup, inside its caller's (b)
    tree.mkdir(parents=True)
    (tree / "pids.max").write_text("32\n")
    (tree / "pids.current").write_text("0\n")
    (tree.parent / "pids.max").write_text("max\n")
    (tree.parent / "pids.current").write_text("5\n")
    check_pids_room(str(tree), os.getpid())  # room everywhere
    (tree.parent / "pids.max").write_text("5\n")  # the caller's tree is full
    with pytest.raises(OSError, match="no room"):
        check_pids_room(str(tree), os.getpid())
    check_pids_room(None, os.getpid())  # no pids controller: nothing to check


# --------------------------------------------------------------- with real workers



@pytest.mark.deno
@pytest.mark.privileged
def test_a_first_call_takes_a_pooled_worker_confined_in_every_layer(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fill(sup)
    pooled = {w.wid for w in sup.jit.pool}
    img = tool_image(make_image, "counter", COUNTER)
    out = call_tool(sup, img, [{}, {}])
    assert [o["value"] for o in out] == [{"calls": 1, "pid": 1}, {"calls": 2, "pid": 1}]
    pid = [a for a in sup.store.audit_records() if a.call == "jit.start"][-1].pid
    (start,) = starts(sup, pid)
    assert start["pooled"] is True and -start["worker"] in pooled
    contain = [a.detail for a in sup.store.audit_records(pid=pid) if a.call == "jit.contain"]
    assert len(contain) == 1 and contain[0]["pooled"] is True
    assert set(contain[0]["layers"]) == set(LAYERS) and not contain[0]["missing"]
    # Its stderr went to the caller's tool log, like a cold worker's.
    assert (sup.paths.logs / f"{pid}.t.log").exists()


@pytest.mark.deno
@pytest.mark.privileged
def test_a_pooled_worker_sees_no_tool_and_serves_from_inside_the_callers_cgroup(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fill(sup)
    # What a pooled worker sees before it has a tool: Deno, its libraries, jit/, its
    # scratch and two device nodes; nothing of any image or any agent.
    waiting = sup.jit.pool[0]
    assert waiting.host_pid is not None
    before = proc_file(waiting.host_pid, "mountinfo")
    img = tool_image(make_image, "watched", COUNTER, caps=["jit:*:*", "event:wait:go"])
    toml = img / "image.toml"
    (img / "agent.py").write_text(textwrap.dedent(CALL_THEN_WAIT))
    assert toml.exists()
    pid = sup.submit_run(str(img), {})
    key = (pid, "t")
    assert sup.run_until(lambda: key in sup.jit.workers
                         and sup.jit.workers[key].state == "ready"
                         and sup.jit.workers[key].calls == 1, 60), log_of(sup, pid)
    w: Worker = sup.jit.workers[key]
    assert w.from_pool and w.host_pid is not None
    mounts = proc_file(w.host_pid, "mountinfo")
    for text in (before, mounts):
        assert str(img) not in text and str(sup.paths.work) not in text
        assert str(sup.jit.dir) not in text  # no tool's directory, not even its own
        assert str(deno.JIT_DIR) in text
    status = proc_file(w.host_pid, "status")
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    assert "Uid:\t65534\t65534\t65534\t65534" in status
    assert "CapEff:\t0000000000000000" in status
    # Every hierarchy places it in a cgroup inside its caller's: below the directory of
    # the caller's own leaf (`.../self`, where the agent process itself sits).
    own = proc_file(w.host_pid, "cgroup")
    live = sup.table.live[pid]
    assert live.cgroup is not None and live.host_pid is not None
    caller = proc_file(live.host_pid, "cgroup")
    theirs = dict(line.split(":", 2)[1:] for line in caller.strip().splitlines())
    for line in own.strip().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "memory", "pids") or "cpu" in controllers.split(","):
            base = theirs[controllers].removesuffix("/self")
            assert base not in ("", "/") and path.startswith(base + "/"), (own, caller)
    go(sup, pid)
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.result == [{"calls": 1, "pid": 1}, {"calls": 2, "pid": 1}], rec.error
    # Its process ended: so did the worker, never to serve anyone else.
    assert sup.run_until(lambda: w.wid not in sup.jit.by_wid, 10)
    assert not os.path.exists(f"/proc/{w.host_pid}/status") or \
        "zombie" in proc_file(w.host_pid, "status")


@pytest.mark.deno
@pytest.mark.privileged
def test_each_pooled_worker_serves_exactly_one_process_and_tool(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fill(sup)
    two = make_image("two-tools", """
def main(ctx, args):
    return [ctx.tools.call("t", {}), ctx.tools.call("u", {}), ctx.tools.call("t", {})]
""", caps=["jit:*:*"], tools={"t": "jit:tools/t.ts", "u": "jit:tools/u.ts"},
                     files={"tools/t.ts": COUNTER, "tools/u.ts": COUNTER})
    results, workers = [], []
    for _ in range(3):
        pid = sup.submit_run(str(two), {})
        assert sup.run_until(lambda p=pid: not sup.tree_live(p), 90)  # type: ignore[misc]
        rec = sup.store.get_process(pid)
        results.append([r["calls"] for r in rec.result])
        workers += [(s["worker"], s["tool"], pid) for s in starts(sup, pid)]
    # Each process counts from 1 in each of its tools: no state crossed anything.
    assert results == [[1, 1, 2]] * 3
    # Six (process, tool) pairs, six distinct workers; most were pooled ones.
    assert len(workers) == 6 and len({w for w, _, _ in workers}) == 6
    assert sum(1 for s in starts(sup) if s.get("pooled")) >= 2


@pytest.mark.deno
@pytest.mark.privileged
def test_a_second_load_ends_the_worker(sup: Supervisor, make_image: MakeImage) -> None:
    img = tool_image(make_image, "reload", COUNTER, caps=["jit:*:*", "event:wait:go"])
    (img / "agent.py").write_text(textwrap.dedent("""
        from agentlibos.errors import LibOSError
        def main(ctx, args):
            first = ctx.tools.call("t", {})
            ctx.events.wait("go")
            try:
                return [first, ctx.tools.call("t", {})]
            except LibOSError as e:
                return [first, type(e).__name__]
    """))
    fill(sup)
    pid = sup.submit_run(str(img), {})
    key = (pid, "t")
    assert sup.run_until(lambda: key in sup.jit.workers
                         and sup.jit.workers[key].calls == 1
                         and sup.jit.workers[key].state == "ready", 60)
    w = sup.jit.workers[key]
    assert w.from_pool
    # Another tool's text sent down the same pipe: the runner refuses to serve it.
    sup.jit._send(w, {"op": "load", "source": "export default () => 'other';"})
    assert sup.run_until(lambda: w.wid not in sup.jit.by_wid, 10)
    go(sup, pid)
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    out = sup.store.get_process(pid).result
    # The next call started a fresh worker (its counter starts at 1 again).
    assert out == [{"calls": 1, "pid": 1}, {"calls": 1, "pid": 1}]


@pytest.mark.deno
@pytest.mark.privileged
def test_a_tool_that_imports_a_file_beside_it_takes_the_cold_path(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fill(sup)
    img = tool_image(make_image, "importer", """
        import { base } from "./lib.ts";
        export default function (args: { n: number }, libos: Libos): number {
          return base + args.n;
        }
    """, files={"tools/lib.ts": "export const base: number = 40;\n"})
    assert call_tool(sup, img, [{"n": 2}]) == [{"ok": True, "value": 42}]
    assert "pooled" not in starts(sup)[-1]


@pytest.mark.deno
@pytest.mark.privileged
def test_a_registered_tool_takes_a_pooled_worker(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("registrar", """
def main(ctx, args):
    ctx.jit.register("adder", args["source"])
    return ctx.tools.call("adder", {"a": 2, "b": 40})
""", caps=["jit:register:adder", "jit:invoke:adder"])
    fill(sup)
    pid = sup.submit_run(str(img), {"source": textwrap.dedent("""
        export default function (args: { a: number; b: number }, libos: Libos): number {
          return args.a + args.b;
        }
    """)})
    assert sup.run_until(lambda: not sup.tree_live(pid), 90)
    assert sup.store.get_process(pid).result == 42
    assert starts(sup, pid)[-1].get("pooled") is True


@pytest.mark.deno
@pytest.mark.privileged
def test_without_a_pool_every_first_call_starts_cold(
    sup: Supervisor, make_image: MakeImage
) -> None:
    sup.jit.pool_size = 0
    img = tool_image(make_image, "cold", COUNTER)
    assert [o["value"]["calls"] for o in call_tool(sup, img, [{}, {}])] == [1, 2]
    assert not sup.jit.pool and "pooled" not in starts(sup)[-1]


@pytest.mark.deno
@pytest.mark.privileged
def test_the_pool_is_emptied_when_no_tool_was_used_for_the_idle_time(
    sup: Supervisor
) -> None:
    fill(sup)
    hosts = {w.host_pid for w in sup.jit.pool}
    sup.jit._last_use -= sup.sandbox.config.tool_idle_s + 1
    sup.jit.reap_idle()
    assert sup.run_until(lambda: not sup.jit.pool and not sup.jit.by_wid, 10)
    assert not hosts & {p.pid for p in deno_processes()}
    assert sup.jit._refill is None and not sup.jit.pool_active


@pytest.mark.deno
@pytest.mark.privileged
def test_a_worker_that_cannot_be_moved_is_ended_and_the_call_starts_cold(
    sup: Supervisor, make_image: MakeImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(sup)
    taken = {w.wid for w in sup.jit.pool}

    def refuse(wid: int, owner_pid: int) -> Any:
        raise SandboxError("cgroups: refused by the test")

    monkeypatch.setattr(sup.sandbox, "tool_cgroup", refuse)
    img = tool_image(make_image, "unmovable", COUNTER)
    assert [o["value"]["calls"] for o in call_tool(sup, img, [{}, {}])] == [1, 2]
    first, second = starts(sup)[-2:]
    assert first.get("pooled") is True and -first["worker"] in taken
    assert "pooled" not in second  # the cold worker that served both calls
    assert sup.run_until(lambda: -first["worker"] not in sup.jit.by_wid, 10)  # ended
    # Counted: a host that refuses every move stops refilling the pool after a few.
    assert sup.jit._move_failures == 1


@pytest.mark.deno
@pytest.mark.privileged
def test_a_tool_that_throws_while_loading_fails_its_first_call_with_the_reason(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fill(sup)
    img = tool_image(make_image, "throws-at-load", """
        if (Math.random() >= 0) throw new RangeError("boom at load");
        export default function (args: Record<string, never>, libos: Libos): number {
          return 1;
        }
    """)
    (out,) = call_tool(sup, img, [{}])
    assert (out["ok"], out["type"]) == (False, "ToolError")
    assert "did not load" in out["message"] and "boom at load" in out["message"]
    assert starts(sup)[-1].get("pooled") is True
