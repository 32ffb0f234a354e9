"""The table of control operations: name -> the function in its own module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentlibos.errors import InvalidArgument
from agentlibos.supervisor.control import (
    op_answer,
    op_approvals,
    op_approve,
    op_audit_tail,
    op_caps,
    op_checkpoint,
    op_deny,
    op_event_post,
    op_kill,
    op_ping,
    op_ps,
    op_resume,
    op_run,
    op_shutdown,
    op_wait,
)
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder

Op = Callable[[ControlContext, dict[str, Any], Responder], None]

OPS: dict[str, Op] = {
    "ping": op_ping.ping,
    "run": op_run.run,
    "wait": op_wait.wait,
    "kill": op_kill.kill,
    "shutdown": op_shutdown.shutdown,
    "approvals": op_approvals.approvals,
    "approve": op_approve.approve,
    "deny": op_deny.deny,
    "answer": op_answer.answer,
    "event_post": op_event_post.event_post,
    "caps": op_caps.caps,
    "caps_revoke": op_caps.caps_revoke,
    "ps": op_ps.ps,
    "audit_tail": op_audit_tail.audit_tail,
    "checkpoint": op_checkpoint.checkpoint,
    "restore": op_checkpoint.restore,
    "resume": op_resume.resume,
    "resolve": op_resume.resolve,
}


def handle(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    op = OPS.get(req["op"])
    if op is None:
        raise InvalidArgument(f"unknown control operation {req['op']!r} "
                              f"(known: {', '.join(sorted(OPS))})")
    op(ctx, req, respond)
