"""The process record: what the process table holds about one AgentProcess."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

# The range of a SQLite INTEGER, where every pid, id and integer argument the runtime
# stores must lie: past it the store cannot even look a number up.
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

State = Literal["created", "running", "waiting", "attention", "exited", "killed", "failed"]
STATES: Final[tuple[State, ...]] = ("created", "running", "waiting", "attention", "exited",
                                    "killed", "failed")
# `attention`: stopped after a crash with an external effect that may or may not have
# happened and must not be redone blindly; it waits for `agentlibos resolve`. Not ended.
LIVE_STATES: Final[frozenset[str]] = frozenset({"created", "running", "waiting", "attention"})

# Why a process ended. The state follows from the reason (see state_for_reason):
#   returned        the entry function returned, or the agent called proc.exit  -> exited
#   error           the entry function raised                                   -> failed
#   crashed         the host process died without saying why (signal, os._exit)  -> failed
#   start-failed    it could not be started (image, sandbox layer, fork)         -> failed
#   killed          stopped by `agentlibos kill`, its parent or an ancestor     -> killed
#   memory/pids/wall a resource limit was hit                                    -> killed
#   supervisor-lost the supervisor died while the process was live (and it was  -> failed
#                   not resumed: its image says on_crash = "fail", or max_resumes)
#   diverged        on resume, a call differed from the journal at its seq      -> failed
#   resolved-fail   the operator answered `resolve --fail` to its attention     -> failed
EXIT_REASONS: Final[tuple[str, ...]] = (
    "returned",
    "error",
    "crashed",
    "start-failed",
    "killed",
    "memory",
    "pids",
    "wall",
    "supervisor-lost",
    "diverged",
    "resolved-fail",
)


def state_for_reason(reason: str) -> State:
    if reason == "returned":
        return "exited"
    if reason in ("killed", "memory", "pids", "wall"):
        return "killed"
    return "failed"


@dataclass
class ProcessRecord:
    pid: int
    ppid: int | None
    root_pid: int
    image: str
    image_path: str
    state: State
    cwd: str
    args: dict[str, Any]
    limits: dict[str, Any]
    policy_id: int
    host_pid: int | None = None
    exit_reason: str | None = None
    result: Any = None
    error: str | None = None
    layers: list[str] = field(default_factory=list)
    missing_layers: list[str] = field(default_factory=list)
    created_at: float = 0.0
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    wait: str | None = None  # what it waits on while `waiting` (proc:7, approval:12...)
    evicted: bool = False  # stopped while it waits; resumed by replay when the wait ends
    # A tree root's model tokens: {limit, used, prompt_tokens, completion_tokens, calls}
    # (kernel/tokens.py); None on other rows and on trees that never had a budget or call.
    tokens: dict[str, Any] | None = None
    # A tree root's amounts of the tree quotas (kernel/budgets.py): {object_bytes,
    # objects, write_bytes, journal_bytes}; None on other rows.
    usage: dict[str, int] | None = None
    resumes: int = 0  # how many times it was resumed after a crash (durable execution)
    # While `attention`: the effect a crash left unsettled, {"seq", "call", "request"}.
    attention: dict[str, Any] | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def public(self) -> dict[str, Any]:
        """The record ``run --json`` prints and ``proc.wait`` returns."""
        out: dict[str, Any] = {
            "pid": self.pid,
            "state": self.state,
            "exit_reason": self.exit_reason,
            "result": self.result,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    def table_row(self) -> dict[str, Any]:
        """Everything ``ps --json`` shows."""
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "root_pid": self.root_pid,
            "host_pid": self.host_pid,
            "image": self.image,
            "state": self.state,
            "exit_reason": self.exit_reason,
            "error": self.error,
            "cwd": self.cwd,
            "limits": self.limits,
            "layers": self.layers,
            "missing_layers": self.missing_layers,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "ended_at": self.ended_at,
            "wait": self.wait,
            # Stopped while it waits: said of a live process only (one that ended after
            # an eviction keeps the column's flag in the store, not in what is shown).
            "evicted": self.evicted and self.live,
            "tokens": self.tokens,
            "usage": self.usage,
            "resumes": self.resumes,
            "attention": self.attention,
        }
