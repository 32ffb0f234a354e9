"""``event_post``: the operator posts an event, waking every agent waiting on it."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control._args import str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def event_post(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    name = str_field(req, "name")
    assert name is not None
    rec, woken = ctx.events.post(name, req.get("data"), None)
    ctx.store.append_audit(None, "event.post", f"event:post:{name}", "info",
                           {"by": "operator", "id": rec.id, "woken": woken})
    respond({"ok": True, "name": name, "id": rec.id, "woken": woken})
