"""``kill``: stop a process and its descendants (SIGTERM, then SIGKILL after the grace)."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import Conflict
from agentlibos.supervisor.control._args import int_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def kill(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    if pid not in ctx.table.live:
        rec = ctx.store.get_process(pid)
        raise Conflict(f"process {pid} is not running (it is {rec.state})")
    ctx.table.terminate(pid, "killed", "killed by the operator")
    respond({"ok": True, "pid": pid})
