"""``answer``: the text an agent's question returns (one of its choices, if it gave any)."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control._args import int_field, str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def answer(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    text = str_field(req, "text")
    assert text is not None
    rec = ctx.approvals.answer(int_field(req, "id"), text)
    respond({"ok": True, "id": rec.id, "state": rec.state})
