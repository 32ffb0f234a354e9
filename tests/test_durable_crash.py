"""A supervisor killed at each crash barrier, for each kind of effect: real daemons, real
agents, exits as abrupt as kill -9 (``AGENTLIBOS_CRASH_AT``: ``os._exit`` at the barrier),
then a plain ``agentlibos serve`` that settles what was left (docs/durability.md).

What is asserted is seen from the host: the files on disk, the lines appended, the
marker lines a shell wrote, the requests a loopback server counted, the store's objects
and journal, and ``agentlibos audit --verify``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.durable_helpers import (
    ALLOW_ALL,
    CountingServer,
    audit_verifies,
    cli,
    counting_server,
    detach_into_crash,
    journal_consistent,
    object_version,
    ps,
    wait_until,
)
from tests.helpers import MakeImage, start_daemon, stop_process

pytestmark = [pytest.mark.privileged]

# Each effect kind, done once between an acknowledged write before it and one after it.
# "before" (obj.put, a store effect) is acknowledged before the crash: present once after.
AGENT = """
def main(ctx, args):
    kind, url = args["kind"], args["url"]
    ctx.obj.put("before", {"kind": kind})
    if kind == "write":
        ctx.fs.write_text("out.txt", "whole")
    elif kind == "append":
        ctx.fs.write_text("out.txt", "line\\n", append=True)
    elif kind == "shell":
        r = ctx.shell.run(["sh", "-c", "echo x >> marker"])
        assert r["exit_code"] == 0, r
    elif kind in ("get", "post"):
        r = ctx.net.fetch(url, method=kind.upper(), body=None if kind == "get" else "b")
        assert r["status"] == 200, r
    elif kind == "obj":
        ctx.obj.put("thing", {"v": 1})
    ctx.fs.write_text("done.txt", kind)
    return {"kind": kind, "now": ctx.clock.now() > 0}
"""

# (kind, the call the barrier is armed for, its effect kind)
KINDS = [
    ("write", "fs.write", "redo"),
    ("append", "fs.write", "once"),
    ("shell", "shell.exec", "once"),
    ("get", "net.fetch", "redo"),
    ("post", "net.fetch", "once"),
    ("obj", "fs.write", "store"),  # a store effect has no barrier: crash at the next one
]
BARRIERS = ["before-effect", "after-effect", "after-commit"]


@pytest.fixture(scope="module")
def http() -> Iterator[CountingServer]:
    yield from counting_server()


@pytest.fixture
def agent_image(make_image: MakeImage, http: CountingServer) -> Path:
    return make_image("crashy", AGENT, caps=[
        "fs:rw:./**", "shell:exec:sh", f"net:fetch:{http.base}/**"])


def _effects(proj: Path, http: CountingServer, kind: str, path: str) -> int:
    """How many times the effect of ``kind`` happened, as the host sees it."""
    if kind in ("append", "shell"):
        f = proj / ("out.txt" if kind == "append" else "marker")
        return len(f.read_text().splitlines()) if f.exists() else 0
    if kind in ("get", "post"):
        return http.hits[(kind.upper(), path)]
    if kind == "write":
        return int((proj / "out.txt").exists())
    return 1


@pytest.mark.parametrize("barrier", BARRIERS)
@pytest.mark.parametrize(("kind", "call", "effect"), KINDS, ids=[k[0] for k in KINDS])
def test_a_crash_at_each_barrier_never_repeats_an_effect_and_loses_no_acknowledged_write(
    home: Path, tmp_path: Path, agent_image: Path, http: CountingServer,
    kind: str, call: str, effect: str, barrier: str,
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    policy = tmp_path / "allow.toml"
    policy.write_text(ALLOW_ALL)
    path = f"/{barrier}/{kind}"
    crashing = start_daemon(home, AGENTLIBOS_CRASH_AT=f"{barrier}:{call}")
    try:
        pid = detach_into_crash(home, crashing, str(agent_image), "--cwd", str(proj),
                                "--policy", str(policy), "--arg", f"kind={kind}",
                                "--arg", f"url={http.base}{path}", timeout_s=30)
    finally:
        stop_process(crashing, 5)

    done_before = _effects(proj, http, kind, path)
    # The barrier is after the effect acted, or before it did.
    acted = barrier != "before-effect" or effect == "store"
    assert done_before == (1 if acted else 0), (kind, barrier, done_before)
    # For "obj" the barrier is done.txt's own write, which may have acted.
    assert (proj / "done.txt").exists() == (kind == "obj" and acted and
                                            barrier != "before-effect")

    daemon = start_daemon(home)
    try:
        attention = effect == "once" and barrier != "after-commit"
        if attention:
            # It may or may not have happened, and it must not happen twice: the operator
            # decides. Nothing was redone; the process holds no host process.
            wait_until(lambda: ps(home)[pid]["state"] == "attention", 20, "attention")
            row = ps(home)[pid]
            assert row["attention"]["call"] == call, row
            # What it was about to do, in the capability syntax the approval queue uses.
            assert row["attention"]["request"] == {
                "append": f"fs:write:{proj}/out.txt", "shell": "shell:exec:sh",
                "post": f"net:fetch:{http.base}{path}"}[kind], row
            assert row["host_pid"] is None
            assert _effects(proj, http, kind, path) == done_before
            assert not (proj / "done.txt").exists()
        else:
            w = cli(home, "wait", str(pid), "--json", timeout=60)
            out: dict[str, Any] = json.loads(w.stdout)
            assert (out["state"], out["exit_reason"]) == ("exited", "returned"), (
                out, cli(home, "logs", str(pid)).stdout, cli(home, "audit").stdout)
            assert out["result"] == {"kind": kind, "now": True}
            assert (proj / "done.txt").read_text() == kind
            # An idempotent effect interrupted before its result was committed is done
            # again (a GET is sent twice after-effect); every other one exactly once.
            twice = effect == "redo" and barrier == "after-effect" and kind == "get"
            assert _effects(proj, http, kind, path) == (2 if twice else 1)
            if kind == "write":
                assert (proj / "out.txt").read_text() == "whole"
    finally:
        stop_process(daemon, 20)

    # The store effect acknowledged before the crash is there, once (not put again by
    # the replay).
    assert object_version(home, f"proc/{pid}", "before") == 1
    if kind == "obj":
        assert object_version(home, f"proc/{pid}", "thing") == 1
    if attention:
        journal_consistent(home, pid, unsettled=int(ps(home)[pid]["attention"]["seq"]))
    else:
        journal_consistent(home, pid)
    audit_verifies(home)


TOOL_AGENT = """
def main(ctx, args):
    if args["tool"] == "jit":
        return ctx.tools.call("double", {"n": 21})
    return ctx.tools.call("put", {"name": "x", "value": 1})
