"""The dispatch's journal hook, backed by the store.

Each top-level call of a process is journaled with its outcome in the turn's store
transaction (the same commit as its audit records): entries gather during the turn and
are written in one statement by :meth:`StoreJournal.flush`, which the loop's turn
context calls before the commit. The result is kept so that replay (durable execution)
can hand a resumed agent what it got the first time: blobs up to ``INLINE_BLOB_BYTES``
whole (base64), larger ones by size and sha256 only -- keeping every 4 MiB read would
grow the database by the size of everything agents read, and replay can re-read and
compare the digest.

What it keeps whole is metered per tree: the ``journal_bytes`` quota (kernel/budgets.py)
counts every answer over ``JOURNAL_SMALL``, and once a tree has spent it, the answers of
reads that can be made again (``REREADABLE``) are kept by digest -- the result's and each
blob's -- so that a loop of reads cannot grow the database without bound. Replay
(broker/replay.py) makes such a read again and compares.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from agentlibos.broker.crashpoints import crash_at
from agentlibos.broker.dispatch import Outcome
from agentlibos.broker.syscalls import Caller, Reply
from agentlibos.errors import LibOSError, NoSuchProcess, to_wire
from agentlibos.kernel.budgets import DEFAULT_JOURNAL_BYTES, journal_charge
from agentlibos.kernel.journal import (
    REREADABLE,
    JournalEntry,
    args_digest,
    effect_kind,
    result_digest,
)
from agentlibos.store import Store

INLINE_BLOB_BYTES = 64 << 10
# Answers up to this many bytes (as the journal keeps them) are neither counted against
# journal_bytes nor ever kept by digest: about the size of the call's own audit record,
# and the quota is for the large ones (a small answer's row costs what its call does).
JOURNAL_SMALL = 1024
# Trees whose journal_bytes meter is kept in memory at most (then all are read again).
_METERS_KEPT = 4096
# A loop turn that only served reads may leave its commit to a later turn, for at most
# this long and this many calls (docs/store.md, "Deferred commits").
DEFER_MAX_S = 0.002
DEFER_MAX_CALLS = 256


def encode_digest(outcome: Reply, size: int, sha256: str) -> str:
    """The JSON text of a reply kept by digest: its result's size and sha256 (as
    :func:`result_digest` gave them) and each blob's."""
    digests: list[str | None] = (list(outcome.digests) if outcome.digests
                                 else [None] * len(outcome.blobs))
    return json.dumps({
        "result_digest": {"size": size, "sha256": sha256},
        "blobs": [{"size": len(b), "sha256": d or hashlib.sha256(b).hexdigest()}
                  for b, d in zip(outcome.blobs, digests, strict=True)]})


def encode_outcome(outcome: Outcome) -> tuple[str, str]:
    """(status, JSON text) of a reply or error, as the journal keeps it."""
    if isinstance(outcome, LibOSError):
        return "error", json.dumps(to_wire(outcome), default=str)
    body: dict[str, Any] = {"result": outcome.result}
    if outcome.blobs:
        digests: list[str | None] = (list(outcome.digests) if outcome.digests
                                     else [None] * len(outcome.blobs))
        body["blobs"] = [
            base64.b64encode(b).decode("ascii") if len(b) <= INLINE_BLOB_BYTES
            else {"size": len(b), "sha256": d or hashlib.sha256(b).hexdigest()}
            for b, d in zip(outcome.blobs, digests, strict=True)]
    return "ok", json.dumps(body, default=str)


_Turn = tuple[int, int, int, str, dict[str, Any], list[bytes], Outcome]


