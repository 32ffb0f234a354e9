"""Soak: 20 deterministic agents doing mixed syscalls in a loop while the daemon is
killed with SIGKILL ten times at random moments and started again each time. Every
agent must end with the result a crash-free run gives, every acknowledged write must
be there exactly once, and the audit chain must verify (docs/durability.md)."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest

from agentlibos.config import Paths
from agentlibos.launcher import start_on_daemon
from agentlibos.store import SQLiteStore
from tests.durable_helpers import audit_verifies, journal_consistent, kill9
from tests.helpers import MakeImage, start_daemon, stop_process

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

AGENTS = 20
ITERATIONS = 60
KILLS = 10

# Deterministic: the same syscall answers give the same calls and the same result.
SOAKER = """
def main(ctx, args):
    me, n = args["i"], args["n"]
    total = 0
    for k in range(n):
        ctx.obj.put("progress", {"k": k, "total": total})
        total += ctx.obj.get("progress")["k"]
        ctx.fs.write_text("state.txt", f"{me}:{k}")
        if k % 5 == 0:
            ctx.events.post(f"tick-{me}", {"k": k})
        if k % 4 == 0:  # long enough a run that most of the ten kills find it running
            ctx.clock.sleep(0.25)
        assert ctx.clock.now() > 0
    return {"i": me, "total": total, "file": ctx.fs.read_text("state.txt")}
"""


def expected(i: int) -> dict[str, object]:
    return {"i": i, "total": sum(range(ITERATIONS)), "file": f"{i}:{ITERATIONS - 1}"}


def test_twenty_agents_survive_ten_kill_9s_with_the_results_of_a_crash_free_run(
    home: Path, make_image: MakeImage
) -> None:
    image = make_image("soaker", SOAKER, caps=[
        "fs:rw:./**", "event:post:tick-*", "clock:sleep:*"])
    paths = Paths(home)
    rng = random.Random(13)  # when to kill: not a secret
    daemon = start_daemon(home)
    try:
        pids = []
        for i in range(AGENTS):
            started = start_on_daemon(paths, str(image), {"i": i, "n": ITERATIONS},
                                      cwd=None, policy=None)
            assert started is not None
            pids.append(started[0])
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.5))
            kill9(daemon)
            daemon = start_daemon(home)
        store = SQLiteStore(paths.db)
        try:
            deadline = time.monotonic() + 90
            while any(store.get_process(p).ended_at is None for p in pids):
                assert time.monotonic() < deadline, "not all agents ended"
                time.sleep(0.2)
            recs = [store.get_process(p) for p in pids]
        finally:
            store.close()
    finally:
        stop_process(daemon, 20)

    for i, rec in enumerate(recs):
        assert (rec.state, rec.exit_reason) == ("exited", "returned"), (rec.pid, rec.error)
        assert rec.result == expected(i)
        # Each acknowledged write is there, and no store effect was done twice.
        assert (home / f"work/{rec.pid}/state.txt").read_text() == f"{i}:{ITERATIONS - 1}"
    store = SQLiteStore(paths.db)
    try:
        for rec in recs:
            progress = store.get_object(f"proc/{rec.pid}", "progress")
            assert progress.version == ITERATIONS
            assert progress.value["k"] == ITERATIONS - 1
    finally:
        store.close()
    db = sqlite3.connect(paths.db)
    try:
        posts = dict(db.execute("SELECT name, COUNT(*) FROM events GROUP BY name"))
        resumed = db.execute("SELECT COUNT(DISTINCT pid), COUNT(*) FROM audit"
                             " WHERE call = 'proc.resume'").fetchone()
    finally:
        db.close()
    # The kills came while the agents ran: every one was resumed, most several times.
    assert resumed[0] == AGENTS and resumed[1] >= 2 * AGENTS, resumed
    assert posts == {f"tick-{i}": len(range(0, ITERATIONS, 5)) for i in range(AGENTS)}
    for rec in recs:
        journal_consistent(home, rec.pid)
    audit_verifies(home)
