"""``approve``: a one-shot grant for the waiting call, or ``always`` for the process."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control._args import int_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def approve(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    rec = ctx.approvals.approve(int_field(req, "id"), always=bool(req.get("always")))
    respond({"ok": True, "id": rec.id, "state": rec.state, "always": rec.always})
