"""Eviction: a process that waits longer than ``[durable] evict_after`` holds no host
process, and comes back by replay when its wait ends -- an event, a sleep, an approval,
a human's answer, a child's end -- also when the daemon was killed meanwhile
(docs/durability.md). Real daemons and agents; the host is asked what runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentlibos.config import Paths
from agentlibos.launcher import start_on_daemon
from agentlibos.store import SQLiteStore
from agentlibos.zygote.child import POOL_TITLE
from agentlibos.zygote.forker import FORKER_TITLE
from tests.durable_helpers import (
    audit_verifies,
    cli,
    journal_consistent,
    kill9,
    ps,
    wait_until,
)
from tests.helpers import MakeImage, start_daemon, stop_process

pytestmark = [pytest.mark.privileged]

# How many agents wait on one event in the test; `scripts/bench-durable` runs 1,000
# (docs/benchmarks.md), which takes minutes of sandbox starts on a 2-core runner.
N_WAITERS = 200

WAITER = """
def main(ctx, args):
    return {"i": args["i"], "payload": ctx.events.wait("go")}
"""

ASKING_POLICY = ('ask = ["fs:write:./asked.txt"]\n'
                 'allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", "clock:*:*", '
                 '"human:*:*"]\ndefault = "deny"\n')

# One agent per kind of wait; each returns what its wait gave it.
WAITS = """
def main(ctx, args):
    kind = args["kind"]
    t0 = ctx.clock.now()
    if kind == "event":
        got = ctx.events.wait("go")
    elif kind == "sleep":
        ctx.clock.sleep(args["seconds"])
        got = ctx.clock.now() - t0
    elif kind == "approval":
        ctx.fs.write_text("asked.txt", "approved")
        got = ctx.fs.read_text("asked.txt")
    elif kind == "human":
        got = ctx.human.ask("colour?", choices=["red", "blue"])
    else:
        child = ctx.proc.spawn("evchild", args={}, caps=["event:wait:child-go"])
        got = ctx.proc.wait(child)["result"]
    return {"kind": kind, "got": got, "t0": t0}
"""

CHILD = """
def main(ctx, args):
    return {"child": ctx.events.wait("child-go")}
"""


@pytest.fixture
def evicting_home(home: Path) -> Path:
    (home / "config.toml").write_text('[durable]\nevict_after = "1s"\n')
    return home


@pytest.fixture
def daemon(evicting_home: Path) -> Iterator[subprocess.Popen[str]]:
    proc = start_daemon(evicting_home)
    try:
        yield proc
    finally:
        stop_process(proc, 20)


def agent_descendants(daemon: subprocess.Popen[str]) -> int:
    """Host processes under the daemon other than the zygote and its helpers (the
    zygote is the daemon's child; agents are the zygote's), and other than the warm
    pool's processes, which wait for an agent and have never run one, and their
    forker."""
    kids = psutil.Process(daemon.pid).children(recursive=True)

    def counts(k: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return (k.status() != psutil.STATUS_ZOMBIE
                    and k.name() not in (POOL_TITLE, FORKER_TITLE))
        return False

    return sum(1 for k in kids if counts(k)) - len(psutil.Process(daemon.pid).children())


def test_many_agents_waiting_on_one_event_are_evicted_and_one_post_wakes_them_all(
    evicting_home: Path, make_image: MakeImage, daemon: subprocess.Popen[str]
) -> None:
    home = evicting_home
    image = make_image("waiter", WAITER, caps=["event:wait:go"])
    paths = Paths(home)
    pids = []
    for i in range(N_WAITERS):
        started = start_on_daemon(paths, str(image), {"i": i}, cwd=None, policy=None)
        assert started is not None
        pids.append(started[0])

    store = SQLiteStore(paths.db)  # polled directly: a `ps` a tick would slow the daemon
    try:
        def states() -> set[tuple[str, bool]]:
            return {(r.state, r.evicted) for r in (store.get_process(p) for p in pids)}

        wait_until(lambda: states() == {("waiting", True)}, 120, "every waiter evicted")
        rows = ps(home)
        assert {(rows[p]["state"], rows[p]["wait"], rows[p]["host_pid"]) for p in pids} == {
            ("waiting", "event:go", None)}
        # No agent holds a host process: only the zygote's own are left.
        wait_until(lambda: agent_descendants(daemon) <= 2, 20, "the agents' processes gone")

        post = cli(home, "event", "post", "go", "--data", '{"n": 7}')
        assert post.returncode == 0, post.stderr
        assert f"{N_WAITERS} waiters woken" in post.stdout + post.stderr
        wait_until(lambda: {s for s, _ in states()} == {"exited"}, 120, "every waiter done")
        recs = [store.get_process(p) for p in pids]
    finally:
        store.close()
    assert {r.exit_reason for r in recs} == {"returned"}
    assert sorted(r.result["i"] for r in recs) == list(range(N_WAITERS))
    assert all(r.result["payload"] == {"n": 7} for r in recs)
    audit_verifies(home)


def evicted(home: Path, pid: int) -> None:
    """Wait until ``pid`` is evicted; fail at once, with its log, if it ended instead."""
    def check() -> bool:
        row = ps(home)[pid]
        assert row["state"] in ("running", "waiting"), (
            json.dumps(ps(home)), cli(home, "logs", str(pid)).stdout)
        return bool(row["evicted"])

    wait_until(check, 30, "evicted")


def _answer(home: Path, kind: str, pid: int) -> None:
    """End ``kind``'s wait from outside, as the operator or the world would."""
    if kind == "event":
        r = cli(home, "event", "post", "go", "--data", '"hello"')
    elif kind == "child":
        r = cli(home, "event", "post", "child-go", "--data", '"hi"')
    elif kind in ("approval", "human"):
        queue = json.loads(cli(home, "approvals", "--json").stdout)
        ask = next(a for a in queue if a["pid"] == pid)
        r = (cli(home, "approve", str(ask["id"])) if kind == "approval"
             else cli(home, "answer", str(ask["id"]), "blue"))
    else:
        return  # a sleep ends by itself
    assert r.returncode == 0, r.stdout + r.stderr


