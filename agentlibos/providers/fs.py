"""The local file-system provider: path resolution and symlink-safe file operations.

Threat: an agent plants a symlink (or races one into place) inside a directory it may
write, pointing at a file it may not touch, then asks the broker -- which runs with the
operator's authority -- to follow it. Defence in two steps:

1. :meth:`LocalFs.resolve` turns the agent's path into the *real* path (every symlink in
   the existing prefix resolved); capabilities and policy are checked against that path,
   so a link is followed only when its target is itself permitted.
2. Every operation then opens the real path with ``openat2(RESOLVE_NO_SYMLINKS)`` (or a
   component-by-component ``O_NOFOLLOW`` walk where openat2 is missing), so a symlink
   swapped in after the check makes the call fail instead of escaping.

Further threats, each bounded here (docs/threat-model.md):

* A hard link planted in the granted tree to a file outside it: writes and appends
  refuse a file with more than one link, checked on the opened descriptor.
* ``/proc/self`` (and ``/proc/thread-self``, ``/proc/<pid>``, ``/proc/net``...) seen by
  the broker is the *supervisor*: :meth:`LocalFs.resolve` refuses any real path under
  ``/proc`` that names the calling process or one of its threads.
* Deep trees: a 1,500-level chain made Python recurse (``shutil.rmtree``, ``os.walk``,
  a recursive ``mkdir``) until ``RecursionError`` reached the supervisor's loop, and its
  paths pass ``PATH_MAX``. Every tree operation here is iterative, works on directory
  descriptors relative to their parent (``fstree.py``), and holds O(1) of them.
* Names that are not text (NUL, lone surrogates) are refused before any system call.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Any, Final

from agentlibos import libc
from agentlibos.errors import (
    Conflict,
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    PermissionDenied,
    from_oserror,
)
from agentlibos.kernel.text import is_text
from agentlibos.providers.fstree import discard_tree, remove_dir_tree, remove_tree, walk_tree

MAX_PATH: Final = 4096
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): struct open_how { u64 flags; u64 mode; u64 resolve; }
_SYS_OPENAT2: Final = 437  # same number on x86_64 and aarch64 (generic table)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_NO_SYMLINKS: Final = 0x04
_AT_FDCWD: Final = -100


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


# Whether this kernel has openat2 (5.6+); learnt at the first call.
_openat2_state: dict[str, bool] = {}


def _openat2(path: str, flags: int, mode: int,
             resolve: int = _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS) -> int:
    # openat2 rejects a mode without O_CREAT/O_TMPFILE (EINVAL), unlike open(2).
    # (O_TMPFILE contains the O_DIRECTORY bit, so test for all of its bits.)
    if not flags & os.O_CREAT and (flags & os.O_TMPFILE) != os.O_TMPFILE:
        mode = 0
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    # syscall(2) is variadic: pass every argument as a full-width long, or the size_t
    # argument arrives with garbage in its upper half (EINVAL).
    fd = int(
        libc.syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(_AT_FDCWD),
            ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


def _as_eloop(e: OSError, name: str, dir_fd: int) -> OSError:
    """O_NOFOLLOW with O_DIRECTORY meets a symlink as ENOTDIR: report ELOOP, as openat2 does.

    Otherwise the refusal reaches the agent as "Not a directory" (EINVAL) on old kernels
    and as a symlink refusal (EPERM) on new ones.
    """
    if e.errno == errno.ENOTDIR:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return e
        if stat_mod.S_ISLNK(st.st_mode):
            return OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
    return e


def _walk_open(path: str, flags: int, mode: int) -> int:
    """Fallback for kernels without openat2: open each component with O_NOFOLLOW."""
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in parts[:-1]:
            try:
                nfd = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError as e:
                raise _as_eloop(e, comp, fd) from None
            os.close(fd)
            fd = nfd
        if not parts:
            return os.open("/", flags | os.O_CLOEXEC)
        try:
            last = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as e:
            raise _as_eloop(e, parts[-1], fd) from None
        # O_PATH|O_NOFOLLOW opens a symlink itself rather than failing; refuse it too.
        if flags & os.O_PATH and stat_mod.S_ISLNK(os.fstat(last).st_mode):
            os.close(last)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), parts[-1])
        return last
    finally:
        os.close(fd)


def safe_open(path: str, flags: int, mode: int = 0o644) -> int:
    """Open an absolute path, refusing to traverse any symlink (ELOOP if one is there)."""
    if _openat2_state.get("available", True):
        try:
            return _openat2(path, flags, mode)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            _openat2_state["available"] = False
    return _walk_open(path, flags, mode)


def _std_realpath(path: str) -> str:
    """``os.path.realpath``, which recurses once per link in a chain of symlinks: a
    planted chain of 1,500 links would raise RecursionError in the supervisor."""
    try:
        return os.path.realpath(path)
    except RecursionError:
        raise InvalidArgument(
            f"path {path[:80]!r}...: too many levels of symbolic links") from None


def _join_tail(base: str, tail: list[str]) -> str:
    return os.path.join(base, *reversed(tail)) if tail else base


def realpath(path: str) -> str:
    """``os.path.realpath`` in two syscalls: let the kernel resolve, then ask it the answer.

    Opens the path with O_PATH (following symlinks, but never /proc magic links) and
    reads the name back from /proc/self/fd; a missing tail is resolved through its
    parent (iteratively: a 1,500-level missing tail once recursed that deep). Falls back
    to ``os.path.realpath`` when that cannot give an exact answer.
    """
    if not path.startswith("/") or any(c in (".", "..") for c in path.split("/")):
        # Only absolute, normalised paths take the fast way (the broker's always are):
        # "missing/.." is resolved lexically by os.path.realpath, physically by the kernel.
        return _std_realpath(path)
    tail: list[str] = []  # the missing components, last first
    p = path
    while True:
        try:
            fd = _openat2(p, os.O_PATH, 0, _RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            if p == "/" or os.path.islink(p):
                return _join_tail(_std_realpath(p), tail)  # a dangling link names its target
            p, name = os.path.split(p)
            tail.append(name)
            continue
        except OSError:
            return _join_tail(_std_realpath(p), tail)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return _join_tail(_std_realpath(p), tail)
        finally:
            os.close(fd)
        if not real.startswith("/") or real.endswith(" (deleted)"):
            return _join_tail(_std_realpath(p), tail)
        return _join_tail(real, tail)


def _own_proc_ids() -> set[str]:
    """The calling process's pid and its threads' ids: /proc/<tid> works for a thread
    too, though it is not listed."""
    pid = os.getpid()
    ids = {str(pid)}
    with contextlib.suppress(OSError):
        ids.update(os.listdir(f"/proc/{pid}/task"))
    return ids


def _under_own_proc(path: str, own: set[str]) -> bool:
    parts = path.split("/", 3)
    return (len(parts) >= 3 and parts[1] == "proc"
            and (parts[2] in ("self", "thread-self") or parts[2] in own))


_MAX_LINKS: Final = 40  # as the kernel's own limit; past it the call fails with ELOOP


def _passes_own_proc(lexical: str) -> bool:
    """Does resolving ``lexical`` pass through this process's /proc directory?

    Needed where the path crosses a /proc magic link: ``/dev/fd/0`` leads through
    /proc/self/fd/0 and comes out at the supervisor's terminal, ``/proc/self/root/etc``
    at its /etc, so the real path alone does not show that the supervisor was named.
    Resolves one component at a time (iteratively), like the kernel, and looks at
    every directory it passes.
    """
    own = _own_proc_ids()
    stack = list(reversed(lexical.split("/")))
    resolved, links = "/", 0
    while stack:
        comp = stack.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, comp)
        if _under_own_proc(candidate, own):
            return True
        try:
            st = os.lstat(candidate)
        except OSError:
            resolved = candidate  # missing (or unreadable): the rest is lexical
            continue
        if not stat_mod.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        links += 1
        if links > _MAX_LINKS:
            return False  # the operation itself will fail with ELOOP
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved = candidate
            continue
        if target.startswith("/"):
            resolved = "/"
        stack.extend(reversed(target.split("/")))
    return _under_own_proc(resolved, own)


def _crosses_magic_link(lexical: str) -> bool:
    """True when the kernel, refusing /proc magic links, cannot resolve ``lexical``."""
    try:
        os.close(_openat2(lexical, os.O_PATH, 0, _RESOLVE_NO_MAGICLINKS))
    except OSError as e:
        # ELOOP: a magic link (or a long chain of links); ENOSYS: no openat2 to ask;
        # ENAMETOOLONG: links expanded past PATH_MAX. Look the slow way in each case.
        return e.errno in (errno.ELOOP, errno.ENOSYS, errno.ENAMETOOLONG)
    return False


def _refuse_own_proc(real: str, asked: str, lexical: str) -> None:
    """Refuse a real path naming this (the supervisor's) process under /proc.

    The broker acts as the supervisor: its /proc/self is the supervisor, whose
    environment, memory maps, fds and cwd are not the agent's to see. realpath turns
    /proc/self, /proc/thread-self and /proc/net into /proc/<pid>/..., which the first
    test sees; a path through a magic link (/dev/fd/0, /proc/self/root/etc) comes out
    elsewhere, so such a path is also resolved step by step to see what it passed.
    """
    if (real.startswith("/proc/") and _under_own_proc(real, _own_proc_ids())) or (
            _crosses_magic_link(lexical) and _passes_own_proc(lexical)):
        raise PermissionDenied(
            f"path {asked[:80]!r} names the supervisor's own process (under /proc), "
            "which no brokered file call may touch", path=real)


@dataclass(frozen=True)
class Resolved:
    lexical: str  # the agent's path joined to its cwd, '..' collapsed
    real: str  # with every existing symlink resolved: what the check is made against

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.lexical,) if self.lexical != self.real else ()


def _fs_error(e: OSError, what: str, path: str) -> LibOSError:
    if e.errno == errno.ELOOP:
        return PermissionDenied(
            f"{what} {path!r}: a symbolic link appeared in the path after it was checked",
            path=path,
        )
    return from_oserror(e, f"{what} {path!r}")


class LocalFs:
    """File operations on the host, always by real (symlink-free) absolute paths."""

    def __init__(self, *, max_read_bytes: int = 16 << 20) -> None:
        self.max_read_bytes = max_read_bytes

    @staticmethod
    def resolve(cwd: str, path: str, *, follow_last: bool = True) -> Resolved:
        """Resolve ``path`` against ``cwd``; with ``follow_last=False`` a symlink in the
        last component is the target itself (as lstat and unlink see it), not followed."""
        if not path:
            raise InvalidArgument("invalid path '': empty")
        if "\x00" in path:
            raise InvalidArgument(f"invalid path {path[:80]!r}: it contains a NUL byte")
        if not is_text(path):
            raise InvalidArgument(
                f"invalid path {path[:80]!r}: not valid text (it holds a lone surrogate)")
        lexical = os.path.normpath(os.path.join(cwd, path))
        if lexical.startswith("//"):
            lexical = "/" + lexical.lstrip("/")
        if len(path) > MAX_PATH or len(os.fsencode(lexical)) > MAX_PATH:
            raise InvalidArgument(
                f"invalid path {path[:80]!r}...: longer than the limit of {MAX_PATH} bytes "
                "once joined to the working directory", limit=MAX_PATH)
        if follow_last or lexical == "/":
            real = realpath(lexical)
        else:
            parent, name = os.path.split(lexical)
            real = os.path.join(realpath(parent), name)
        if not is_text(real):
            # A host directory whose name is not UTF-8 on the way: it could be neither
            # audited nor named back to the agent.
            raise InvalidArgument(f"path {path[:80]!r} leads through a name that is not text")
        _refuse_own_proc(real, path, lexical)
        return Resolved(lexical, real)

    def _parent_fd(self, real: str) -> tuple[int, str]:
        parent, name = os.path.split(real)
        if not name:
            raise InvalidArgument("the root directory cannot be the target of this call")
        try:
            return safe_open(parent, os.O_PATH | os.O_DIRECTORY), name
        except OSError as e:
            raise _fs_error(e, "cannot open the directory of", real) from None

    def read(self, real: str, max_bytes: int | None) -> bytes:
        limit = min(max_bytes if max_bytes is not None else self.max_read_bytes,
                    self.max_read_bytes)
        try:
            # O_NONBLOCK: opening a FIFO (or some devices) would otherwise wait for a
            # peer, stopping the broker's one thread; the type is checked right after.
            fd = safe_open(real, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise _fs_error(e, "cannot read", real) from None
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"cannot read {real!r}: it is a directory")
            if not stat_mod.S_ISREG(st.st_mode):
                raise InvalidArgument(f"cannot read {real!r}: not a regular file")
            if st.st_size > limit:
                raise LimitExceeded(
                    f"{real!r} is {st.st_size} bytes; the read limit is {limit}",
                    size=st.st_size, limit=limit,
                )
            chunks = []
            remaining = limit + 1
            while remaining > 0:
                b = os.read(fd, min(remaining, 1 << 20))
                if not b:
                    break
                chunks.append(b)
                remaining -= len(b)
            data = b"".join(chunks)
            if len(data) > limit:
                raise LimitExceeded(f"{real!r} grew past the read limit of {limit} bytes")
            return data
        finally:
            os.close(fd)

    def write(self, real: str, data: bytes, *, append: bool = False) -> int:
        """Write a whole file atomically (temp file + rename), or append to it."""
        dfd, name = self._parent_fd(real)
        try:
            if append:
                try:
                    # O_NONBLOCK: see read(); a FIFO with no reader fails with ENXIO.
                    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                                 | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dfd)
                except OSError as e:
                    if e.errno == errno.ENXIO:
                        raise InvalidArgument(
                            f"cannot append to {real!r}: not a regular file") from None
                    raise _fs_error(e, "cannot append to", real) from None
                try:
                    st = os.fstat(fd)
                    if not stat_mod.S_ISREG(st.st_mode):
                        raise InvalidArgument(f"cannot append to {real!r}: not a regular file")
                    _refuse_hard_linked(st, "append to", real)
                    view = memoryview(data)
                    while view:  # os.write may write less than asked
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                return len(data)
            tmp = f".{name}.alos-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            except OSError as e:
                raise _fs_error(e, "cannot write", real) from None
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
                raise _fs_error(e, "cannot write", real) from None
            os.close(fd)
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    os.unlink(tmp, dir_fd=dfd)
                    raise InvalidArgument(f"cannot write {real!r}: it is a directory")
                if stat_mod.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    # rename() would replace only this name, but a write that quietly
                    # splits a linked file is a surprise either way: refuse like append.
                    os.unlink(tmp, dir_fd=dfd)
                    _refuse_hard_linked(st, "write", real)
            except FileNotFoundError:
                pass
            # rename() replaces a symlink at `name` itself rather than following it.
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return len(data)
        finally:
            os.close(dfd)

    def stat(self, real: str) -> dict[str, Any]:
        dfd, name = (-1, "")
        try:
            if real == "/":
                st = os.stat("/")
            else:
                dfd, name = self._parent_fd(real)
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            raise _fs_error(e, "cannot stat", real) from None
        finally:
            if dfd >= 0:
                os.close(dfd)
        return _stat_dict(os.path.basename(real) or "/", st)

    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]:
        try:
            fd = safe_open(real, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise _fs_error(e, "cannot list", real) from None
        out: list[dict[str, Any]] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    out.append(_stat_dict(entry.name, st))
                    if len(out) >= limit:
                        break
        finally:
            os.close(fd)
        out.sort(key=lambda d: str(d["name"]))
        return out

    def mkdir(self, real: str, *, parents: bool, exist_ok: bool) -> None:
        if len(os.fsencode(real)) > MAX_PATH:
            raise InvalidArgument(
                f"cannot create directory {real[:80]!r}...: longer than the limit of "
                f"{MAX_PATH} bytes", limit=MAX_PATH)
        if parents:
            # Iterative, one directory descriptor at a time: a 1,500-level path once
            # made a recursive mkdir raise RecursionError in the supervisor.
            self._make_parents(real)
        dfd, name = self._parent_fd(real)
        try:
            os.mkdir(name, 0o755, dir_fd=dfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not (exist_ok and stat_mod.S_ISDIR(st.st_mode)):
                raise Conflict(f"cannot create directory {real!r}: it exists") from None
        except OSError as e:
            raise _fs_error(e, "cannot create directory", real) from None
        finally:
            os.close(dfd)

    def _make_parents(self, real: str) -> None:
        """Create every missing directory above ``real``, walking down from ``/`` by
        descriptor with O_NOFOLLOW (a symlink on the way is refused, as in safe_open)."""
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        comp = "/"
        try:
            for comp in [p for p in real.split("/") if p][:-1]:
                try:
                    nfd = os.open(comp, flags, dir_fd=fd)
                except FileNotFoundError:
                    # Made meanwhile by someone else is fine: the open says what it is.
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as e:
            raise _fs_error(_as_eloop(e, comp, fd), "cannot create directory", real) from None
        finally:
            os.close(fd)

    def walk(self, real: str, *, limit: int) -> list[str]:
        """Every path below directory ``real`` (not following symlinks), at most ``limit``.

        Iterative and descriptor-based, so any depth (and paths past PATH_MAX) is walked
        whole; an entry that cannot be read is an error, never silently skipped (the
        caller checks each entry before a recursive delete).
        """
        out: list[str] = []
        dfd, name = self._parent_fd(real)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat_mod.S_ISDIR(st.st_mode):
                return out
            # closing(): on LimitExceeded the walker's descriptor is closed now, not
            # whenever the traceback that holds this frame goes.
            with contextlib.closing(walk_tree(dfd, name, real)) as entries:
                for path, _fd, _name, _is_dir in entries:
                    if path != real:
                        out.append(path)
                        if len(out) > limit:
                            raise LimitExceeded(f"more than {limit} entries below {real!r}")
        except FileNotFoundError:
            return out
        except OSError as e:
            raise _fs_error(e, "cannot walk", real) from None
        finally:
            os.close(dfd)
        return out

    def delete(self, real: str, *, recursive: bool) -> None:
        dfd, name = self._parent_fd(real)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat_mod.S_ISDIR(st.st_mode):
                if recursive:
                    remove_dir_tree(dfd, name, real)
                else:
                    os.rmdir(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                raise Conflict(
                    f"cannot delete {real!r}: the directory is not empty (pass recursive=True)"
                ) from None
            raise _fs_error(e, "cannot delete", real) from None
        finally:
            os.close(dfd)


def _refuse_hard_linked(st: os.stat_result, what: str, real: str) -> None:
    if st.st_nlink > 1:
        raise PermissionDenied(
            f"cannot {what} {real!r}: the file has {st.st_nlink} hard links, and another "
            "name may lie outside the granted tree; remove the extra links or write a "
            "new file", path=real, links=st.st_nlink)


def _stat_dict(name: str, st: os.stat_result) -> dict[str, Any]:
    mode = st.st_mode
    kind = (
        "dir" if stat_mod.S_ISDIR(mode)
        else "file" if stat_mod.S_ISREG(mode)
        else "symlink" if stat_mod.S_ISLNK(mode)
        else "other"
    )
    return {"name": name, "type": kind, "size": st.st_size, "mtime": st.st_mtime,
            "mode": stat_mod.S_IMODE(mode)}


__all__ = ["MAX_PATH", "LocalFs", "Resolved", "discard_tree", "realpath", "remove_tree",
           "safe_open"]
