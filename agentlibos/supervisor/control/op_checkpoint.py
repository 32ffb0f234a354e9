"""``checkpoint``: mark a process's journal position, objects and capabilities;
``restore``: start a new process from a checkpoint (docs/durability.md)."""

from __future__ import annotations

from typing import Any

from agentlibos.kernel.journal import check_checkpoint_name
from agentlibos.supervisor.control._args import int_field, str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def checkpoint(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    name = check_checkpoint_name(str_field(req, "name", optional=True))
    ctx.store.get_process(pid)  # NoSuchProcess when there is none
    respond({"ok": True, **ctx.durable.checkpoint(pid, name).public()})


def restore(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    ref = str_field(req, "checkpoint")
    assert ref is not None
    respond({"ok": True, "pid": ctx.durable.restore(ref)})
