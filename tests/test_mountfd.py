"""The descriptor-based mount API a pooled process gets its agent's binds through
(agentlibos/sandbox/mountfd.py): real clones, attached in real mount namespaces."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agentlibos import libc
from agentlibos.errors import SandboxError
from agentlibos.sandbox import mountfd
from agentlibos.sandbox.namespaces import (
    CLONE_NEWNS,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
)

MS_SHARED = 1 << 20


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    libc.check(libc.mount(None if source is None else source.encode(), target.encode(),
                          None if fstype is None else fstype.encode(),
                          ctypes.c_ulong(flags), None), f"mount {target}")


def in_child(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child in a mount namespace of its own; its answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            libc.check(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - the parent reports it
            out = f"{type(e).__name__}: {e}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data


@pytest.mark.privileged
def test_this_kernel_has_the_api_the_pool_needs() -> None:
    assert mountfd.missing() is None


@pytest.mark.privileged
def test_a_read_only_clone_is_read_only_where_attached_and_the_source_stays_writable(
        tmp_path: Path) -> None:
    src, target = tmp_path / "image", tmp_path / "target"
    src.mkdir()
    target.mkdir()
    (src / "agent.py").write_text("print(1)\n")

    def attach_and_look() -> str:
        fd = mountfd.clone_bind(str(src), MS_RDONLY | MS_NOSUID)
        mountfd.attach(fd, str(target))
        os.close(fd)
        flags = os.statvfs(target).f_flag
        try:
            (target / "new").write_text("x")
            wrote = "wrote"
        except OSError as e:
            wrote = errno.errorcode[e.errno or 0]
        return (f"{(target / 'agent.py').read_text().strip()} {wrote} "
                f"ro={bool(flags & os.ST_RDONLY)} nosuid={bool(flags & os.ST_NOSUID)}")

    assert in_child(attach_and_look) == "print(1) EROFS ro=True nosuid=True"
    # The flags were the copy's: the source is as writable as before.
    (src / "still").write_text("y")
    assert not os.path.ismount(target)


@pytest.mark.privileged
def test_a_writable_clone_writes_through_to_its_source(tmp_path: Path) -> None:
    src, target = tmp_path / "scratch", tmp_path / "target"
    src.mkdir()
    target.mkdir()

    def write() -> str:
        fd = mountfd.clone_bind(str(src), MS_NOSUID)
        mountfd.attach(fd, str(target))
        (target / "out.txt").write_text("from inside")
        return "ok"

    assert in_child(write) == "ok"
    assert (src / "out.txt").read_text() == "from inside"


@pytest.mark.privileged
def test_a_clone_leaves_its_sources_peer_group(tmp_path: Path) -> None:
    """A mount made later inside the source must not appear inside the agent's copy:
    the clone is made private (a plain clone would stay the source's peer)."""
    src, target = tmp_path / "shared", tmp_path / "target"
    src.mkdir()
    target.mkdir()

    def look(private: bool) -> str:
        def run() -> str:
            _mount("tmpfs", str(src), "tmpfs", 0)
            _mount(None, str(src), None, MS_SHARED)
            os.mkdir(src / "sub")
            if private:
                fd = mountfd.clone_bind(str(src), MS_NOSUID)
            else:  # what open_tree alone gives, to show the test can tell the two apart
                fd = int(libc.syscall(ctypes.c_long(mountfd.SYS_OPEN_TREE),
                                      ctypes.c_int(mountfd.AT_FDCWD), str(src).encode(),
                                      ctypes.c_uint(mountfd.OPEN_TREE_CLONE
                                                    | mountfd.AT_RECURSIVE)))
                assert fd >= 0
            mountfd.attach(fd, str(target))
            _mount("tmpfs", str(src / "sub"), "tmpfs", 0)
            return f"propagated={os.path.ismount(target / 'sub')}"
        return run()

    assert in_child(lambda: look(private=False)) == "propagated=True"
    assert in_child(lambda: look(private=True)) == "propagated=False"


def test_a_missing_source_is_a_sandbox_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"cannot clone .*nowhere"):
        mountfd.clone_bind(str(tmp_path / "nowhere"), MS_NOSUID)


@pytest.mark.privileged
def test_attaching_at_a_missing_target_names_it(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()

    def attach() -> str:
        fd = mountfd.clone_bind(str(tmp_path / "src"), MS_NOSUID)
        try:
            mountfd.attach(fd, str(tmp_path / "absent"))
        except SandboxError as e:
            return e.message
        return "attached"

    assert "cannot attach the bind at" in in_child(attach)
    assert "absent" in in_child(attach)
