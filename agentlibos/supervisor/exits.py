"""How a child ended, in words: its wait status, and the last lines of its log; and the
record of its end in the store."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Protocol

from agentlibos.kernel.process import State, state_for_reason
from agentlibos.store import Store
from agentlibos.zygote.child import START_FAILED_STATUS


class Ending(Protocol):
    """What the process table knows of a process when its host process ends."""

    kill_reason: str | None
    kill_detail: str | None
    start_error: str | None
    ready: bool
    exit_status: str | None
    exit_error: str | None
    log_path: Path


def describe_status(status: int) -> str:
    """'killed by signal SIGSEGV', 'exited with status 3'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


def log_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` non-empty lines of a log (read from its last 8 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip()]


def why_ended(live: Ending, status: int | None) -> tuple[str, str | None]:
    """Its exit reason and error: the supervisor's decision first, then its start,
    then what the agent said in ``proc.exit``, then its wait status."""
    if live.kill_reason is not None:
        return live.kill_reason, live.kill_detail
    if live.start_error is not None or (
        status is not None and os.WIFEXITED(status)
        and os.WEXITSTATUS(status) == START_FAILED_STATUS and not live.ready
    ):
        return "start-failed", live.start_error or _last_line(live.log_path)
    if live.exit_status == "returned":
        return "returned", None
    if live.exit_status == "error":
        return "error", live.exit_error
    if status is None:
        return "crashed", "the process ended without a status"
    return "crashed", f"{describe_status(status)} before reporting a result"


def _last_line(log_path: Path) -> str:
    """Why a process that sent no start report could not start: its log's last line."""
    tail = log_tail(log_path, 1)
    return (f"the process could not start: {tail[-1]}" if tail
            else "the process could not start (no report, empty log)")


def record_end(store: Store, pid: int, reason: str, error: str | None, *,
               result: Any = None, status: int | None = None,
               usage: dict[str, int] | None = None, pids_limit_hit: bool = False) -> State:
    """Write how ``pid`` ended: its record and its ``proc.exit`` audit record. The process
    table's ``finalize`` writes every end through here, and ``agentlibos kill`` with no
    supervisor running writes the same records a kill on one would have."""
    state = state_for_reason(reason)
    store.update_process(pid, state=state, exit_reason=reason, result=result, error=error,
                         ended_at=time.time(), wait=None)
    store.append_audit(pid, "proc.exit", f"proc:{pid}", "info",
                       {"state": state, "exit_reason": reason, "error": error,
                        "status": status, "usage": usage or {},
                        "pids_limit_hit": pids_limit_hit})
    return state
