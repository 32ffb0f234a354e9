"""The provider seam: the whole runtime runs on injected providers.

A real supervisor, a real sandboxed agent speaking through the SDK, but files kept in a
dict and a clock that never moves. What must hold: the effects land in the injected
providers (not on the host), and capabilities and the audit still decide and record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.errors import Conflict, InvalidArgument, NotFound
from agentlibos.providers import FileProvider, Providers
from agentlibos.providers.fs import Resolved
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, run_proc

FIXED_TIME = 1_700_000_000.25


class MemoryFs:
    """A FileProvider over a dict: path -> bytes for files, path -> None for directories.

    Directories are created on demand for the cwd and its parents (the agent's cwd is a
    host directory the sandbox is built on, but its files live here)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | None] = {"/": None}

    def resolve(self, cwd: str, path: str, *, follow_last: bool = True) -> Resolved:
        if not path or "\x00" in path:
            raise InvalidArgument(f"invalid path {path!r}")
        lexical = os.path.normpath(os.path.join(cwd, path))
        self._ensure_dirs(cwd)
        return Resolved(lexical, lexical)  # no symlinks here: lexical is real

    def _ensure_dirs(self, path: str) -> None:
        while path not in self.files:
            self.files[path] = None
            path = os.path.dirname(path)

    def _parent_must_be_dir(self, real: str) -> None:
        if self.files.get(os.path.dirname(real), b"") is not None:
            raise NotFound(f"no directory {os.path.dirname(real)!r}")

    def read(self, real: str, max_bytes: int | None) -> bytes:
        data = self.files.get(real)
        if data is None:
            raise NotFound(f"no file {real!r}")
        return data if max_bytes is None else data[:max_bytes]

    def write(self, real: str, data: bytes, *, append: bool = False) -> int:
        self._parent_must_be_dir(real)
        old = self.files.get(real, b"")
        if old is None:
            raise Conflict(f"{real!r} is a directory")
        self.files[real] = old + data if append else data
        return len(data)

    def stat(self, real: str) -> dict[str, Any]:
        if real not in self.files:
            raise NotFound(f"no such path {real!r}")
        data = self.files[real]
        return {"name": os.path.basename(real) or "/",
                "type": "dir" if data is None else "file",
                "size": 0 if data is None else len(data), "mtime": FIXED_TIME,
                "mode": 0o755 if data is None else 0o644}

    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]:
        if self.files.get(real, b"") is not None:
            raise NotFound(f"no directory {real!r}")
        names = sorted(p for p in self.files if p != real and os.path.dirname(p) == real)
        return [self.stat(p) for p in names[:limit]]

    def mkdir(self, real: str, *, parents: bool, exist_ok: bool) -> None:
        if real in self.files:
            if exist_ok and self.files[real] is None:
                return
            raise Conflict(f"{real!r} exists")
        if parents:
            self._ensure_dirs(real)
        else:
            self._parent_must_be_dir(real)
            self.files[real] = None

    def walk(self, real: str, *, limit: int) -> list[str]:
        return sorted(p for p in self.files if p.startswith(real + "/"))[:limit]

    def delete(self, real: str, *, recursive: bool) -> None:
        if real not in self.files:
            raise NotFound(f"no such path {real!r}")
        below = self.walk(real, limit=1 << 30)
        if below and not recursive:
            raise Conflict(f"{real!r} is not empty")
        for p in [*below, real]:
            del self.files[p]


class FixedClock:
    def time(self) -> float:
        return FIXED_TIME


def test_memory_fs_is_a_file_provider() -> None:
    fs: FileProvider = MemoryFs()  # mypy checks the Protocol here
    assert fs.resolve("/w", "a/../b").real == "/w/b"


@pytest.fixture
def mem() -> MemoryFs:
    return MemoryFs()


@pytest.fixture
def mem_sup(paths: Paths, mem: MemoryFs) -> Iterator[Supervisor]:
    s = Supervisor(paths, sandbox=default_sandbox(),
                   providers=Providers(files=mem, clock=FixedClock()))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_a_sandboxed_agent_runs_on_an_injected_file_system_and_clock_under_its_caps(
    mem_sup: Supervisor, mem: MemoryFs, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    img = make_image("memfiles", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.fs.mkdir("out/deep", parents=True)
            ctx.fs.write_text("out/deep/a.txt", "alpha")
            ctx.fs.write_text("out/deep/a.txt", "+more", append=True)
            ctx.fs.write_bytes("out/b.bin", bytes(range(256)))
            try:
                ctx.fs.write_text(args["outside"], "no")
                refused = None
            except PermissionDenied as e:
                refused = e.code
            return {"text": ctx.fs.read_text("out/deep/a.txt"),
                    "listing": [(e["name"], e["type"]) for e in ctx.fs.list("out")],
                    "size": ctx.fs.stat("out/b.bin")["size"],
                    "now": ctx.clock.now(), "refused": refused}
    """, caps=["fs:rw:./**"])
    outside = str(tmp_path / "outside.txt")
    rec = run_proc(mem_sup, img, {"outside": outside}, cwd=proj)
    assert rec.exit_reason == "returned", rec.error
    real = str(proj.resolve())
    assert rec.result == {"text": "alpha+more", "listing": [["b.bin", "file"], ["deep", "dir"]],
                          "size": 256, "now": FIXED_TIME, "refused": "EPERM"}
    # The bytes are in the injected provider, and the host never saw them.
    assert mem.files[f"{real}/out/deep/a.txt"] == b"alpha+more"
    assert mem.files[f"{real}/out/b.bin"] == bytes(range(256))
    assert list(proj.iterdir()) == []
    assert not Path(outside).exists() and outside not in mem.files
    # Capabilities and the audit still apply: the write outside ./** was refused and
    # recorded, the ones inside allowed and recorded.
    audit = mem_sup.store.audit_records(pid=rec.pid)
    assert [a.call for a in audit if a.verdict == "deny"] == ["fs.write"]
    assert sum(1 for a in audit if a.call == "fs.write" and a.verdict == "allow") == 3
