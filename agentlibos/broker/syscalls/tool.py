"""``tool.call``: call a tool from the caller's tool table by name.

A builtin tool is a libc-like wrapper: it runs the syscall it names with the caller's
own authority, checked exactly as if the agent had made the call, and audited with the
tool's name. It adds no authority. JIT tools run in Deno (agentlibos/jit).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentlibos.broker.syscalls.base import Caller, Host, Param, Result, lookup, syscall
from agentlibos.errors import InvalidArgument, NotFound, Unavailable


@syscall("tool.call", tool_ok=False, name=Param(str, max_len=64),
         args=Param(dict, required=False))
def tool_call(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Result:
    """Call a tool from the caller's image's tool table."""
    name = args["name"]
    spec = caller.image.tool(name)
    if spec is None:
        known = ", ".join(t.name for t in caller.image.tools) or "none"
        raise NotFound(f"tool.call: no tool named {name!r} (this image has: {known})")
    if spec.kind == "builtin":
        target = lookup(spec.ref)
        if not target.tool_ok:
            raise InvalidArgument(f"tool {name!r} wraps {spec.ref}, which is not a tool")
        via = replace(caller, via_tool=name)
        return host.dispatch(via, spec.ref, args["args"] or {}, blobs)
    raise Unavailable(f"tool {name!r} is a JIT tool; JIT tools are not available yet")