class StoreJournal:
    def __init__(self, store: Store, journal_bytes: int = DEFAULT_JOURNAL_BYTES) -> None:
        self._store = store
        # The turn's calls, as (caller pid, its root pid, seq, call, args, blobs, outcome):
        # the digests and encodings are made in take(), after early replies (below) left.
        self._turn: list[_Turn] = []
        # The journal_bytes quota: each tree's meter as of the store plus what take()
        # charged since (``_charged``, written by flush()), and the trees whose answers
        # it began to keep by digest, to audit once (``_crossed``: root -> pid, seq, call).
        self.journal_bytes = journal_bytes
        self._meter: dict[int, int] = {}
        self._charged: dict[int, int] = {}
        self._crossed: dict[int, tuple[int, int, str]] = {}
        self._warned: set[int] = set()
        # Called in each turn after its last write and before its commit: the broker's
        # early replies to pure reads (Broker.flush_reads).
        self.before_commit: Callable[[], None] | None = None
        # (pid, seq) of entries written as intents and not yet settled: their outcome
        # settles the row instead of adding one. Loaded from the store at recovery.
        self.intents: set[tuple[int, int]] = set()
        # The calls whose effect's entry is in this turn (the after-commit barrier, which
        # a test may arm for one call: `after-commit:fs.write`).
        self._acted: set[str] = set()
        # Asked at the end of a loop turn that wrote nothing: may its commit wait? (The
        # supervisor: not while any reply waits for it.) None: never.
        self.may_defer: Callable[[], bool] | None = None
        self._deferred_since: float | None = None
        # Intents held in memory (``hold``): a JIT tool call's, whose tool can act only
        # through the broker. Written with the turn's entries (take), or made durable
        # before the tool's first syscall (tool_acts); an outcome that comes first makes
        # it an ordinary entry, and the call costs one commit instead of two.
        self._held: dict[tuple[int, int], JournalEntry] = {}
        store.pending_journal = self.take

    def last_seq(self, pid: int) -> int:
        return self._store.journal_last_seq(pid)

    @contextlib.contextmanager
    def turn(self, *, may_defer: bool = False) -> Iterator[None]:
        """One loop turn: the store's group-commit batch, the turn's journal written last.

        ``may_defer``: a turn that wrote nothing (reads, whose answers already left:
        Broker.flush_reads) keeps its calls' journal entries and audit records in
        memory for the next turn that commits -- the first that writes, answers a
        write, finds the deferral DEFER_MAX_S old or DEFER_MAX_CALLS long, or
        :meth:`commit_deferred` before the loop sleeps. A run of reads pays one commit,
        not one per call, and holds no lock meanwhile. Whatever reads the journal
        first has them written (SQLiteStore.pending_journal)."""
        with self._store.batch():
            yield
            if self.before_commit is not None:
                self.before_commit()
            if may_defer and self._deferrable():
                self._store.defer_commit()
            else:
                self.flush()
        acted, self._acted = self._acted, set()
        for call in acted:
            crash_at("after-commit", call)

    def loop_turn(self) -> contextlib.AbstractContextManager[None]:
        """The loop's turn context: :meth:`turn` that may defer its commit."""
        return self.turn(may_defer=True)

    def _deferrable(self) -> bool:
        if self.may_defer is None or self._store.wrote() or not self.may_defer():
            self._deferred_since = None
            return False
        now = time.monotonic()
        if self._deferred_since is None:
            self._deferred_since = now
        if now - self._deferred_since >= DEFER_MAX_S or len(self._turn) >= DEFER_MAX_CALLS:
            self._deferred_since = None
            return False
        return True

    def commit_deferred(self, force: bool = False) -> float | None:
        """Before the loop sleeps: commit what deferred turns left, if they are
        DEFER_MAX_S old or ``force``; else the seconds until they will be (the loop
        sleeps no longer). A steady run of reads from an agent slower than the loop's
        spin then still commits once per DEFER_MAX_S, not at every pause."""
        if not (self._turn or self._held or self._store.uncommitted()):
            self._deferred_since = None
            return None
        if not force and self._deferred_since is not None:
            left = self._deferred_since + DEFER_MAX_S - time.monotonic()
            if left > 0:
                return left
        self._deferred_since = None
        with self._store.batch():
            self.flush()
        return None

    def take(self) -> list[JournalEntry]:
        """The entries not yet written, encoded, handed over to be written (held intents
        among them, as rows in state 'intent')."""
        held = list(self._held.values())
        if held:
            self.intents.update(self._held)
            self._held.clear()
        turn, self._turn = self._turn, []
        return held + [self._metered(*t) for t in turn]

    def _metered(self, pid: int, root: int, seq: int, call: str, args: dict[str, Any],
                 blobs: list[bytes], outcome: Outcome) -> JournalEntry:
        """The entry of one call: its answer kept whole, and counted against its tree's
        journal_bytes if over JOURNAL_SMALL; or, once the tree has spent them (the answer
        that reaches the quota is still kept whole), by digest if it can be read again."""
        if call in REREADABLE and isinstance(outcome, Reply) and \
                self._spent(root) >= self.journal_bytes:
            size, sha = result_digest(outcome.result)  # one encoding of a large answer
            if size + sum(4 * ((len(b) + 2) // 3) for b in outcome.blobs) > JOURNAL_SMALL:
                if root not in self._warned:
                    self._crossed.setdefault(root, (pid, seq, call))
                return _entry(pid, seq, call, args, blobs, outcome,
                              encode_digest(outcome, size, sha))
        entry = _entry(pid, seq, call, args, blobs, outcome)
        size = len(entry.result or "")
        if size > JOURNAL_SMALL:
            self._meter[root] = self._spent(root) + size
            self._charged[root] = self._charged.get(root, 0) + size
        return entry

    def spent(self, root: int) -> int | None:
        """The tree's journal_bytes quota when it has spent it, else None."""
        return self.journal_bytes if self._spent(root) >= self.journal_bytes else None

    def _spent(self, root: int) -> int:
        """The tree's journal_bytes meter: read from the store once, then kept here (this
        journal is its only writer) and written by flush()."""
        used = self._meter.get(root)
        if used is None:
            used = self._meter[root] = self._store.tree_usage(root).journal_bytes
        return used

    def flush(self) -> None:
        """Write the turn's entries (inside the turn's transaction, before its commit),
        and what they charged to their trees' journal_bytes."""
        self._store.journal_append_many(self.take())
        charged, self._charged = self._charged, {}
        for root, n in charged.items():
            with contextlib.suppress(NoSuchProcess):  # a tree whose root was pruned
                self._store.charge_tree(root, journal_charge(n))
        crossed, self._crossed = self._crossed, {}
        for root, (pid, seq, call) in crossed.items():
            # Once per tree and supervisor: its large reads are kept by digest from now
            # on, and a resume re-reads them (docs/durability.md).
            self._warned.add(root)
            self._store.append_audit(pid, "journal.budget", f"proc:{root}", "info", {
                "root_pid": root, "seq": seq, "call": call, "limit": self.journal_bytes,
                "journal_bytes": self._meter.get(root, 0)})
        if len(self._meter) > _METERS_KEPT:  # read again from the store when next needed
            self._meter.clear()

    def intent(self, pid: int, seq: int, call: str, digest: str, text: str, *,
               durable: bool, hold: bool = False) -> None:
        """Write the unsettled entry of a call before it acts (``durable``: commit now,
        with what the turn wrote before it) or while it waits. ``hold``: keep it in memory
        like the turn's entries, for a call none of whose effects can act before
        :meth:`tool_acts` (a JIT tool's)."""
        entry = JournalEntry(pid=pid, seq=seq, call=call, digest=digest, status="intent",
                             result=text)
        if hold and not durable and (pid, seq) not in self.intents:
            self._held[(pid, seq)] = entry
            return
        self._held.pop((pid, seq), None)
        self._store.journal_put_intent(entry)
        self.intents.add((pid, seq))
        if durable:
            self.flush()
            self._store.commit_now()

    def tool_acts(self) -> None:
        """A JIT tool is about to make a syscall, which may act: the held intents (its
        call's among them) go to disk first, with everything deferred before them."""
        if self._held:
            self.flush()
            self._store.commit_now()

    def record(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
               blobs: list[bytes], outcome: Outcome) -> None:
        if effect_kind(call, args) in ("redo", "once"):
            self._acted.add(call)
        # A held intent was never written: its outcome is an ordinary entry of the turn.
        self._held.pop((caller.pid, seq), None)
        if (caller.pid, seq) in self.intents:
            self.intents.discard((caller.pid, seq))
            status, text = encode_outcome(outcome)
            self._store.journal_settle(caller.pid, seq, "ok" if status == "ok" else "error",
                                       text)
            return
        self._turn.append((caller.pid, caller.root_pid, seq, call, args, blobs, outcome))


def _entry(pid: int, seq: int, call: str, args: dict[str, Any], blobs: list[bytes],
           outcome: Outcome, kept: str | None = None) -> JournalEntry:
    """``kept``: the answer's JSON text as the journal keeps it, if not whole."""
    status, text = encode_outcome(outcome) if kept is None else ("ok", kept)
    try:
        digest = args_digest(call, args, blobs)
    except (ValueError, TypeError, RecursionError):
        # Arguments the door refused (too deep to encode, say): identify the call
        # by what it was refused for, which a replay would be refused for again.
        digest = args_digest(call, {"refused": text})
    return JournalEntry(pid=pid, seq=seq, call=call, digest=digest,
                        status="ok" if status == "ok" else "error", result=text)
