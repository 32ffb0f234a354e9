"""The SQL of waiting: the human queue (asks) and events. Mixed into SQLiteStore.

Kept beside ``sqlite.py`` rather than in it so each module holds one family of tables;
like every statement of the runtime, it lives in ``store/``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

from agentlibos.errors import Conflict, NotFound
from agentlibos.kernel.approvals import AskRecord, EventRecord
from agentlibos.kernel.journal import parse_intent

_ASK_COLS: Final = ("id, kind, pid, root_pid, image, call, request, question, choices, topic, "
                    "digest, summary, state, always, answer, reason, created_at, decided_at")


def _ask(row: tuple[Any, ...]) -> AskRecord:
    (id_, kind, pid, root_pid, image, call, request, question, choices, topic, digest,
     summary, state, always, answer, reason, created_at, decided_at) = row
    return AskRecord(id=id_, kind=kind, pid=pid, root_pid=root_pid, image=image, call=call,
                     request=request, question=question,
                     choices=None if choices is None else json.loads(choices), topic=topic,
                     digest=digest, summary=summary, state=state, always=bool(always),
                     answer=answer, reason=reason, created_at=created_at,
                     decided_at=decided_at)


class WaitingTables:
    """Methods SQLiteStore gains for asks and events (it provides the members below)."""

    _db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by SQLiteStore
        def transaction(self) -> AbstractContextManager[None]: ...
        def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor: ...

    # ------------------------------------------------------------------------- asks

    def ask_create(self, rec: AskRecord) -> AskRecord:
        cur = self._write(
            "INSERT INTO asks (kind, pid, root_pid, image, call, request, question, choices, "
            "topic, digest, summary, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (rec.kind, rec.pid, rec.root_pid, rec.image, rec.call, rec.request, rec.question,
             None if rec.choices is None else json.dumps(rec.choices), rec.topic, rec.digest,
             rec.summary, rec.created_at or time.time()))
        assert cur.lastrowid is not None
        return self.ask_get(cur.lastrowid)

    def ask_get(self, ask_id: int) -> AskRecord:
        row = self._db.execute(f"SELECT {_ASK_COLS} FROM asks WHERE id = ?",  # noqa: S608
                               (ask_id,)).fetchone()
        if row is None:
            raise NotFound(f"no approval or question with id {ask_id}")
        return _ask(row)

    def ask_list(self, *, pending_only: bool = True, limit: int = 100_000) -> list[AskRecord]:
        where = " WHERE state = 'pending'" if pending_only else ""
        rows = self._db.execute(
            f"SELECT {_ASK_COLS} FROM asks{where} ORDER BY id LIMIT ?",  # noqa: S608
            (limit,)).fetchall()
        return [_ask(r) for r in rows]

    def ask_decide(self, ask_id: int, state: str, *, answer: str | None = None,
                   reason: str | None = None, always: bool = False) -> AskRecord:
        """pending -> ``state``, once: a second decision is a Conflict naming the first."""
        with self.transaction():
            rec = self.ask_get(ask_id)
            if rec.state != "pending":
                raise Conflict(f"{rec.kind} {ask_id} is already {rec.state}"
                               + (f" ({rec.reason})" if rec.reason else ""))
            self._write("UPDATE asks SET state = ?, answer = ?, reason = ?, always = ?, "
                        "decided_at = ? WHERE id = ?",
                        (state, answer, reason, int(always), time.time(), ask_id))
            return self.ask_get(ask_id)

    def asks_of(self, pid: int) -> Iterator[AskRecord]:
        rows = self._db.execute(
            f"SELECT {_ASK_COLS} FROM asks WHERE pid = ? ORDER BY id",  # noqa: S608
            (pid,)).fetchall()
        return (_ask(r) for r in rows)

    # ----------------------------------------------------------------------- events

    def event_append(self, name: str, payload: Any, posted_by: int | None) -> EventRecord:
        now = time.time()
        cur = self._write("INSERT INTO events (name, payload, posted_by, posted_at) "
                          "VALUES (?, ?, ?, ?)",
                          (name, json.dumps(payload), posted_by, now))
        assert cur.lastrowid is not None
        return EventRecord(id=cur.lastrowid, name=name, payload=payload,
                           posted_by=posted_by, posted_at=now)

    def event_last_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def event_after(self, name: str, after_id: int) -> EventRecord | None:
        """The first post of ``name`` after ``after_id`` (a waiter's starting point)."""
        row = self._db.execute(
            "SELECT id, name, payload, posted_by, posted_at FROM events "
            "WHERE name = ? AND id > ? ORDER BY id LIMIT 1", (name, after_id)).fetchone()
        if row is None:
            return None
        return EventRecord(id=row[0], name=row[1], payload=json.loads(row[2]),
                           posted_by=row[3], posted_at=row[4])

    def events_prune(self) -> int:
        """Remove the posts no waiter can still be given; how many went.

        A waiter in the supervisor's memory is woken by the post itself, not from this
        table: only a wait armed again from its journal (a resumed or evicted process)
        reads posts here, those after its cursor. So every post at or before the oldest
        cursor of an unsettled ``event.wait`` of a live process goes, all of them when
        none waits -- but the newest, whose id is the next waiter's cursor."""
        floor: int | None = None
        for (text,) in self._db.execute(
                "SELECT j.result FROM journal j JOIN processes p ON p.pid = j.pid "
                "WHERE j.status = 'intent' AND j.call = 'event.wait' "
                "AND p.state IN ('created', 'running', 'waiting', 'attention')"):
            state = parse_intent(text).get("state")
            after = state.get("after") if isinstance(state, dict) else None
            if not isinstance(after, int):
                return 0  # a cursor that cannot be read: keep every post
            floor = after if floor is None else min(floor, after)
        cut = self.event_last_id() - 1
        if floor is not None:
            cut = min(cut, floor)
        if cut <= 0:
            return 0
        return self._write("DELETE FROM events WHERE id <= ?", (cut,)).rowcount
