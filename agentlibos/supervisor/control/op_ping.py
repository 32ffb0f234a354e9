"""``ping``: who is the supervisor here (pid, mode, home)."""

from __future__ import annotations

import os
from typing import Any

from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def ping(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    respond({"ok": True, "pid": os.getpid(), "mode": ctx.mode, "home": str(ctx.paths.home)})
