"""``event_post``: the operator posts an event, waking every agent waiting on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentlibos.store import Store
from agentlibos.supervisor.control._args import str_field

if TYPE_CHECKING:  # not at run time: `event post` with no supervisor imports this module
    from agentlibos.supervisor.control.context import ControlContext
    from agentlibos.supervisor.control.server import Responder


def event_post(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    name = str_field(req, "name")
    assert name is not None
    rec, woken = ctx.events.post(name, req.get("data"), None)
    audit_operator_post(ctx.store, name, rec.id, woken)
    respond({"ok": True, "name": name, "id": rec.id, "woken": woken})


def audit_operator_post(store: Store, name: str, event_id: int, woken: int) -> None:
    """The audit record of a post by the operator (with no supervisor running, nobody was
    woken: the waiters find the post when they are resumed)."""
    store.append_audit(None, "event.post", f"event:post:{name}", "info",
                       {"by": "operator", "id": event_id, "woken": woken})
