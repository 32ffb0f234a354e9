"""What an answer to an approval or a question writes: the decision and its audit record.

The supervisor's Approvals then wakes the waiting call; with no supervisor running
(`agentlibos approve` while none is up) only these are written, and the process,
resumed later, finds its ask decided and honours it (``Approvals.reattach``,
``_question_again``). A module of its own so that those commands import only this.
"""

from __future__ import annotations

import time
from typing import Any

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.approvals import AskRecord, AskState, check_answer
from agentlibos.kernel.text import storable
from agentlibos.store import Store

# ``by`` names who answered in the audit record when it was not the operator's control
# channel (a human channel, docs/providers.md).

def record_approve(store: Store, ask_id: int, *, always: bool = False,
                   by: str | None = None) -> AskRecord:
    return _decide(store, ask_id, "approved", "approve", {"always": always}, by,
                   always=always)


def record_deny(store: Store, ask_id: int, reason: str | None = None, *,
                by: str | None = None) -> AskRecord:
    """An approval refused -- or a question declined: its ``human.ask`` fails with
    PermissionDenied carrying the reason, as a denied call does (an operator may not
    want to answer what an agent asks, and must not have to let it wait forever)."""
    if store.ask_get(ask_id).kind == "question":
        rec = store.ask_decide(ask_id, "denied", reason=reason)
        store.append_audit(rec.pid, "human.ask", f"human:ask:{rec.topic}", "denied",
                           {"question": ask_id, "reason": reason, **_by(by)})
        return rec
    return _decide(store, ask_id, "denied", "deny", {"reason": reason}, by, reason=reason)


def _decide(store: Store, ask_id: int, state: AskState, verb: str, detail: dict[str, Any],
            by: str | None, **decision: Any) -> AskRecord:
    """An approval approved or denied (``decision``: what ``ask_decide`` records with
    it), and its audit record linked by the approval id."""
    if store.ask_get(ask_id).kind != "approval":
        raise InvalidArgument(f"{ask_id} is a question: answer it, not {verb} it")
    rec = store.ask_decide(ask_id, state, **decision)
    store.append_audit(rec.pid, rec.call, rec.request or "", state,
                       {"approval": ask_id, **detail, **_by(by)})
    return rec


def record_answer(store: Store, ask_id: int, text: str, *, by: str | None = None
                  ) -> AskRecord:
    check_answer(store.ask_get(ask_id), text)
    rec = store.ask_decide(ask_id, "answered", answer=text)
    store.append_audit(rec.pid, "human.ask", f"human:ask:{rec.topic}", "answered",
                       {"question": ask_id, "answer": storable(text, 2000), **_by(by)})
    return rec


# The reason an ask expired at the operator's [approvals] timeout (its record says it).
EXPIRED_REASON = "no answer in time"


def record_expire(store: Store, ask_id: int, timeout_s: float | None) -> AskRecord:
    """An ask that had no answer within the operator's ``[approvals] timeout``: expired,
    with its audit record."""
    rec = store.ask_decide(ask_id, "expired", reason=EXPIRED_REASON)
    store.append_audit(rec.pid, rec.call, rec.request or f"human:{ask_id}", "expired",
                       {"approval" if rec.kind == "approval" else "question": ask_id,
                        "timeout_s": timeout_s})
    return rec


def expire_if_late(store: Store, ask_id: int, timeout_s: float | None) -> bool:
    """Expire a pending ask whose timeout has run out while no supervisor ran (one that
    runs expires it on time): an answer given after it must find it expired, as it would
    with a supervisor up. True if it expired here."""
    if timeout_s is None:
        return False
    rec = store.ask_get(ask_id)
    if rec.state != "pending" or time.time() < rec.created_at + timeout_s:
        return False
    record_expire(store, ask_id, timeout_s)
    return True


# The reason the asks of a process that ended expired (nobody is there to be answered).
ENDED_REASON = "the process ended"


def expire_asks_of(store: Store, pid: int) -> list[AskRecord]:
    """The pending asks of ``pid``, which has ended, expired: what the supervisor's
    Approvals does when a process ends, and ``agentlibos kill`` with none running."""
    return [store.ask_decide(rec.id, "expired", reason=ENDED_REASON)
            for rec in list(store.asks_of(pid)) if rec.state == "pending"]


def _by(who: str | None) -> dict[str, str]:
    return {} if who is None else {"by": who}
