"""``approvals``: the human queue (pending items, or all with ``all``)."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def approvals(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    items = ctx.store.ask_list(pending_only=not req.get("all"))
    respond({"ok": True, "items": [r.public() for r in items],
             "version": ctx.approvals.version})
