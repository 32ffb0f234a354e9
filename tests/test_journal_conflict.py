"""A journal entry whose place is already taken (a supervisor bug, or the database edited
under a running daemon) ends only the process it belongs to, ``diverged``; the turn's
other entries are written and the daemon goes on serving everyone else.

Before, the Conflict raised in the turn's commit stopped the supervisor and with it every
process it ran.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from agentlibos.config import Paths
from agentlibos.errors import Conflict
from agentlibos.kernel.journal import JournalEntry, args_digest
from agentlibos.store import SQLiteStore
from tests.durable_helpers import ALLOW_ALL, audit_verifies, cli, ps, wait_until
from tests.helpers import MakeImage, start_daemon, stop_process


def entry(seq: int, *, pid: int = 1, call: str = "obj.put") -> JournalEntry:
    return JournalEntry(pid, seq, call, args_digest(call, {"k": seq}), "ok", "{}")


def seqs(store: SQLiteStore, pid: int) -> list[tuple[int, str]]:
    return [(e.seq, e.call) for e in store.journal_entries(pid)]


def test_without_a_hook_the_conflict_names_the_taken_entry_and_writes_nothing(
    store: SQLiteStore,
) -> None:
    store.journal_append(entry(3, call="fs.read"))
    with pytest.raises(Conflict, match=r"already has journal entry 3 \(fs.read\); "
                                       r"cannot record obj.put there") as e:
        store.journal_append_many([entry(1), entry(2), entry(3), entry(4)])
    # Named by the one that was taken -- not entry 1, which the failed batch had written
    # a moment before -- and the batch is undone whole.
    assert e.value.details == {"pid": 1, "seq": 3}
    assert seqs(store, 1) == [(3, "fs.read")]


def test_with_a_hook_the_rest_of_the_batch_is_written_and_the_taken_are_reported(
    store: SQLiteStore,
) -> None:
    store.journal_append(entry(2, call="fs.read"))
    told: list[tuple[int, int, str, str]] = []
    store.on_journal_conflict = lambda cs: told.extend(
        (e.pid, e.seq, e.call, held) for e, held in cs)
    store.journal_append_many([entry(1), entry(2), entry(3), entry(1, pid=2)])
    assert told == [(1, 2, "obj.put", "fs.read")]
    assert seqs(store, 1) == [(1, "obj.put"), (2, "fs.read"), (3, "obj.put")]
    assert seqs(store, 2) == [(1, "obj.put")]


WAITS_THEN_WRITES = """
def main(ctx, args):
    got = ctx.events.wait("go")
    ctx.obj.put("after", got)
    return got
"""

HELLO = """
def main(ctx, args):
    ctx.obj.put("x", args.get("n", 0))
    return "hello"
"""


@pytest.fixture
def daemon(home: Path) -> Iterator[subprocess.Popen[str]]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy.toml").write_text(ALLOW_ALL)
    proc = start_daemon(home)
    try:
        yield proc
    finally:
        stop_process(proc, 20)


@pytest.mark.privileged
def test_a_journal_conflict_ends_only_its_process_and_the_daemon_serves_on(
    home: Path, make_image: MakeImage, daemon: subprocess.Popen[str]
) -> None:
    waiter = make_image("waiter", WAITS_THEN_WRITES, caps=["event:wait:go", "obj:rw:self"])
    hello = make_image("hello", HELLO, caps=["obj:rw:self"])
    started = cli(home, "run", "--detach", "--json", str(waiter))
    assert started.returncode == 0, started.stderr
    pid = int(json.loads(started.stdout)["pid"])
    wait_until(lambda: ps(home)[pid]["state"] == "waiting", 30, "the agent waiting")

    # Take the places of the agent's next calls, as a bug or an edit of the database
    # under the daemon would. Its wait's own entry (an intent) is already written.
    db = Paths(home).db
    with closing(sqlite3.connect(db, timeout=30)) as con, con:
        (last,) = con.execute("SELECT MAX(seq) FROM journal WHERE pid = ?", (pid,)).fetchone()
        con.executemany(
            "INSERT INTO journal (pid, seq, call, digest, status, result, created_at,"
            " settled_at) VALUES (?, ?, 'fs.read', 'x', 'ok', '{}', 0, 0)",
            [(pid, last + i) for i in (1, 2, 3)])

    post = cli(home, "event", "post", "go", "--data", "5")
    assert post.returncode == 0, post.stderr
    wait_until(lambda: ps(home)[pid]["state"] not in ("running", "waiting"), 30,
               "the agent ended")
    row = ps(home)[pid]
    assert (row["state"], row["exit_reason"]) == ("failed", "diverged"), row
    assert f"already holds entry {last + 1} (fs.read)" in (row["error"] or ""), row

    # The daemon is alive and runs the next agent to its end.
    assert daemon.poll() is None
    done = cli(home, "run", "--json", str(hello), "--arg", "n=1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "hello"
    audit = json.loads(cli(home, "audit", "--pid", str(pid), "--json").stdout)
    assert any(r["call"] == "proc.diverged" for r in audit), audit
    audit_verifies(home)
