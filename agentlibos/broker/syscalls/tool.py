"""``tool.call``: call a tool by name; ``jit.register``: add a TypeScript tool at run time.

A builtin tool is a libc-like wrapper: it runs the syscall it names with the caller's
own authority, checked exactly as if the agent had made the call, and audited with the
tool's name. It adds no authority.

A JIT tool is TypeScript run by Deno with no permissions, in its own sandbox; every
``libos.syscall`` it makes comes back here as the calling process, narrowed to the
capabilities the tool declares (agentlibos/supervisor/jit.py). Calling one needs
``jit:invoke:<name>``; registering one needs ``jit:register:<name>`` and a source that
passes ``deno check``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final, Protocol

from agentlibos.broker.syscalls.base import (
    Authorizer,
    Caller,
    Param,
    Result,
    lookup,
    syscall,
)
from agentlibos.errors import Conflict, InvalidArgument, PolicyError
from agentlibos.kernel.caps import parse_cap
from agentlibos.kernel.image import TOOL_NAME_RE, ToolSpec
from agentlibos.kernel.policy import Request
from agentlibos.kernel.schema import check_schema

MAX_SOURCE_BYTES: Final = 256 * 1024


class ToolService(Protocol):
    """Finding, calling and registering tools (agentlibos.supervisor.tools)."""

    def find(self, caller: Caller, name: str) -> Any: ...
    def call_jit(self, caller: Caller, tool: Any, args: dict[str, Any]) -> Result: ...
    def register(self, caller: Caller, name: str, source: str,
                 schema: dict[str, Any] | None, caps: tuple[str, ...] | None,
                 timeout_s: float | None) -> Result: ...


class ToolServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def tools(self) -> ToolService: ...

    # A builtin tool re-enters the dispatch as the caller (the one entry for every call).
    def dispatch(self, caller: Caller, call: str, args: dict[str, Any],
                 blobs: list[bytes]) -> Result: ...


@syscall("tool.call", tool_ok=False, name=Param(str, max_len=64),
         args=Param(dict, required=False))
def tool_call(
    svc: ToolServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Call a tool: a builtin of the image's table, or a JIT tool (image or registered)."""
    name = args["name"]
    tool = svc.tools.find(caller, name)
    if isinstance(tool, ToolSpec):  # a builtin
        target = lookup(tool.ref)
        if not target.tool_ok:
            raise InvalidArgument(f"tool {name!r} wraps {tool.ref}, which is not a tool")
        return svc.dispatch(replace(caller, via_tool=name), tool.ref, args["args"] or {},
                             blobs)
    svc.authz.authorize(caller, "tool.call", Request("jit", "invoke", name))
    return svc.tools.call_jit(caller, tool, args["args"] or {})


@syscall(
    "jit.register",
    # The agent loop's builtin tool (a model writes a tool, then calls it); not from a
    # JIT tool's own code, which registers nothing.
    jit_ok=False,
    name=Param(str, max_len=64),
    source=Param(str, max_len=MAX_SOURCE_BYTES),
    schema=Param(dict, required=False),
    caps=Param(list, required=False, max_len=64),
    timeout=Param(float, required=False),
)
def jit_register(
    svc: ToolServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Type-check a TypeScript tool offline and make it callable by this process."""
    name = args["name"]
    if not TOOL_NAME_RE.match(name):
        raise InvalidArgument(f"jit.register: {name!r} is not a valid tool name")
    svc.authz.authorize(caller, "jit.register", Request("jit", "register", name))
    spec = caller.image.tool(name)
    if spec is not None:
        raise Conflict(f"jit.register: the image already has a tool named {name!r}")
    if args["schema"] is not None:
        check_schema(args["schema"], f"jit.register {name} schema")
    # Absent: the tool runs with the caller's capabilities; a list, even an empty one,
    # narrows it to those (an empty list: a tool that may make no syscall that needs one).
    caps = args["caps"]
    for c in caps or []:
        try:
            parse_cap(c)
        except PolicyError as e:
            raise InvalidArgument(f"jit.register: {e.message}") from None
    timeout = args["timeout"]
    if timeout is not None and not 0 < timeout <= 3600:
        raise InvalidArgument("jit.register: timeout must be between 0 and 3600 seconds")
    return svc.tools.register(caller, name, args["source"], args["schema"],
                              None if caps is None else tuple(caps), timeout)
