"""``resume``: run again the tree of a process the last supervisor left; ``resolve``: the
operator's answer to a process in ``attention`` (docs/durability.md)."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import Conflict
from agentlibos.supervisor.control._args import int_field, str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder
from agentlibos.ui import attention_text


def resume(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    """A daemon resumed everything interrupted when it started; a process it left (or
    one left since) is rebuilt from the store and resumed by replay, with its tree."""
    pid = int_field(req, "pid")
    rec = ctx.store.get_process(pid)
    if rec.state == "attention":
        raise Conflict(f"process {pid} is in attention ({attention_text(rec)}): answer with "
                       f"`agentlibos resolve {pid} --retry|--skip|--fail`")
    resumed: list[int] = []
    if rec.live:
        for r in ctx.store.list_processes(live_only=True):
            if (r.root_pid == rec.root_pid and r.pid not in ctx.table.live
                    and r.state != "attention"):
                ctx.durable.rebuild(r)
                ctx.durable.resume(r.pid, why="agentlibos resume")
                resumed.append(r.pid)
    respond({"ok": True, "pid": pid, "resumed": resumed,
             "live": pid in ctx.table.live})


def resolve(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    action = str_field(req, "action")
    assert action is not None
    rec = ctx.durable.resolve(pid, action)
    respond({"ok": True, "pid": pid, "action": action, "state": rec.state,
             "record": rec.public()})
