"""The effect providers the supervisor performs agents' effects through, as one bundle.

Each provider is typed by a small Protocol, so a test or an embedding application can
hand ``Supervisor(paths, providers=Providers(files=..., clock=...))`` its own: an
in-memory file system, a recording HTTP client, a fixed clock. Capabilities, policy,
budgets and the audit are decided in the broker *before* a provider is called, so an
injected provider changes where effects land, never what an agent may do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentlibos.providers.fs import LocalFs, Resolved
from agentlibos.providers.net import HttpClient, HttpxClient


class FileProvider(Protocol):
    """Files by real (symlink-free) absolute path, as the fs handlers and process calls
    use them. ``resolve`` turns an agent's path into the path the capability check is
    made against; every other method acts on such a resolved path and raises the typed
    errors of ``agentlibos.errors`` (NotFound, Conflict, PermissionDenied...)."""

    def resolve(self, cwd: str, path: str, *, follow_last: bool = True) -> Resolved: ...
    def read(self, real: str, max_bytes: int | None) -> bytes: ...
    def write(self, real: str, data: bytes, *, append: bool = False) -> int: ...
    # {"name", "type" ("file"|"dir"|"symlink"|"other"), "size", "mtime", "mode"}
    def stat(self, real: str) -> dict[str, Any]: ...
    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]: ...
    def mkdir(self, real: str, *, parents: bool, exist_ok: bool) -> None: ...
    def walk(self, real: str, *, limit: int) -> list[str]: ...
    def delete(self, real: str, *, recursive: bool) -> None: ...


class ClockProvider(Protocol):
    """Wall-clock time in Unix seconds (what ``clock.now`` answers)."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


@dataclass(frozen=True)
class Providers:
    """What the supervisor performs effects through; every default is the real one."""

    files: FileProvider = field(default_factory=LocalFs)
    http: HttpClient = field(default_factory=HttpxClient)  # pools made at first use
    clock: ClockProvider = field(default_factory=SystemClock)


__all__ = ["ClockProvider", "FileProvider", "Providers", "SystemClock"]
