"""``shutdown``: stop the supervisor (its live processes are killed and recorded)."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def shutdown(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    respond({"ok": True})
    ctx.request_stop()
