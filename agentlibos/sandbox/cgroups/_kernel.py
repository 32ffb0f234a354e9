"""Applying, the kernel side: the cgroupfs interface, and killing a whole subtree.

Thin: reads, writes, mkdir and rmdir on cgroupfs, polled where the kernel lets go late.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from agentlibos.errors import SandboxError
from agentlibos.sandbox.cgroups import _v1
from agentlibos.sandbox.cgroups._common import FREEZE_TIMEOUT_S, SWEEP_TIMEOUT_S


class CgroupFs(Protocol):
    """The kernel interface the manager uses: cgroupfs files, and one signal.

    Tests substitute a fake that keeps cgroup v2's rules, to cover pure v2 hosts from
    a host that has none.
    """

    def read(self, path: str) -> str: ...
    def write(self, path: str, data: str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def subdirs(self, path: str) -> list[str]: ...
    def age_s(self, path: str) -> float: ...
    def kill_pid(self, pid: int) -> None: ...
    def writable(self, path: str) -> bool: ...


class HostFs:
    """:class:`CgroupFs` on the real cgroupfs."""

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def write(self, path: str, data: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # One write(2): cgroupfs parses each write on its own.
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]

    def age_s(self, path: str) -> float:
        # kernfs sets a cgroup directory's ctime when it is made and never after.
        return time.time() - os.stat(path).st_ctime

    def kill_pid(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def writable(self, path: str) -> bool:
        # access(2) answers for this process's euid and says no on a read-only mount.
        return os.access(path, os.W_OK)


HOST_FS: Final = HostFs()


def _why(e: OSError) -> str:
    """The reason an operator can act on, for an errno met on cgroupfs."""
    code = e.errno
    if code in (errno.EACCES, errno.EPERM):
        return ("permission denied: not root and no delegation (run as root, or give the "
                "supervisor a delegated cgroup, e.g. systemd-run -p Delegate=yes)")
    if code == errno.EROFS:
        return "cgroupfs is mounted read-only (a container without cgroup delegation?)"
    if code == errno.ENOENT:
        return "no such file (the controller is not mounted or not enabled there)"
    if code == errno.EEXIST:
        return "it already exists"
    return e.strerror or str(e)


def _poll(cond: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``cond`` with a short backoff until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _read_kv(fs: CgroupFs, path: str) -> dict[str, int]:
    """``key value`` lines (cgroup.events, memory.events, cpu.stat...); {} if absent."""
    try:
        text = fs.read(path)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def _read_int(fs: CgroupFs, path: str) -> int | None:
    try:
        return int(fs.read(path).strip())
    except (OSError, ValueError):
        return None


def _tree(fs: CgroupFs, root: str) -> list[str]:
    """``root`` and every cgroup below it, parents first; [] if it is gone."""
    if not fs.exists(root):
        return []
    out = [root]
    try:
        names = fs.subdirs(root)
    except OSError:
        return out
    for n in sorted(names):
        out += _tree(fs, f"{root}/{n}")
    return out


def _procs(fs: CgroupFs, d: str) -> set[int]:
    try:
        return {int(x) for x in fs.read(f"{d}/cgroup.procs").split()}
    except (OSError, ValueError):
        return set()


def _sweep(fs: CgroupFs, roots: Sequence[str]) -> set[int]:
    """Every pid in the subtrees at ``roots`` (v1 cgroup.procs lists only its own level)."""
    return {p for r in roots for d in _tree(fs, r) for p in _procs(fs, d)}


def _rmdir_all(fs: CgroupFs, dirs: Sequence[str], timeout_s: float) -> dict[str, str]:
    """rmdir deepest first, retrying until the deadline; return {dir left: why}."""
    pending = sorted(set(dirs), key=lambda d: d.count("/"), reverse=True)
    why: dict[str, str] = {}

    def attempt() -> bool:
        nonlocal pending
        left: list[str] = []
        for d in pending:
            try:
                fs.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                # EBUSY while exiting tasks still hold the cgroup: the kernel lets go a
                # little after the last one is gone, so this is polled, not failed.
                why[d] = _why(e)
                left.append(d)
            else:
                why.pop(d, None)
        pending = left
        return not pending

    _poll(attempt, timeout_s)
    return {d: why.get(d, "busy") for d in pending}


@dataclass(frozen=True)
class _KillVia:
    roots: tuple[str, ...]  # whose subtrees hold the processes (one per hierarchy)
    kill_file: str | None = None  # cgroup2 cgroup.kill
    freezer_state: str | None = None  # v1 freezer.state
    freeze_file: str | None = None  # cgroup2 cgroup.freeze (5.2 - 5.13)

    @property
    def name(self) -> str:
        return ("cgroup.kill" if self.kill_file else "freezer" if self.freezer_state
                else "cgroup.freeze" if self.freeze_file else "none")


def _freeze(fs: CgroupFs, via: _KillVia, on: bool) -> bool:
    try:
        if via.freezer_state is not None:
            fs.write(via.freezer_state, _v1.FROZEN if on else _v1.THAWED)
        elif via.freeze_file is not None:
            fs.write(via.freeze_file, "1" if on else "0")
    except FileNotFoundError:
        return False  # the cgroup is gone, and so is everything in it
    except OSError as e:
        raise SandboxError(f"cgroups: cannot {'freeze' if on else 'thaw'} "
                           f"{via.freezer_state or via.freeze_file}: {_why(e)}") from e
    return True


def _frozen(fs: CgroupFs, via: _KillVia) -> bool:
    if via.freezer_state is not None:
        try:
            return fs.read(via.freezer_state).strip() == _v1.FROZEN
        except OSError:
            return True
    if via.freeze_file is not None:
        events = f"{os.path.dirname(via.freeze_file)}/cgroup.events"
        return _read_kv(fs, events).get("frozen", 1) == 1
    return True


def _kill_tree(fs: CgroupFs, via: _KillVia) -> None:
    """SIGKILL every process in the subtrees at ``via.roots``; idempotent.

    Signalling pids read from cgroup.procs one by one races with fork (a child made
    after the read survives) and with pid reuse (a pid read, then freed and reused,
    hits a stranger). cgroup.kill does it in the kernel, atomically. Without it the
    group is frozen first: frozen tasks can neither fork nor exit, so the pids read
    are all there is and still theirs.
    """
    if via.kill_file is not None:
        try:
            fs.write(via.kill_file, "1")
        except FileNotFoundError:
            return  # already removed: nothing left to kill
        except OSError as e:
            raise SandboxError(f"cgroups: cannot write {via.kill_file}: {_why(e)}") from e
        return
    signalled: set[int] = set()
    if via.freezer_state is None and via.freeze_file is None:
        # Only a stale group's remains can get here (its part in the hierarchy that can
        # kill is already gone); create() refuses agents without a way to kill them.
        if not _sweep(fs, via.roots):
            return
    else:
        if not _freeze(fs, via, True):
            return
        frozen = _poll(lambda: _frozen(fs, via), FREEZE_TIMEOUT_S)
        try:
            for pid in _sweep(fs, via.roots):
                fs.kill_pid(pid)
                signalled.add(pid)
        finally:
            # v1 frozen tasks act on SIGKILL only once thawed.
            _freeze(fs, via, False)
        if frozen:
            return

    # A task in uninterruptible sleep can hold the freezer in FREEZING, and then a
    # forking process may have made children after the sweep: sweep until none is new.
    def settled() -> bool:
        new = _sweep(fs, via.roots) - signalled
        for pid in new:
            fs.kill_pid(pid)
        signalled.update(new)
        return not new

    if not _poll(settled, SWEEP_TIMEOUT_S):
        raise SandboxError(f"cgroups: processes kept appearing in {', '.join(via.roots)} while "
                           f"killing them one by one (the group could not be frozen)")

