"""The effect providers the supervisor performs agents' effects through, as one bundle.

Each provider is typed by a small Protocol, so a test or an embedding application can
hand ``Supervisor(paths, providers=Providers(files=..., shell=..., human=...))`` its
own: an in-memory file system, a recording shell, a model client, a chat-bot bridge to
the approval queue. Without ``providers=``, the supervisor builds them from the
operator's ``[providers]`` config (``registry.py``). Capabilities, policy, budgets and
the audit are decided in the broker *before* a provider is called, so an injected
provider changes where effects land, never what an agent may do (docs/providers.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentlibos.errors import InvalidArgument
from agentlibos.providers.fs import LocalFs, Resolved
from agentlibos.providers.human import HumanChannel
from agentlibos.providers.models import ModelProvider
from agentlibos.providers.net import HttpClient, HttpxClient
from agentlibos.providers.shell import ShellProvider


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


class FixedClock:
    """A clock that never moves (``clock = "fixed:<unix-seconds>"``): tests, replays."""

    def __init__(self, at: float) -> None:
        self.at = at

    def time(self) -> float:
        return self.at


@dataclass(frozen=True)
class Providers:
    """What the supervisor performs effects through; every default is the real one."""

    files: FileProvider = field(default_factory=LocalFs)
    http: HttpClient = field(default_factory=HttpxClient)  # pools made at first use
    clock: ClockProvider = field(default_factory=SystemClock)
    # None: each command in a sandbox of its own (supervisor/sandbox_shell.py), which
    # needs the running supervisor's zygote and cgroups, so the supervisor makes it.
    shell: ShellProvider | None = None
    # Model providers by name, added to the operator's [models.NAME] (a name in both:
    # this one). The agent still needs model:call:<name>/<model>.
    models: Mapping[str, ModelProvider] = field(default_factory=dict)
    # None: only the durable queue (CLI, console, inline prompt) answers asks.
    human: HumanChannel | None = None

    def __post_init__(self) -> None:
        for name in self.models:  # a model is named provider/model: no '/' in a provider
            if not isinstance(name, str) or not name or "/" in name:
                raise InvalidArgument(f"Providers(models=...): {name!r} is not a provider "
                                      "name (non-empty, without '/')")


__all__ = ["ClockProvider", "FileProvider", "FixedClock", "Providers", "SystemClock"]
