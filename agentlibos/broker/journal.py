"""The dispatch's journal hook, backed by the store.

Each top-level call of a process is journaled with its outcome in the turn's store
transaction (the same commit as its audit records). The result is kept whole -- blobs
included, base64 in the JSON -- because replay (durable execution) must hand a resumed
agent exactly what it got the first time, even if the file has changed since.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from agentlibos.broker.dispatch import Outcome
from agentlibos.broker.syscalls import Caller
from agentlibos.errors import LibOSError, to_wire
from agentlibos.kernel.journal import JournalEntry, args_digest
from agentlibos.store import Store


def encode_outcome(outcome: Outcome) -> tuple[str, str]:
    """(status, JSON text) of a reply or error, as the journal keeps it."""
    if isinstance(outcome, LibOSError):
        return "error", json.dumps(to_wire(outcome), default=str)
    body: dict[str, Any] = {"result": outcome.result}
    if outcome.blobs:
        body["blobs"] = [base64.b64encode(b).decode("ascii") for b in outcome.blobs]
    return "ok", json.dumps(body, default=str)


class StoreJournal:
    def __init__(self, store: Store) -> None:
        self._store = store

    def last_seq(self, pid: int) -> int:
        return self._store.journal_last_seq(pid)

    def record(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
               blobs: list[bytes], outcome: Outcome) -> None:
        status, text = encode_outcome(outcome)
        try:
            digest = args_digest(call, args, blobs)
        except (ValueError, TypeError, RecursionError):
            # Arguments the door refused (too deep to encode, say): identify the call
            # by what it was refused for, which a replay would be refused for again.
            digest = args_digest(call, {"refused": text})
        self._store.journal_append(JournalEntry(
            pid=caller.pid, seq=seq, call=call, digest=digest,
            status="ok" if status == "ok" else "error", result=text))
