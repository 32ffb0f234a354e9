"""The syscall journal's record and the digest that identifies a call. Pure: no I/O.

For each process the broker journals every syscall in order: its sequence number, its
name, a digest of its arguments and its result. Durable execution replays from it (a
later issue): a resumed process's call at ``seq`` must have the same ``call`` and
``digest`` as the journaled one, or the process has diverged. Today the journal is only
filled. The store keeps it (``Store.journal_append`` and friends; see docs/store.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from agentlibos.kernel.audit import canonical_json

JournalStatus = Literal["ok", "error", "intent"]
"""``ok``/``error``: the call's reply (settled). ``intent``: an external effect (a file
write, a shell command, a request) recorded *before* it acts, settled to ``ok`` or
``error`` after; one left as ``intent`` after a crash may or may not have happened."""

STATUSES: Final[frozenset[str]] = frozenset(get_args(JournalStatus))
SETTLED: Final[frozenset[str]] = frozenset({"ok", "error"})


@dataclass(frozen=True)
class JournalEntry:
    """One journaled syscall of process ``pid``.

    ``result`` is JSON text: the reply's result for ``ok``, the error as the wire encodes
    it (:func:`agentlibos.errors.to_wire`) for ``error``. For an ``intent`` it is what
    the effect is about to do (shown to the operator if it never settles), or ``None``;
    settling replaces it with the outcome.
    """

    pid: int
    seq: int
    call: str
    digest: str
    status: JournalStatus
    result: str | None

    def __post_init__(self) -> None:
        # A bad entry is a broker bug, not an agent's mistake: fail loudly, before SQL.
        if self.status not in STATUSES:
            raise ValueError(f"journal status must be one of {sorted(STATUSES)}, "
                             f"not {self.status!r}")
        if self.seq < 1:
            raise ValueError(f"journal sequence numbers start at 1, not {self.seq}")
        if self.status in SETTLED and self.result is None:
            raise ValueError(f"a settled ({self.status}) journal entry needs a result")


def args_digest(call: str, args: dict[str, Any], blobs: Sequence[bytes] = ()) -> str:
    """sha256 hex identifying a call: its name, its arguments and its binary payloads.

    Canonical JSON (sorted keys, no spaces) makes it independent of dict order and
    stable across runs and hosts; blobs enter by their own sha256, in order, so a large
    payload is hashed once and the digest never holds its bytes. Arguments must be JSON
    values (they come off the wire).
    """
    doc = {
        "call": call,
        "args": args,
        "blobs": [hashlib.sha256(b).hexdigest() for b in blobs],
    }
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()
