"""Replay: a resumed process's calls answered from its journal (docs/durability.md).

A resumed process runs its entry again from the start and numbers its calls 1, 2, 3...
as before. While a call's number is within the journal's settled prefix, the call must
be the journaled one (same name, same argument digest): it gets the journaled answer and
nothing acts. A call that differs has *diverged*: the process is stopped. The first call
past the prefix runs live -- and if the journal holds a *wait intent* there (the process
was suspended when it was evicted or the supervisor died), it runs with that wait's
state so it waits on for the same thing.

A journaled answer whose blobs were too large to keep (kept by size and sha256), or that
its tree's journal_bytes kept by digest altogether (broker/journal.py), is produced again
by running the call (a read) and checking the digests: the same answer, or the process
has diverged.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentlibos.broker.syscalls import Reply
from agentlibos.errors import LibOSError, ProtocolError, Unavailable, from_wire
from agentlibos.kernel.journal import JournalEntry, args_digest, parse_intent
from agentlibos.store import Store

_CHUNK = 512


@dataclass
class _Replaying:
    upto: int  # the last settled seq: calls 1..upto are answered from the journal
    intent: JournalEntry | None  # the unsettled entry at upto + 1, if any
    cache: dict[int, JournalEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """Replay's verdict on one call."""

    kind: str  # "journaled" | "diverged" | "recheck" | "resume" | "live"
    outcome: Reply | LibOSError | None = None
    detail: str = ""
    expected_digests: tuple[str | None, ...] = ()  # "recheck": the kept blobs' sha256
    expected_result: str | None = None  # "recheck": the result's sha256, if kept by digest
    resume: dict[str, Any] | None = None  # "resume": the wait intent's state


class Replayer:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_pid: dict[int, _Replaying] = {}
        # Told (pid, seq, detail) when a process diverges; the supervisor stops it.
        self.on_diverged: Callable[[int, int, str], None] | None = None

    def begin(self, pid: int) -> int:
        """``pid`` starts again from its first call; returns how many calls replay."""
        upto = self._store.journal_settled_seq(pid)
        nxt = self._store.journal_entries(pid, after_seq=upto, limit=1)
        intent = nxt[0] if nxt and nxt[0].status == "intent" else None
        if upto or intent is not None:
            self._by_pid[pid] = _Replaying(upto, intent)
        return upto

    def replaying(self, pid: int) -> bool:
        return pid in self._by_pid

    def last(self, pid: int) -> int:
        """The last settled seq of the journal ``pid`` replays (0: not replaying): its
        runtime may skip ahead to the call after it, never past a pending intent."""
        st = self._by_pid.get(pid)
        return 0 if st is None else st.upto

    def forget(self, pid: int) -> None:
        self._by_pid.pop(pid, None)

    def _entry(self, st: _Replaying, pid: int, seq: int) -> JournalEntry | None:
        e = st.cache.pop(seq, None)
        if e is None:
            st.cache = {x.seq: x for x in self._store.journal_entries(
                pid, after_seq=seq - 1, limit=min(_CHUNK, st.upto - seq + 1))}
            e = st.cache.pop(seq, None)
        return e

    def check(self, pid: int, seq: int, call: str, args: dict[str, Any],
              blobs: list[bytes]) -> Answer:
        st = self._by_pid.get(pid)
        if st is None:
            return Answer("live")
        if seq <= st.upto:
            entry = self._entry(st, pid, seq)
        elif st.intent is not None and seq == st.intent.seq:
            entry = st.intent
        else:
            self.forget(pid)
            return Answer("live")
        if entry is None:  # a gap cannot happen; treat it as the end of the journal
            self.forget(pid)
            return Answer("live")
        try:
            digest = args_digest(call, args, blobs)
        except (ValueError, TypeError, RecursionError):
            digest = ""
        if entry.call != call or entry.digest != digest:
            self.forget(pid)
            what = ("another call" if entry.call != call else "other arguments")
            detail = (f"call {seq} is {call} with {what} than the journal's {entry.call} "
                      f"(digest {digest[:12] or '?'} vs {entry.digest[:12]})")
            if self.on_diverged is not None:
                self.on_diverged(pid, seq, detail)
            return Answer("diverged", ProtocolError(f"diverged from the journal: {detail}"),
                          detail)
        if entry.status == "intent":
            self.forget(pid)
            intent = parse_intent(entry.result)
            if intent.get("effect") != "wait":
                # An effect whose outcome is unknown is never run again from here (the
                # supervisor resumes a process only once its effects have settled, or
                # after the operator's `resolve`): refuse rather than risk it twice.
                return Answer("journaled", Unavailable(
                    f"{call}: its effect's outcome is not known (docs/durability.md)"))
            state = intent.get("state")
            return Answer("resume", resume=state if isinstance(state, dict) else {})
        if seq == st.upto and st.intent is None:
            self.forget(pid)
        return self._decode(entry)

    @staticmethod
    def _decode(entry: JournalEntry) -> Answer:
        doc = json.loads(entry.result or "null")
        if entry.status == "error":
            return Answer("journaled", from_wire(doc))
        blobs: list[bytes] = []
        kept: list[str | None] = []
        recheck = False
        for b in doc.get("blobs") or []:
            if isinstance(b, str):
                raw = base64.b64decode(b)
                blobs.append(raw)
                kept.append(hashlib.sha256(raw).hexdigest())
            else:
                recheck = True
                kept.append(str(b.get("sha256")))
        kept_result = doc.get("result_digest")
        if recheck or isinstance(kept_result, dict):
            return Answer("recheck", expected_digests=tuple(kept),
                          expected_result=str(kept_result.get("sha256"))
                          if isinstance(kept_result, dict) else None)
        return Answer("journaled", Reply(doc.get("result"), blobs))
