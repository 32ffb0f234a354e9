"""``proc.*``: the process lifecycle. The work is the supervisor's; these are the doors."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import ANY, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument
from agentlibos.kernel.journal import check_checkpoint_name


class ProcessService(Protocol):
    """The process table's doors (agentlibos.supervisor.process_calls)."""

    def start_info(self, caller: Caller) -> dict[str, Any]: ...
    def spawn(
        self, caller: Caller, image: str, args: dict[str, Any], caps: list[str] | None,
        cwd: str | None,
    ) -> int: ...
    def wait(self, caller: Caller, pid: int, timeout_s: float | None) -> Result: ...
    def kill(self, caller: Caller, pid: int) -> None: ...
    def exit(self, caller: Caller, status: str, result: Any, error: str | None) -> None: ...
    def children(self, caller: Caller) -> list[dict[str, Any]]: ...
    def journal(self, caller: Caller, after: int, limit: int) -> dict[str, Any]: ...


class ProcServices(Protocol):
    @property
    def processes(self) -> ProcessService: ...


class Checkpoint(Protocol):
    def public(self) -> dict[str, Any]: ...


class CheckpointService(Protocol):
    """Durable execution's checkpoints (agentlibos.supervisor.durable)."""

    def checkpoint(self, pid: int, name: str | None, seq: int | None = None) -> Checkpoint: ...


class CheckpointServices(Protocol):
    @property
    def checkpoints(self) -> CheckpointService: ...


@syscall("proc.start", tool_ok=False)
def proc_start(svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The runtime's first call: the entry point, args and identity of this process."""
    return svc.processes.start_info(caller)


@syscall("proc.journal", tool_ok=False, after=Param(int), limit=Param(int, required=False,
                                                                       default=1000))
def proc_journal(svc: ProcServices, caller: Caller, args: dict[str, Any],
                 blobs: list[bytes]) -> Any:
    """A resumed process's own journal (its settled prefix), so its runtime can answer
    replayed calls without a round trip each (docs/durability.md)."""
    return svc.processes.journal(caller, args["after"], args["limit"])


@syscall("proc.getpid")
def proc_getpid(svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The caller's libOS pid and its parent's."""
    return {"pid": caller.pid, "ppid": caller.ppid}


@syscall(
    "proc.spawn",
    image=Param(str, max_len=256),
    args=Param(dict, required=False),
    caps=Param(list, required=False, max_len=256),
    cwd=Param(str, required=False, max_len=4096),
)
def proc_spawn(svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Start a child from an image; ``caps`` (default: all of the caller's) only attenuate."""
    caps = args["caps"]
    if caps is not None and not all(isinstance(c, str) for c in caps):
        raise InvalidArgument("proc.spawn: caps must be a list of capability strings")
    pid = svc.processes.spawn(caller, args["image"], args["args"] or {}, caps, args["cwd"])
    return {"pid": pid}


@syscall("proc.wait", pid=Param(int), timeout=Param(float, required=False))
def proc_wait(
    svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Block until a process ends; returns {pid, state, exit_reason, result}."""
    timeout = args["timeout"]
    if timeout is not None and timeout < 0:
        raise InvalidArgument("proc.wait: timeout must not be negative")
    return svc.processes.wait(caller, args["pid"], timeout)


@syscall("proc.kill", pid=Param(int))
def proc_kill(svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Stop a process and all its descendants."""
    svc.processes.kill(caller, args["pid"])
    return {"pid": args["pid"]}


@syscall(
    "proc.exit",
    tool_ok=False,
    status=Param(str, required=False, default="returned"),
    result=Param(ANY, required=False),
    error=Param(str, required=False, max_len=64 * 1024),
)
def proc_exit(svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Record the caller's result; the runtime exits right after the reply."""
    if args["status"] not in ("returned", "error"):
        raise InvalidArgument("proc.exit: status must be 'returned' or 'error'")
    svc.processes.exit(caller, args["status"], args["result"], args["error"])
    return {}


@syscall("proc.children")
def proc_children(
    svc: ProcServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Any:
    """The caller's children: pid, image, state, exit_reason."""
    return svc.processes.children(caller)


@syscall("proc.checkpoint", tool_ok=False, name=Param(str, required=False, max_len=128))
def proc_checkpoint(
    svc: CheckpointServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Any:
    """Mark this point of the caller's own run: its journal position (this very call),
    its own objects and its capabilities; `agentlibos restore` starts a new process
    from it. Returns {"id", "name", "pid", "seq"}. Needs no capability (like getpid)."""
    name = check_checkpoint_name(args["name"])
    return svc.checkpoints.checkpoint(caller.pid, name, caller.seq).public()
