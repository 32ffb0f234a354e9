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

import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agentlibos.errors import InvalidArgument, PermissionDenied
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


class StateGuard:
    """A :class:`FileProvider` that keeps the runtime's own state out of reach.

    ``$AGENTLIBOS_HOME`` holds the database (capabilities, policies, the audit chain),
    the operator's ``config.toml``, registered images, every agent's log and the
    control socket. A brokered file call acts as the supervisor, so an agent whose
    capabilities cover a directory holding the home (the built-in policy's
    ``fs:*:./**`` with ``--cwd ~``, say) could otherwise rewrite the config that the
    next supervisor sandboxes by, or the database. Every path that is, or lies under,
    one of the runtime's entries of the home (:data:`RUNTIME_ENTRIES`, ``state.db*``)
    is refused, after symlinks are resolved, whatever the capabilities say -- as the
    shell's view never binds the home. Anything else a user keeps in the home (a
    project beside the runtime's files) stays the capabilities' to decide. One
    exception: a process whose cwd lies in a ``work/<n>/`` directory of the home
    (``run``'s default) reaches that directory, its own working files. A recursive
    delete of the home, or of a directory holding it, is refused as well.
    """

    # What the runtime keeps in the home (config.Paths, supervisor/jit.py): its own.
    RUNTIME_ENTRIES = frozenset({"config.toml", "run", "work", "scratch", "logs", "images",
                                 "jit"})

    def __init__(self, inner: FileProvider, home: Path | str) -> None:
        self.inner = inner
        self.home = os.path.realpath(home)
        self._work = os.path.join(self.home, "work") + "/"

    def _runtimes(self, real: str) -> bool:
        """Whether ``real`` is, or lies in, one of the runtime's entries of the home."""
        if not real.startswith(self.home + "/"):
            return False
        top = real[len(self.home) + 1:].split("/", 1)[0]
        return top in self.RUNTIME_ENTRIES or top.startswith("state.db")

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one guard per supervisor, kept
    def _own_work(self, cwd: str) -> str | None:
        """The home's ``work/<n>`` directory the cwd lies in, if it does."""
        real = os.path.realpath(cwd)
        if not real.startswith(self._work):
            return None
        return self._work + real[len(self._work):].split("/", 1)[0]

    def resolve(self, cwd: str, path: str, *, follow_last: bool = True) -> Resolved:
        r = self.inner.resolve(cwd, path, follow_last=follow_last)
        if self._runtimes(r.real):
            own = self._own_work(cwd)
            if own is None or not (r.real == own or r.real.startswith(own + "/")):
                raise PermissionDenied(
                    f"path {path[:80]!r} lies in the runtime's state directory "
                    f"({self.home}), which no brokered file call may touch", path=r.real)
        return r

    def read(self, real: str, max_bytes: int | None) -> bytes:
        return self.inner.read(real, max_bytes)

    def write(self, real: str, data: bytes, *, append: bool = False) -> int:
        return self.inner.write(real, data, append=append)

    def stat(self, real: str) -> dict[str, Any]:
        return self.inner.stat(real)

    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]:
        return self.inner.listdir(real, limit)

    def mkdir(self, real: str, *, parents: bool, exist_ok: bool) -> None:
        self.inner.mkdir(real, parents=parents, exist_ok=exist_ok)

    def walk(self, real: str, *, limit: int) -> list[str]:
        self._refuse_holder(real)
        return self.inner.walk(real, limit=limit)

    def delete(self, real: str, *, recursive: bool) -> None:
        if recursive:
            self._refuse_holder(real)
        self.inner.delete(real, recursive=recursive)

    def _refuse_holder(self, real: str) -> None:
        if (self.home + "/").startswith(real.rstrip("/") + "/"):  # the home, or above it
            raise PermissionDenied(
                f"{real!r} is or holds the runtime's state directory ({self.home}), which no "
                "brokered file call may delete", path=real)


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

    def guarded_files(self, home: Path) -> FileProvider:
        """``files`` as the broker uses them: behind :class:`StateGuard` for ``home``."""
        return StateGuard(self.files, home)

    def __post_init__(self) -> None:
        for name in self.models:  # a model is named provider/model: no '/' in a provider
            if not isinstance(name, str) or not name or "/" in name:
                raise InvalidArgument(f"Providers(models=...): {name!r} is not a provider "
                                      "name (non-empty, without '/')")


__all__ = ["ClockProvider", "FileProvider", "FixedClock", "Providers", "StateGuard",
           "SystemClock"]
