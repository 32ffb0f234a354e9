"""``deny``: the waiting call fails with PermissionDenied carrying the reason."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control._args import int_field, str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def deny(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    rec = ctx.approvals.deny(int_field(req, "id"), str_field(req, "reason", optional=True))
    respond({"ok": True, "id": rec.id, "kind": rec.kind, "state": rec.state})
