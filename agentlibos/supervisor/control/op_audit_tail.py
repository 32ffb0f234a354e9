"""``audit_tail``: the last records of the audit and whether the chain verifies.

Verifying reads the whole chain, so the result is kept until the chain grows: a console
polling every second costs one verification per new record, not one per poll."""

from __future__ import annotations

from typing import Any

from agentlibos.kernel.audit import VerifyResult
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder

_verified: dict[str, tuple[int, VerifyResult]] = {}


def audit_tail(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    n = req.get("n", 50)
    n = max(1, min(n if isinstance(n, int) and not isinstance(n, bool) else 50, 1000))
    key = str(ctx.paths.db)
    tail = ctx.store.audit_records(since_seq=max(0, ctx.store.audit_head_seq() - n))
    head = tail[-1].seq if tail else 0
    cached = _verified.get(key)
    if cached is None or cached[0] != head:
        cached = (head, ctx.store.verify_audit())
        _verified[key] = cached
    v = cached[1]
    respond({"ok": True, "records": [r.public() for r in tail],
             "verify": {"ok": v.ok, "count": v.count, "first_bad_seq": v.first_bad_seq,
                        "problem": v.problem,
                        "head": None if not tail else {"seq": tail[-1].seq,
                                                       "hash": tail[-1].hash}}})
