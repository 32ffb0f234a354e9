"""``wait``: answer with a process's record when it has ended."""

from __future__ import annotations

from typing import Any

from agentlibos.supervisor.control._args import int_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def wait(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    ctx.wait_for(pid, respond)
