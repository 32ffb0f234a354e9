"""``ps``: the process table, as ``agentlibos ps --json`` prints it."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def ps(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    respond({"ok": True,
             "processes": [r.table_row() for r in ctx.store.list_processes()]})
