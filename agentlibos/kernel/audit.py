"""The audit hash chain: how a record's hash is computed and how a chain is verified.

Each record's hash covers its own fields and the hash of the record before it, so a
modified record breaks its own hash, a deleted one breaks the next record's link, and a
reordering breaks both. The store also keeps the chain's head (last seq and hash)
beside it, so a truncated tail is caught too. This detects tampering by anyone who
cannot recompute the whole chain after the point they changed; it does not stop the
owner of the database file from rewriting everything (see docs/audit.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

GENESIS: Final[str] = "0" * 64


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    pid: int | None
    call: str
    request: str
    verdict: str  # allow | deny | ask | info | error
    detail: dict[str, Any]
    prev: str
    hash: str

    def public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "pid": self.pid,
            "call": self.call,
            "request": self.request,
            "verdict": self.verdict,
            "detail": self.detail,
            "prev": self.prev,
            "hash": self.hash,
        }


def record_hash(
    seq: int,
    ts: float,
    pid: int | None,
    call: str,
    request: str,
    verdict: str,
    detail_json: str,
    prev: str,
) -> str:
    # Every field length-prefixed, so no two different records share an encoding;
    # repr(ts) is exact for floats, so a round trip through SQLite REAL re-hashes equal.
    # (Cheaper than a JSON encoding: this runs once per audited syscall.)
    h = hashlib.sha256()
    for field in (str(seq), repr(ts), "" if pid is None else str(pid), call, request, verdict,
                  detail_json, prev):
        b = field.encode("utf-8")
        h.update(b"%d:" % len(b))
        h.update(b)
    h.update(b"|" if pid is None else b"#")  # pid None and pid "" must differ
    return h.hexdigest()


def _rehash(seq: int, ts: object, pid: object, call: object, request: object,
            verdict: object, detail_json: object, prev: object) -> str | None:
    """``record_hash`` of a stored row, which may have been edited into other types (a
    text ``ts``, a blob ``detail``): such a row cannot hash equal, it was modified."""
    if not (isinstance(ts, float) and (pid is None or isinstance(pid, int))
            and all(isinstance(f, str) for f in (call, request, verdict, detail_json, prev))):
        return None
    return record_hash(seq, ts, pid, str(call), str(request), str(verdict), str(detail_json),
                       str(prev))


NO_HEAD: Final = "the chain has records but no head"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(
    rows: Iterable[tuple[int, float, int | None, str, str, str, str, str, str]],
    head: tuple[int, str] | None,
) -> VerifyResult:
    """Check rows ``(seq, ts, pid, call, request, verdict, detail_json, prev, hash)``.

    Rows must come in ascending ``seq``; ``head`` is the stored (last seq, last hash).
    """
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    for seq, ts, pid, call, request, verdict, detail_json, prev, h in rows:
        count += 1
        if seq != expected_seq:
            # The first bad record is the first one missing from its place.
            return VerifyResult(
                False,
                count,
                expected_seq,
                f"record {seq} follows record {expected_seq - 1}: "
                f"record(s) {expected_seq}..{seq - 1} are missing or reordered",
            )
        if prev != prev_hash:
            return VerifyResult(
                False, count, seq, f"record {seq} does not link to the record before it"
            )
        if _rehash(seq, ts, pid, call, request, verdict, detail_json, prev) != h:
            return VerifyResult(
                False, count, seq, f"record {seq} was modified: its hash does not match"
            )
        prev_hash = h
        expected_seq += 1
    last_seq = expected_seq - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq != last_seq:
            return VerifyResult(
                False,
                count,
                last_seq + 1 if head_seq > last_seq else last_seq,
                f"the chain ends at record {last_seq} but its head says {head_seq}: "
                "records were removed from the end or the head was altered",
            )
        if head_hash != prev_hash:
            return VerifyResult(
                False, count, last_seq,
                f"the head's hash does not match record {last_seq}'s: the head was altered, "
                f"or record {last_seq} was replaced together with its hash",
            )
    elif count:
        return VerifyResult(False, count, last_seq, NO_HEAD)
    return VerifyResult(True, count)
