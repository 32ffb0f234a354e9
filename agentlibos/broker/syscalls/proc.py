"""``proc.*``: the process lifecycle. The work is the supervisor's; these are the doors."""

from __future__ import annotations

from typing import Any

from agentlibos.broker.syscalls.base import ANY, Caller, Host, Param, Result, syscall
from agentlibos.errors import InvalidArgument


@syscall("proc.start", tool_ok=False)
def proc_start(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The runtime's first call: the entry point, args and identity of this process."""
    return host.start_info(caller)


@syscall("proc.getpid")
def proc_getpid(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The caller's libOS pid and its parent's."""
    return {"pid": caller.pid, "ppid": caller.ppid}


@syscall(
    "proc.spawn",
    image=Param(str, max_len=256),
    args=Param(dict, required=False),
    caps=Param(list, required=False, max_len=256),
    cwd=Param(str, required=False, max_len=4096),
)
def proc_spawn(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Start a child from an image; ``caps`` (default: all of the caller's) only attenuate."""
    caps = args["caps"]
    if caps is not None and not all(isinstance(c, str) for c in caps):
        raise InvalidArgument("proc.spawn: caps must be a list of capability strings")
    pid = host.spawn(caller, args["image"], args["args"] or {}, caps, args["cwd"])
    return {"pid": pid}


@syscall("proc.wait", pid=Param(int), timeout=Param(float, required=False))
def proc_wait(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Result:
    """Block until a process ends; returns {pid, state, exit_reason, result}."""
    timeout = args["timeout"]
    if timeout is not None and timeout < 0:
        raise InvalidArgument("proc.wait: timeout must not be negative")
    return host.wait(caller, args["pid"], timeout)


@syscall("proc.kill", pid=Param(int))
def proc_kill(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Stop a process and all its descendants."""
    host.kill(caller, args["pid"])
    return {"pid": args["pid"]}


@syscall(
    "proc.exit",
    tool_ok=False,
    status=Param(str, required=False, default="returned"),
    result=Param(ANY, required=False),
    error=Param(str, required=False, max_len=64 * 1024),
)
def proc_exit(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Record the caller's result; the runtime exits right after the reply."""
    if args["status"] not in ("returned", "error"):
        raise InvalidArgument("proc.exit: status must be 'returned' or 'error'")
    host.exit(caller, args["status"], args["result"], args["error"])
    return {}


@syscall("proc.children")
def proc_children(host: Host, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The caller's children: pid, image, state, exit_reason."""
    return host.children(caller)
