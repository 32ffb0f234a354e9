"""An agent's stdout and stderr: a pipe the supervisor drains into the process's log.

The agent never holds the log file: it writes to a pipe, and the loop copies what it
reads to ``logs/<pid>.log`` up to the per-process cap, then writes one line saying the
log was truncated and discards the rest (reading on, so the agent never blocks on a
full pipe). Each turn reads at most ``CHUNK`` bytes per process: a chatty agent costs
the loop a bounded slice of time, and its own CPU limit bounds how fast it can write.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from agentlibos.kernel.units import format_size

CHUNK: Final = 64 << 10


class LogSink:
    def __init__(self, fd: int, path: Path, cap_bytes: int) -> None:
        self.fd: int | None = fd
        self.path = path
        self.cap = cap_bytes
        self.written = 0
        self.discarded = 0
        self.truncated = False
        os.set_blocking(fd, False)
        self._out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def on_readable(self) -> bool:
        """Copy one chunk; False once the agent's end is closed (EOF)."""
        if self.fd is None:
            return False
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        room = self.cap - self.written
        if room > 0:
            keep = data[:room]
            self._write(keep)
            self.written += len(keep)
            data = data[len(keep):]
        if data:
            self.discarded += len(data)
            if not self.truncated:
                self.truncated = True
                self._write(f"\n[agentlibos: log truncated at {format_size(self.cap)}; "
                            "further output is discarded]\n".encode())
        return True

    def drain(self, max_chunks: int = 64) -> None:
        """What is left in the pipe when the process has ended (bounded)."""
        for _ in range(max_chunks):
            if not self.on_readable():
                return

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full disk must not stop the supervisor
            os.write(self._out, data)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            os.close(self._out)
        self._out = -1
