"""Where state lives and the supervisor's own limits. Every default is documented here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agentlibos.errors import InvalidArgument
from agentlibos.store import ObjectQuota

# sun_path in struct sockaddr_un holds 108 bytes including the NUL.
MAX_IPC_PATH: Final = 107


def default_home() -> Path:
    env = os.environ.get("AGENTLIBOS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base).resolve() / "agentlibos"


@dataclass(frozen=True)
class Paths:
    """The layout of ``$AGENTLIBOS_HOME`` (docs/operations.md)."""

    home: Path

    @staticmethod
    def from_env(home: str | Path | None = None) -> Paths:
        return Paths(Path(home).expanduser().resolve() if home else default_home())

    @property
    def db(self) -> Path:
        return self.home / "state.db"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def work(self) -> Path:
        return self.home / "work"

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def lock(self) -> Path:
        return self.run / "supervisor.lock"

    def _ipc(self, name: str) -> str:
        path = str(self.run / name)
        if len(path.encode()) > MAX_IPC_PATH:
            raise InvalidArgument(
                f"socket path {path!r} is longer than {MAX_IPC_PATH} bytes, the kernel's "
                "limit for unix sockets; set AGENTLIBOS_HOME to a shorter directory"
            )
        return f"ipc://{path}"

    @property
    def broker_endpoint(self) -> str:
        return self._ipc("broker.sock")

    @property
    def control_endpoint(self) -> str:
        return self._ipc("control.sock")

    def check(self) -> None:
        """Refuse a home whose socket paths the kernel cannot bind, before anything exists."""
        _ = self.broker_endpoint, self.control_endpoint

    def ensure(self) -> None:
        # Check first: a refused home must leave no directories behind.
        self.check()
        for d in (self.home, self.run, self.work, self.scratch, self.logs, self.images):
            d.mkdir(parents=True, exist_ok=True)
        # run/ holds the control socket: only the operator may reach it.
        os.chmod(self.run, 0o700)
        # scratch/ is traversable (not listable) so a process can reach its own dir.
        os.chmod(self.scratch, 0o711)  # noqa: S103


@dataclass(frozen=True)
class SupervisorConfig:
    """Limits the supervisor enforces on every process tree."""

    # SIGTERM first, SIGKILL this long after, when a process is stopped.
    kill_grace_s: float = 2.0
    # A process tree (one `run` and all it spawns) may hold at most this many live
    # processes, and no process more than max_children live children.
    max_live_per_tree: int = 256
    max_children: int = 64
    max_depth: int = 16
    # JSON-encoded size limits on what crosses into the store.
    max_args_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    object_quota: ObjectQuota = field(default_factory=ObjectQuota)
    # A process that has not made its first syscall this long after fork is killed.
    start_timeout_s: float = 30.0
    # After serving a request the loop polls without sleeping this long, since the next
    # request usually follows at once (0 disables; see Supervisor._busy_poll).
    busy_poll_us: int = 150
    # An agent's stdout and stderr kept in logs/<pid>.log, at most this much; the rest
    # is discarded and the log says so.
    log_max_bytes: int = 8 << 20