"""

DOUBLE = """
export default function (args: { n: number }, libos: Libos): number {
  return args.n * 2;
}
"""


@pytest.mark.deno
@pytest.mark.parametrize("tool", ["jit", "builtin"])
def test_a_crash_before_a_tool_acts_replays_a_jit_tool_and_stops_on_a_builtin(
    home: Path, tmp_path: Path, make_image: MakeImage, tool: str,
) -> None:
    """A JIT tool can act only by asking the broker, in later turns, after the commit
    that carries its call's intent: a crash before that commit loses nothing it did, so
    the call is made again. A builtin tool acts inside the call: its intent is on disk
    first, and a crash leaves it for the operator (attention)."""
    img = make_image("tooly", TOOL_AGENT, caps=["jit:*:*", "obj:rw:x"],
                     tools={"double": "jit:tools/double.ts", "put": "builtin:obj.put"},
                     files={"tools/double.ts": DOUBLE})
    policy = tmp_path / "allow.toml"
    policy.write_text(ALLOW_ALL.replace('"human:*:*"]', '"human:*:*", "jit:*:*"]'))
    crashing = start_daemon(home, AGENTLIBOS_CRASH_AT="before-effect:tool.call")
    try:
        pid = detach_into_crash(home, crashing, str(img), "--policy", str(policy),
                                "--arg", f"tool={tool}")
    finally:
        stop_process(crashing, 5)
    daemon = start_daemon(home)
    try:
        if tool == "jit":
            w = cli(home, "wait", str(pid), "--json", timeout=90)
            out: dict[str, Any] = json.loads(w.stdout)
            assert (out["state"], out["exit_reason"], out["result"]) == (
                "exited", "returned", 42), (out, cli(home, "logs", str(pid)).stdout)
            journal_consistent(home, pid)
        else:
            wait_until(lambda: ps(home)[pid]["state"] == "attention", 30, "attention")
            row = ps(home)[pid]
            assert row["attention"]["call"] == "tool.call", row
            assert row["attention"]["request"].startswith("jit:invoke:"), row
    finally:
        stop_process(daemon, 20)
    audit_verifies(home)
