"""``run``: start a root process from an image; answer at once or when it ends."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.policy import parse_policy
from agentlibos.kernel.process import INT64_MAX
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def run(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    policy = None
    if req.get("policy_text") is not None:
        policy = parse_policy(str(req["policy_text"]),
                              str(req.get("policy_source", "<control>")))
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise InvalidArgument("run: args must be an object")
    cwd = req.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise InvalidArgument("run: cwd must be a string")
    ask = req.get("ask", "queue")
    if not isinstance(ask, str):
        raise InvalidArgument("run: ask must be a string")
    tokens = req.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or not 1 <= tokens <= INT64_MAX):
        raise InvalidArgument(f"run: tokens must be a whole number from 1 to {INT64_MAX}")
    pid = ctx.processes.submit_run(str(req["image"]), args, cwd=cwd, policy=policy, ask=ask)
    if tokens is not None:  # in this turn: the tree's first model call comes after it
        ctx.store.tokens_set_limit(pid, tokens)
    if req.get("wait"):
        ctx.wait_for(pid, respond)
    else:
        respond({"ok": True, "pid": pid})
