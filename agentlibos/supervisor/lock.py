"""One supervisor per ``$AGENTLIBOS_HOME``: an exclusive lock on ``run/supervisor.lock``."""

from __future__ import annotations

import fcntl
import os

from agentlibos.config import Paths
from agentlibos.errors import Conflict


def lock_home(paths: Paths) -> int:
    """Take the home's lock (its fd, held for the supervisor's life), or Conflict naming
    the supervisor that holds it."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Conflict(f"another supervisor (pid {holder}) is using {paths.home}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
