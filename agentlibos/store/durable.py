"""The SQL of durable execution: intents, journal copies, checkpoints. Mixed into
SQLiteStore (docs/durability.md).

Kept beside ``sqlite.py`` like ``waiting.py``: one family of statements per module, every
statement of the runtime in ``store/``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agentlibos.errors import Conflict, InvalidArgument, NotFound
from agentlibos.kernel.journal import JournalEntry
from agentlibos.kernel.process import INT64_MAX, LIVE_STATES

_CP_COLS: Final = "id, name, pid, seq, caps, objects, created_at"


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    name: str | None
    pid: int
    seq: int  # the journal position: replay to here, then run live
    caps: list[str]  # what the process held then
    objects: list[dict[str, Any]]  # its own namespace then: {name, type, value (JSON text)}
    created_at: float

    def public(self) -> dict[str, Any]:
        """What `checkpoint --json` prints."""
        return {"id": self.id, "name": self.name, "pid": self.pid, "seq": self.seq}


def _cp(row: tuple[Any, ...]) -> CheckpointRecord:
    id_, name, pid, seq, caps, objects, created_at = row
    return CheckpointRecord(id=id_, name=name, pid=pid, seq=seq, caps=json.loads(caps),
                            objects=json.loads(objects), created_at=created_at)


class DurableTables:
    """Methods SQLiteStore gains for durable execution (it provides the members below)."""

    _db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by SQLiteStore
        def transaction(self) -> AbstractContextManager[None]: ...
        def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor: ...
        def commit_now(self) -> None: ...
        def _journal_visible(self) -> None: ...

    # ------------------------------------------------------------------ intents

    def journal_put_intent(self, entry: JournalEntry) -> None:
        """Record (or replace) the intent at ``(pid, seq)``: a call that has not settled.

        Replacing is how a call moves between what it waits for (an approval) and what
        it is about to do (a once effect). A settled entry is never replaced."""
        self._write(
            "INSERT INTO journal (pid, seq, call, digest, status, result, created_at) "
            "VALUES (?, ?, ?, ?, 'intent', ?, ?) ON CONFLICT (pid, seq) DO UPDATE SET "
            "result = excluded.result WHERE journal.status = 'intent'",
            (entry.pid, entry.seq, entry.call, entry.digest, entry.result, time.time()))

    def journal_drop_intent(self, pid: int, seq: int) -> None:
        """Forget an unsettled intent (the call will run again: `resolve --retry`)."""
        self._write("DELETE FROM journal WHERE pid = ? AND seq = ? AND status = 'intent'",
                    (pid, seq))

    def journal_intents(self) -> list[JournalEntry]:
        """Every unsettled intent, in (pid, seq) order: what recovery settles."""
        self._journal_visible()
        rows = self._db.execute(
            "SELECT pid, seq, call, digest, status, result FROM journal "
            "WHERE status = 'intent' ORDER BY pid, seq").fetchall()
        return [JournalEntry(*r) for r in rows]

    def journal_copy(self, src_pid: int, dst_pid: int, upto_seq: int) -> int:
        """Give ``dst_pid`` the settled entries 1..``upto_seq`` of ``src_pid`` (restore)."""
        self._journal_visible()
        cur = self._write(
            "INSERT INTO journal (pid, seq, call, digest, status, result, created_at, "
            "settled_at) SELECT ?, seq, call, digest, status, result, created_at, settled_at "
            "FROM journal WHERE pid = ? AND seq <= ? AND status != 'intent'",
            (dst_pid, src_pid, upto_seq))
        return cur.rowcount

    def journal_prune(self, pid: int) -> int:
        """Delete the journal of ended process ``pid`` past its last checkpoint (a
        restore replays its source's entries up to the checkpoint; nothing else reads an
        ended process's journal). Refused for a live process. The rows deleted."""
        self._journal_visible()
        row = self._db.execute("SELECT state FROM processes WHERE pid = ?", (pid,)).fetchone()
        if row is None:
            raise NotFound(f"no process {pid}")
        if str(row[0]) in LIVE_STATES:
            raise Conflict(f"process {pid} is {row[0]}: its journal is how it resumes")
        keep = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints WHERE pid = ?",
                                (pid,)).fetchone()[0]
        cur = self._write("DELETE FROM journal WHERE pid = ? AND seq > ?", (pid, int(keep)))
        return cur.rowcount

    def journal_settled_seq(self, pid: int) -> int:
        """The last seq of ``pid`` whose whole prefix is settled (where a replay ends)."""
        self._journal_visible()
        row = self._db.execute(
            "SELECT COALESCE(MIN(seq) - 1, (SELECT COALESCE(MAX(seq), 0) FROM journal "
            "WHERE pid = ?)) FROM journal WHERE pid = ? AND status = 'intent'",
            (pid, pid)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_create(self, name: str | None, pid: int, seq: int, caps: list[str],
                          objects: list[dict[str, Any]]) -> CheckpointRecord:
        cur = self._write(
            "INSERT INTO checkpoints (name, pid, seq, caps, objects, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, pid, seq, json.dumps(caps), json.dumps(objects), time.time()))
        assert cur.lastrowid is not None
        return self.checkpoint_get(str(cur.lastrowid))

    def checkpoint_get(self, ref: str) -> CheckpointRecord:
        """By id (digits) or by name (the most recent checkpoint of that name)."""
        if ref.isascii() and ref.isdigit():
            row = None if int(ref) > INT64_MAX else self._db.execute(
                f"SELECT {_CP_COLS} FROM checkpoints WHERE id = ?",  # noqa: S608
                (int(ref),)).fetchone()
        else:
            row = self._db.execute(
                f"SELECT {_CP_COLS} FROM checkpoints WHERE name = ? "  # noqa: S608
                "ORDER BY id DESC LIMIT 1", (ref,)).fetchone()
            # Names are any process's to choose: where another process's checkpoint has
            # the same name, a name alone would restore whichever came last -- maybe an
            # agent's, planted to be restored in the operator's stead.
            others = [] if row is None else self._db.execute(
                "SELECT id, pid FROM checkpoints WHERE name = ? AND pid != ? ORDER BY id",
                (ref, row[2])).fetchall()  # row: id, name, pid, ...
            if others:
                ids = ", ".join(f"{i} (process {p})" for i, p in [*others, (row[0], row[2])])
                raise InvalidArgument(f"checkpoint name {ref!r} is used by more than one process: "
                               f"give the id ({ids})")
        if row is None:
            raise NotFound(f"no checkpoint {ref!r} (give its id or its name)")
        return _cp(row)

    def checkpoint_list(self, pid: int | None = None) -> list[CheckpointRecord]:
        where, params = ("WHERE pid = ?", (pid,)) if pid is not None else ("", ())
        rows = self._db.execute(
            f"SELECT {_CP_COLS} FROM checkpoints {where} ORDER BY id",  # noqa: S608
            params).fetchall()
        return [_cp(r) for r in rows]

    def restore_object(self, ns: str, name: str, type_: str, value_json: str,
                       pid: int) -> None:
        """Put a checkpoint's object into a restored process's own namespace (version 1;
        charged to its tree like any object it writes later)."""
        now = time.time()
        root = self._db.execute("SELECT root_pid FROM processes WHERE pid = ?",
                                (pid,)).fetchone()
        self._write(
            "INSERT OR REPLACE INTO objects (ns, name, type, version, value, size, "
            "created_at, updated_at, updated_by, root_pid) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (ns, name, type_, value_json, len(value_json.encode("utf-8")), now, now, pid,
             root[0] if root else None))

    def objects_of_ns(self, ns: str) -> list[dict[str, Any]]:
        """A namespace's objects as a checkpoint keeps them."""
        rows = self._db.execute(
            "SELECT name, type, value FROM objects WHERE ns = ? ORDER BY name", (ns,)
        ).fetchall()
        return [{"name": n, "type": t, "value": v} for n, t, v in rows]

    # ------------------------------------------------------------------ resuming

    def process_resume_info(self, pid: int) -> dict[str, Any]:
        """What a resume rebuilds a process's caller from, beside its record and caps:
        its policy (source and text), ask mode and standing approvals, and the wall-clock
        seconds its host processes ran so far (``[limits] wall`` counts them all)."""
        row = self._db.execute(
            "SELECT p.ask_mode, p.approved, pol.source, pol.text, p.wall_used, p.stretch_at, "
            "(SELECT MAX(a.ts) FROM audit a WHERE a.pid = p.pid) FROM processes p "
            "JOIN policies pol ON pol.id = p.policy_id WHERE p.pid = ?", (pid,)).fetchone()
        if row is None:
            raise NotFound(f"no process with pid {pid}")
        ask_mode, approved, source, text, wall_used, stretch_at, last_audit = row
        if stretch_at is not None:  # a stretch a crash cut short: alive at least until
            wall_used += max(0.0, (last_audit or stretch_at) - stretch_at)  # its last record
        return {"ask_mode": ask_mode or "queue",
                "approved": json.loads(approved) if approved else [],
                "policy_source": source, "policy_text": text,
                "wall_used": float(wall_used)}