EXPECTED: dict[str, Any] = {"event": "hello", "approval": "approved", "human": "blue",
                            "child": {"child": "hi"}}
SLEEP_S = 4.0


@pytest.mark.parametrize("restart", [False, True], ids=["same-daemon", "kill-9-between"])
@pytest.mark.parametrize("kind", ["event", "sleep", "approval", "human", "child"])
def test_each_kind_of_wait_ends_while_evicted_and_the_process_comes_back_for_it(
    evicting_home: Path, tmp_path: Path, make_image: MakeImage, kind: str, restart: bool,
) -> None:
    home = evicting_home
    image = make_image("waits", WAITS, caps=[
        "event:wait:go", "event:wait:child-go", "clock:sleep:*", "fs:rw:./**", "human:ask:*",
        "proc:spawn:*", "proc:wait:*"])
    make_image("evchild", CHILD, caps=["event:wait:child-go"])
    policy = tmp_path / "asking.toml"
    policy.write_text(ASKING_POLICY)
    # A restart takes seconds on a loaded host: the sleep must outlast it, or it ends
    # (correctly) before the test looks for it waiting.
    sleep_s = SLEEP_S * (2 if restart else 1)
    daemon = start_daemon(home)
    try:
        r = cli(home, "run", "--detach", "--ask", "queue", "--policy", str(policy),
                str(image), "--arg", f"kind={kind}", "--arg", f"seconds={sleep_s}")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        t_run = time.time()
        evicted(home, pid)
        row = ps(home)[pid]
        assert (row["state"], row["host_pid"]) == ("waiting", None), row
        assert row["wait"].startswith({"event": "event:", "sleep": "sleep:",
                                       "approval": "approval:", "human": "human:",
                                       "child": "proc:"}[kind]), row
        if restart:
            kill9(daemon)
            daemon = start_daemon(home)
            # The wait is armed again, and the process holds no host process (an approval
            # wait is resumed and evicted again: see docs/durability.md).
            evicted(home, pid)
            row = ps(home)[pid]
            assert (row["state"], row["host_pid"]) == ("waiting", None), row
        _answer(home, kind, pid)
        w = cli(home, "wait", str(pid), "--json", timeout=60)
        out = json.loads(w.stdout)
        assert out["exit_reason"] == "returned", (out, cli(home, "logs", str(pid)).stdout)
        if kind == "sleep":
            # On time: not before its deadline, and not much after it.
            assert sleep_s <= out["result"]["got"] < sleep_s + 3, out
            assert time.time() - t_run < sleep_s + 6
        else:
            assert out["result"]["got"] == EXPECTED[kind], out
    finally:
        stop_process(daemon, 20)
    journal_consistent(home, pid)
    audit_verifies(home)


@pytest.mark.parametrize("always", [False, True], ids=["once", "always"])
def test_a_question_whose_approval_came_while_evicted_is_asked_once_and_answered(
    evicting_home: Path, tmp_path: Path, make_image: MakeImage, always: bool,
) -> None:
    """`human.ask` itself needs an approval here (as under the built-in policy): approved
    while its process is evicted, the call must run once, when the process is back --
    one question, no second approval, and the answer wakes it."""
    home = evicting_home
    image = make_image("waits", WAITS, caps=["human:ask:*"])
    policy = tmp_path / "ask-to-ask.toml"
    policy.write_text('ask = ["human:ask:*"]\nallow = ["obj:*:*"]\ndefault = "deny"\n')
    daemon = start_daemon(home)
    try:
        r = cli(home, "run", "--detach", "--ask", "queue", "--policy", str(policy),
                str(image), "--arg", "kind=human")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        evicted(home, pid)
        assert ps(home)[pid]["wait"].startswith("approval:")
        [approval] = json.loads(cli(home, "approvals", "--json").stdout)
        flags = ["--always"] if always else []
        assert cli(home, "approve", str(approval["id"]), *flags).returncode == 0

        def asked() -> list[dict[str, Any]]:
            return [a for a in json.loads(cli(home, "approvals", "--json").stdout)
                    if a["pid"] == pid]

        wait_until(lambda: [a["kind"] for a in asked()] == ["question"], 30, "the question")
        evicted(home, pid)
        row = ps(home)[pid]
        assert (row["state"], row["host_pid"]) == ("waiting", None), row
        [question] = asked()
        assert row["wait"] == f"human:{question['id']}", row
        assert cli(home, "answer", str(question["id"]), "blue").returncode == 0
        w = cli(home, "wait", str(pid), "--json", timeout=60)
        out = json.loads(w.stdout)
        assert (out["exit_reason"], out["result"]["got"]) == ("returned", "blue"), out
        everything = json.loads(cli(home, "approvals", "--all", "--json").stdout)
        assert sorted(a["kind"] for a in everything if a["pid"] == pid) == [
            "approval", "question"]
        assert daemon.poll() is None
    finally:
        stop_process(daemon, 20)
    journal_consistent(home, pid)
    audit_verifies(home)


