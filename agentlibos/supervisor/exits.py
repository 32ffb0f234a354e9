"""How a child ended, in words: its wait status, and the last lines of its log."""

from __future__ import annotations

import os
import signal
from pathlib import Path


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
