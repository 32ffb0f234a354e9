"""Turns of reads defer their commit (docs/store.md, "Deferred commits").

A loop turn that wrote nothing keeps its calls' journal entries and audit records in
memory until a turn that writes, DEFER_MAX_S, or the loop going idle. These tests show
that a run of reads pays few commits, that nothing is lost or split (each entry commits
with its audit record), that a crash of the supervisor in the middle leaves a journal
without gaps that a resumed agent replays, that no lock is held meanwhile, and that
whatever reads the journal sees the deferred entries.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.kernel.journal import JournalEntry
from agentlibos.store import SQLiteStore
from agentlibos.supervisor import Supervisor
from tests.durable_helpers import (
    ALLOW_ALL,
    audit_verifies,
    cli,
    counting_commits,
    journal_consistent,
    kill9,
    wait_until,
)
from tests.helpers import MakeImage, run_proc, start_daemon, stop_process

READER = """
    def main(ctx, args):
        ctx.fs.write_text("f.txt", "x")
        call = ctx.client.call
        for _ in range(args["n"]):
            call("fs.stat", {"path": "f.txt"})
        return args["n"]
"""


def _count(db: Path, sql: str, *params: Any) -> int:
    with sqlite3.connect(db) as c:  # another connection: sees only what was committed
        return int(c.execute(sql, params).fetchone()[0])


def _commits_for(sup: Supervisor, img: Path, cwd: Path, n: int) -> tuple[int, int]:
    """(COMMIT statements while an agent made ``n`` reads, its pid)."""
    with counting_commits(sup.store) as commits:
        rec = run_proc(sup, img, {"n": n}, cwd=cwd, timeout_s=120)
    assert (rec.state, rec.result) == ("exited", n), rec.error
    return commits[0], rec.pid


def test_a_run_of_reads_commits_a_few_times_and_loses_nothing(
        sup: Supervisor, make_image: MakeImage, tmp_path: Path) -> None:
    img = make_image("reader", READER, caps=["fs:rw:./**"])
    n = 600
    deferred, pid = _commits_for(sup, img, tmp_path, n)
    # The same run with deferral off: a commit per call, which the first must beat.
    sup.journal.may_defer = None
    every, _ = _commits_for(sup, img, tmp_path, n)
    assert every >= n, every
    assert deferred <= n // 3, (deferred, every)
    # run_until returned: everything is committed, seen from another connection, each
    # call's journal entry with its audit record, the chain whole.
    db = sup.paths.db
    assert _count(db, "SELECT COUNT(*) FROM journal WHERE pid = ? AND call = 'fs.stat'",
                  pid) == n
    assert _count(db, "SELECT COUNT(*) FROM audit WHERE pid = ? AND call = 'fs.stat'",
                  pid) == n
    assert journal_consistent(sup.paths.home, pid) >= n
    assert sup.store.verify_audit().ok


def test_the_answer_to_a_write_leaves_after_the_reads_before_it_are_on_disk(
        sup: Supervisor, make_image: MakeImage, tmp_path: Path) -> None:
    """Deferred reads commit with the next write, which is answered after its commit:
    whatever an agent does after a write, its reads before it are on disk."""
    img = make_image("read-then-write", """
        def main(ctx, args):
            ctx.fs.write_text("f.txt", "x")
            for r in range(5):
                for _ in range(40):
                    ctx.client.call("fs.stat", {"path": "f.txt"})
                ctx.obj.put("round", r)
            return "ok"
    """, caps=["fs:rw:./**", "obj:rw:round"])
    seen: list[int] = []  # fs.stat entries on disk as each obj.put answer left
    send = sup.broker._send
    db = sup.paths.db

    def watched(frames: list[bytes]) -> bool:
        body = json.loads(bytes(frames[2]))
        if isinstance(body.get("result"), dict) and "version" in body["result"]:
            seen.append(_count(db, "SELECT COUNT(*) FROM journal WHERE call = 'fs.stat'"))
        return send(frames)

    sup.broker._send = watched  # type: ignore[method-assign]
    rec = run_proc(sup, img, {}, cwd=tmp_path, timeout_s=60)
    assert (rec.state, rec.result) == ("exited", "ok"), rec.error
    assert seen == [40, 80, 120, 160, 200]


def test_nothing_is_locked_while_a_commit_is_deferred(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=0)
    try:
        with store.batch():
            store.get_caps(1)  # a read
            assert not store.wrote()
            store.append_audit(1, "fs.stat", "fs:read:/x", "allow", {"reason": "r"})
            assert not store.wrote()  # audit records are buffered until the commit
            store.defer_commit()
        assert store.uncommitted()
        # Another writer gets the lock at once (timeout 0), and sees no record yet.
        other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0
        other.execute("COMMIT")
        with store.batch():
            store.set_caps(1, ["fs:read:/x"])
            assert store.wrote()
        assert not store.uncommitted()
        assert other.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1
        assert store.verify_audit().ok
    finally:
        other.close()
        store.close()


def _entry(seq: int) -> JournalEntry:
    return JournalEntry(pid=7, seq=seq, call="fs.stat", digest="d", status="ok",
                        result=json.dumps({"result": seq}))


def test_reading_the_journal_first_writes_what_deferred_turns_left(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    pending = [_entry(1), _entry(2)]

    def take() -> list[JournalEntry]:
        out = list(pending)
        pending.clear()
        return out

    store.pending_journal = take
    try:
        assert store.journal_last_seq(7) == 2
        assert [e.seq for e in store.journal_entries(7)] == [1, 2]
        pending.append(_entry(3))
        # Read by a handler whose savepoint then rolls back (a bug): the entries it
        # made visible were not its own, and survive the rollback.
        with store.batch(), pytest.raises(RuntimeError), store.savepoint():
            store.set_caps(7, ["obj:r:x"])  # the handler's own write...
            assert store.journal_settled_seq(7) == 3
            raise RuntimeError("a handler bug")
        assert [e.seq for e in store.journal_entries(7)] == [1, 2, 3]
        assert store.get_caps(7) == []  # ...rolled back
    finally:
        store.close()


def test_a_supervisor_killed_during_a_run_of_reads_leaves_a_whole_journal_and_resumes(
        home: Path, tmp_path: Path, make_image: MakeImage) -> None:
    img = make_image("long-reader", READER, caps=["fs:rw:./**"])
    proj = tmp_path / "proj"
    proj.mkdir()
    n = 4000
    daemon = start_daemon(home)
    try:
        policy = tmp_path / "allow.toml"
        policy.write_text(ALLOW_ALL)
        r = cli(home, "run", "--detach", str(img), "--cwd", str(proj), "--policy",
                str(policy), "--arg", f"n={n}")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.strip())
        db = Paths(home).db
        wait_until(lambda: _count(db, "SELECT COUNT(*) FROM journal WHERE pid = ?", pid)
                   > 300, 60, "reads journaled")
        kill9(daemon)  # in the middle of the run: some reads' records never committed
    finally:
        stop_process(daemon, 5)
    # What was committed is whole: no gap in the journal, every entry with its audit
    # record, the chain intact.
    done = journal_consistent(home, pid)
    assert _count(db, "SELECT COUNT(*) FROM journal WHERE pid = ? AND call = 'fs.stat'",
                  pid) == _count(
        db, "SELECT COUNT(*) FROM audit WHERE pid = ? AND call = 'fs.stat'", pid)
    audit_verifies(home)
    assert done < n + 3, "the agent finished before the kill: nothing was interrupted"
    # The next daemon resumes it: the journaled reads replay, the rest run live.
    daemon = start_daemon(home)
    try:
        w = cli(home, "wait", str(pid), "--json", timeout=120)
        out = json.loads(w.stdout)
        assert (out["state"], out["exit_reason"], out["result"]) == (
            "exited", "returned", n), out
    finally:
        stop_process(daemon, 20)
    assert journal_consistent(home, pid) >= n
    audit_verifies(home)