def _asking_and_evicted(home: Path, tmp_path: Path, make_image: MakeImage
                        ) -> tuple[subprocess.Popen[str], int]:
    """A daemon, and a detached agent of it evicted while its write waits for approval."""
    image = make_image("waits", WAITS, caps=["fs:rw:./**"])
    policy = tmp_path / "asking.toml"
    policy.write_text(ASKING_POLICY)
    daemon = start_daemon(home)
    try:
        r = cli(home, "run", "--detach", "--ask", "queue", "--policy", str(policy),
                str(image), "--arg", "kind=approval")
        pid = int(r.stdout)
        evicted(home, pid)
    except BaseException:
        stop_process(daemon, 20)
        raise
    return daemon, pid


def test_an_approval_answered_while_no_supervisor_runs_is_honoured_by_the_next(
    evicting_home: Path, tmp_path: Path, make_image: MakeImage,
) -> None:
    home = evicting_home
    daemon, pid = _asking_and_evicted(home, tmp_path, make_image)
    try:
        ask = next(a for a in json.loads(cli(home, "approvals", "--json").stdout)
                   if a["pid"] == pid)
        kill9(daemon)
        # No supervisor runs: the answer is recorded in the store, and the process,
        # resumed by the next supervisor, finds its ask approved.
        approved = cli(home, "approve", str(ask["id"]))
        assert approved.returncode == 0, approved.stdout + approved.stderr
        daemon = start_daemon(home)
        out = json.loads(cli(home, "wait", str(pid), "--json", timeout=60).stdout)
        assert (out["exit_reason"], out["result"]["got"]) == ("returned", "approved"), out
    finally:
        stop_process(daemon, 20)
    audit_verifies(home)


def test_an_asks_timeout_counts_from_its_creation_across_eviction_and_a_restart(
    home: Path, tmp_path: Path, make_image: MakeImage,
) -> None:
    # A restart re-armed the whole timeout (an ask expired at 12.2 s of 8), and an ask
    # that expired while its process was evicted said "was expired: no answer in time"
    # where a live one said "approval timed out" (audit 4-b, F3).
    (home / "config.toml").write_text('[durable]\nevict_after = "1s"\n'
                                      '[approvals]\ntimeout = "4s"\n')
    daemon, pid = _asking_and_evicted(home, tmp_path, make_image)
    try:
        time.sleep(1.0)
        kill9(daemon)
        daemon = start_daemon(home)
        waited = cli(home, "wait", str(pid), "--json", timeout=60)
        assert waited.stdout, waited.stderr
        out = json.loads(waited.stdout)
        listed = cli(home, "approvals", "--all", "--json")
    finally:
        stop_process(daemon, 20)
    assert out["exit_reason"] == "error", out
    assert "was not answered: approval timed out after 4 s" in out["error"], out
    assert listed.returncode == 0, listed.stderr
    (ask,) = [a for a in json.loads(listed.stdout) if a["pid"] == pid]
    assert ask["state"] == "expired"
    assert 3.9 < ask["decided_at"] - ask["created_at"] < 5.5, ask


TIMED_WAITER = """
from agentlibos.errors import Timeout

def main(ctx, args):
    try:
        return ctx.events.wait("never", timeout=3)
    except Timeout as e:
        return {"timeout": str(e)}
"""


def test_an_event_wait_that_times_out_after_a_restart_names_the_timeout_it_was_given(
    evicting_home: Path, make_image: MakeImage
) -> None:
    # Re-armed by the next daemon, the wait has only what is left of its 3 s; its error
    # still names the 3 s the agent asked for, not the remainder.
    home = evicting_home
    img = make_image("timedwaiter", TIMED_WAITER, caps=["event:wait:never"])
    first = start_daemon(home)
    try:
        pid = int(cli(home, "run", str(img), "--detach").stdout)
        evicted(home, pid)
    finally:
        stop_process(first, 20)
    second = start_daemon(home)
    try:
        rec = json.loads(cli(home, "wait", str(pid), "--json").stdout)
    finally:
        stop_process(second, 20)
    assert rec["result"] == {"timeout": "event.wait: no post of 'never' within 3 s"}, rec
