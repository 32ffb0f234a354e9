"""PR_SET_PDEATHSIG: a process that dies with its parent."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

from agentlibos import libc

PR_SET_PDEATHSIG: Final = 1



def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Die with ``sig`` when the parent dies (kills orphans if the supervisor is kill -9'd)."""
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_PDEATHSIG): {os.strerror(e)}")
