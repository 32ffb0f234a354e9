"""An in-memory file system (``[providers] files = "memory"``), for tests and embedding.

Every brokered ``fs`` call of every agent lands in one dict in the supervisor's memory
instead of on the host: nothing is written to disk and nothing survives the supervisor.
It is not a sandbox: an agent's own process still sees the host through its mounts
(its image, the interpreter), and ``shell.exec`` commands and ``image.register`` read
the host; only brokered file calls reach this provider. Capabilities, policy, budgets
and the audit apply exactly as with ``LocalFs`` (they are decided before any provider
is called).

No symlinks and no hard links exist here, so a lexical path is its real path. The cwd
of each call (a host path the agent's sandbox is built on) and its parents exist as
directories from the first call that names them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from agentlibos.errors import Conflict, InvalidArgument, LimitExceeded, NotFound
from agentlibos.kernel.text import is_text
from agentlibos.providers.fs import MAX_PATH, Resolved


@dataclass
class _Node:
    data: bytes | None  # None: a directory
    mtime: float


class MemoryFs:
    """A ``FileProvider`` over a dict of absolute paths. Safe from several threads
    (large reads run off the loop), each operation atomic under one lock."""

    def __init__(self, *, max_read_bytes: int = 16 << 20) -> None:
        self.max_read_bytes = max_read_bytes
        self._nodes: dict[str, _Node] = {"/": _Node(None, time.time())}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ for embedders

    def files(self) -> dict[str, bytes]:
        """A snapshot: every file's path and bytes (what the agents wrote)."""
        with self._lock:
            return {p: n.data for p, n in self._nodes.items() if n.data is not None}

    def exists(self, path: str) -> bool:
        with self._lock:
            return path in self._nodes

    # ------------------------------------------------------------ FileProvider

    def resolve(self, cwd: str, path: str, *, follow_last: bool = True) -> Resolved:
        if not isinstance(path, str) or not path or not is_text(path) or "\x00" in path:
            raise InvalidArgument(f"invalid path {path!r}")
        lexical = os.path.normpath(os.path.join(cwd, path))
        if len(lexical.encode()) > MAX_PATH:
            raise InvalidArgument(f"path longer than {MAX_PATH} bytes")
        with self._lock:
            self._make_dirs(os.path.normpath(cwd))
        return Resolved(lexical, lexical)  # no symlinks here: lexical is real

    def read(self, real: str, max_bytes: int | None) -> bytes:
        with self._lock:
            node = self._nodes.get(real)
        if node is None:
            raise NotFound(f"no such file: {real}", path=real)
        if node.data is None:
            raise InvalidArgument(f"cannot read {real!r}: it is a directory")
        # As LocalFs: a file over the limit is refused, never silently cut.
        limit = min(self.max_read_bytes if max_bytes is None else max_bytes,
                    self.max_read_bytes)
        if len(node.data) > limit:
            raise LimitExceeded(f"{real!r} is {len(node.data)} bytes; the read limit is "
                                f"{limit}", size=len(node.data), limit=limit)
        return node.data

    def write(self, real: str, data: bytes, *, append: bool = False) -> int:
        with self._lock:
            self._parent_dir(real)
            old = self._nodes.get(real)
            if old is not None and old.data is None:
                raise Conflict(f"{real} is a directory", path=real)
            before = old.data if old is not None and append and old.data else b""
            self._nodes[real] = _Node(before + bytes(data), time.time())
        return len(data)

    def stat(self, real: str) -> dict[str, Any]:
        with self._lock:
            return self._stat(real)

    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            self._dir(real)
            names = sorted(p for p in self._nodes if p != real and os.path.dirname(p) == real)
            return [self._stat(p) for p in names[:limit]]

    def mkdir(self, real: str, *, parents: bool, exist_ok: bool) -> None:
        with self._lock:
            node = self._nodes.get(real)
            if node is not None:
                if exist_ok and node.data is None:
                    return
                raise Conflict(f"{real} exists", path=real)
            if parents:
                self._make_dirs(real)
            else:
                self._parent_dir(real)
                self._nodes[real] = _Node(None, time.time())

    def walk(self, real: str, *, limit: int) -> list[str]:
        with self._lock:
            self._dir(real)
            return self._below(real)[:limit]

    def delete(self, real: str, *, recursive: bool) -> None:
        with self._lock:
            if real not in self._nodes or real == "/":
                raise NotFound(f"no such path: {real}", path=real)
            below = self._below(real)
            if below and not recursive:
                raise Conflict(f"{real} is a directory that is not empty", path=real)
            for p in [*below, real]:
                del self._nodes[p]

    # ------------------------------------------------------------ (lock held)

    def _stat(self, real: str) -> dict[str, Any]:
        node = self._nodes.get(real)
        if node is None:
            raise NotFound(f"no such path: {real}", path=real)
        is_dir = node.data is None
        return {"name": os.path.basename(real) or "/", "type": "dir" if is_dir else "file",
                "size": 0 if node.data is None else len(node.data), "mtime": node.mtime,
                "mode": 0o755 if is_dir else 0o644}

    def _below(self, real: str) -> list[str]:
        prefix = real.rstrip("/") + "/"
        return sorted(p for p in self._nodes if p.startswith(prefix) and p != real)

    def _dir(self, real: str) -> None:
        node = self._nodes.get(real)
        if node is None:
            raise NotFound(f"no such directory: {real}", path=real)
        if node.data is not None:
            raise Conflict(f"{real} is not a directory", path=real)

    def _parent_dir(self, real: str) -> None:
        self._dir(os.path.dirname(real))

    def _make_dirs(self, path: str) -> None:
        missing: list[str] = []
        while path not in self._nodes:
            missing.append(path)
            path = os.path.dirname(path)
        if self._nodes[path].data is not None:
            raise Conflict(f"{path} is not a directory", path=path)
        now = time.time()
        for p in reversed(missing):
            self._nodes[p] = _Node(None, now)


__all__ = ["MemoryFs"]
