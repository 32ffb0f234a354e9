"""Resolving an agent's path to the real path its capability check is made against.

Split from ``fs.py`` (the operations): this is the part an agent's paths are judged by.
:func:`resolve` turns the agent's path into the *real* path (every symlink in the existing
prefix resolved), refusing any that names the supervisor's own process under /proc;
:func:`safe_open` then opens such a real path refusing to traverse any symlink, so a link
swapped in after the check makes the call fail instead of escaping. The threats each
guard answers are listed in ``fs.py``'s docstring and docs/threat-model.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat as stat_mod
from dataclasses import dataclass, field
from typing import Final

from agentlibos import libc
from agentlibos.errors import InvalidArgument, PermissionDenied
from agentlibos.kernel.text import is_text

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


def as_eloop(e: OSError, name: str, dir_fd: int) -> OSError:
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
                raise as_eloop(e, comp, fd) from None
            os.close(fd)
            fd = nfd
        if not parts:
            return os.open("/", flags | os.O_CLOEXEC)
        try:
            last = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as e:
            raise as_eloop(e, parts[-1], fd) from None
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
    return _realpath(path)[0]


def _realpath(path: str) -> tuple[str, bool]:
    """:func:`realpath`, and whether one kernel walk of the whole path gave it (that
    walk refused every /proc magic link it would have followed)."""
    if not path.startswith("/") or any(c in (".", "..") for c in path.split("/")):
        # Only absolute, normalised paths take the fast way (the broker's always are):
        # "missing/.." is resolved lexically by os.path.realpath, physically by the kernel.
        return _std_realpath(path), False
    tail: list[str] = []  # the missing components, last first
    p = path
    while True:
        try:
            walked = _kernel_walk(p, os.O_PATH, want_stat=False)
        except FileNotFoundError:
            if p == "/" or os.path.islink(p):
                # A dangling link names its target.
                return _join_tail(_std_realpath(p), tail), False
            p, name = os.path.split(p)
            tail.append(name)
            continue
        except OSError:
            walked = None
        if walked is None:
            return _join_tail(_std_realpath(p), tail), False
        return _join_tail(walked[0], tail), not tail


def _kernel_walk(path: str, flags: int, *,
                 want_stat: bool) -> tuple[str, os.stat_result | None] | None:
    """An absolute, normalised path's real path in one kernel walk.

    Opens ``path`` with ``flags`` (O_PATH, perhaps O_NOFOLLOW), refusing /proc magic
    links anywhere the walk follows one, and reads the name back from /proc/self/fd.
    With O_NOFOLLOW the last component is opened itself (RESOLVE_NO_MAGICLINKS with
    O_PATH|O_NOFOLLOW hands back a link there), so its real path is the link's own.
    ``want_stat`` also takes the object's ``fstat`` -- an ``lstat`` with O_NOFOLLOW --
    on the same descriptor. Raises what the open raises; None when the name read back
    cannot be trusted. No decision is ever taken on a None: the caller asks the slow way.
    """
    fd = _openat2(path, flags, 0, _RESOLVE_NO_MAGICLINKS)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd) if want_stat else None
    except OSError:
        return None
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(" (deleted)"):
        return None
    return real, st


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
    _refuse_own_proc_real(real, asked)
    if _crosses_magic_link(lexical) and _passes_own_proc(lexical):
        _refuse(real, asked)


def _refuse_own_proc_real(real: str, asked: str) -> None:
    """The first test alone: enough when the real path came from a walk that refused
    every magic link it would have followed (``_kernel_walk``)."""
    if real.startswith("/proc/") and _under_own_proc(real, _own_proc_ids()):
        _refuse(real, asked)


def _refuse(real: str, asked: str) -> None:
    raise PermissionDenied(
        f"path {asked[:80]!r} names the supervisor's own process (under /proc), "
        "which no brokered file call may touch", path=real)


@dataclass(frozen=True)
class Resolved:
    lexical: str  # the agent's path joined to its cwd, '..' collapsed
    real: str  # with every existing symlink resolved: what the check is made against
    # The object's status, when the provider took it on the way (LocalFs does for
    # follow_last=False, from the descriptor whose name is ``real``): ``fs.stat``
    # answers from it instead of walking the path again. None: ask ``stat(real)``.
    st: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.lexical,) if self.lexical != self.real else ()


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
    # The common case, an existing path, takes one walk (open, readlink, close). That
    # walk refused magic links wherever it followed a link, so the slower question
    # _refuse_own_proc asks of a path through one (and its second walk) is settled.
    st: os.stat_result | None = None
    if follow_last or lexical == "/":
        real, whole = _realpath(lexical)
    else:
        try:
            walked = _kernel_walk(lexical, os.O_PATH | os.O_NOFOLLOW, want_stat=True)
        except OSError:
            walked = None
        whole = walked is not None
        if walked is not None:
            real, st = walked
        else:
            parent, name = os.path.split(lexical)
            real = os.path.join(realpath(parent), name)
    if not is_text(real):
        # A host directory whose name is not UTF-8 on the way: it could be neither
        # audited nor named back to the agent.
        raise InvalidArgument(f"path {path[:80]!r} leads through a name that is not text")
    if whole:
        _refuse_own_proc_real(real, path)
    else:
        _refuse_own_proc(real, path, lexical)
    return Resolved(lexical, real, st)


__all__ = ["MAX_PATH", "Resolved", "as_eloop", "realpath", "resolve", "safe_open"]
