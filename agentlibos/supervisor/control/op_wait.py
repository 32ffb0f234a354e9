"""``wait``: answer with a process's record when it has ended."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import InvalidArgument
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def wait(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = req.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise InvalidArgument("wait: pid must be an integer")
    ctx.wait_for(pid, respond)
