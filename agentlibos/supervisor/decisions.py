"""What an answer to an approval or a question writes: the decision and its audit record.

The supervisor's Approvals then wakes the waiting call; with no supervisor running
(`agentlibos approve` while none is up) only these are written, and the process,
resumed later, finds its ask decided and honours it (``Approvals.reattach``,
``_question_again``). A module of its own so that those commands import only this.
"""

from __future__ import annotations

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


def _by(who: str | None) -> dict[str, str]:
    return {} if who is None else {"by": who}
