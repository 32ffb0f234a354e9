"""The local file-system provider: path resolution and symlink-safe file operations.

Threat: an agent plants a symlink (or races one into place) inside a directory it may
write, pointing at a file it may not touch, then asks the broker -- which runs with the
operator's authority -- to follow it. Defence in two steps:

1. :meth:`LocalFs.resolve` (``fspath.resolve``) turns the agent's path into the *real*
   path (every symlink in the existing prefix resolved); capabilities and policy are
   checked against that path, so a link is followed only when its target is itself
   permitted.
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
import errno
import os
import stat as stat_mod
from typing import Any

from agentlibos.errors import (
    Conflict,
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    PermissionDenied,
    from_oserror,
)
from agentlibos.providers.fspath import (
    MAX_PATH,
    Resolved,
    as_eloop,
    realpath,
    resolve,
    safe_open,
)
from agentlibos.providers.fstree import discard_tree, remove_dir_tree, remove_tree, walk_tree


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
        return resolve(cwd, path, follow_last=follow_last)

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
                flags = (os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
                try:
                    # O_NONBLOCK: see read(); a FIFO with no reader fails with ENXIO.
                    try:  # O_EXCL first, to know whether this call made the file
                        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                        made = True
                    except FileExistsError:
                        fd = os.open(name, flags, dir_fd=dfd)
                        made = False
                except OSError as e:
                    if e.errno == errno.ENXIO:
                        raise InvalidArgument(
                            f"cannot append to {real!r}: not a regular file") from None
                    raise _fs_error(e, "cannot append to", real) from None
                try:
                    if made:
                        _give_to_dir_owner(fd, dfd)
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
                try:
                    old: os.stat_result | None = os.stat(name, dir_fd=dfd,
                                                         follow_symlinks=False)
                except FileNotFoundError:
                    old = None
                if old is None:
                    _give_to_dir_owner(fd, dfd)
                elif stat_mod.S_ISREG(old.st_mode):
                    _keep_owner_and_mode(fd, old)
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
                raise _fs_error(e, "cannot write", real) from None
            os.close(fd)
            if old is not None and stat_mod.S_ISDIR(old.st_mode):
                os.unlink(tmp, dir_fd=dfd)
                raise InvalidArgument(f"cannot write {real!r}: it is a directory")
            if old is not None and stat_mod.S_ISREG(old.st_mode) and old.st_nlink > 1:
                # rename() would replace only this name, but a write that quietly
                # splits a linked file is a surprise either way: refuse like append.
                os.unlink(tmp, dir_fd=dfd)
                _refuse_hard_linked(old, "write", real)
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
        return stat_dict(os.path.basename(real) or "/", st)

    def listdir(self, real: str, limit: int) -> list[dict[str, Any]]:
        try:
            fd = safe_open(real, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise _fs_error(e, "cannot list", real) from None
        out: list[dict[str, Any]] = []
        try:
            # The first ``limit`` names in order, whatever order the directory keeps:
            # the same directory gives the same listing (a replay compares it).
            with os.scandir(fd) as it:
                names = sorted(entry.name for entry in it)
            for name in names[:limit]:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since it was listed
                out.append(stat_dict(name, st))
        finally:
            os.close(fd)
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
            _give_name_to_dir_owner(name, dfd)
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
                        _give_name_to_dir_owner(comp, fd)
                    nfd = os.open(comp, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as e:
            raise _fs_error(as_eloop(e, comp, fd), "cannot create directory", real) from None
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


# Ownership. The supervisor usually runs as root, and the files an agent makes or rewrites
# in a user's tree must stay that user's, with the modes they chose, as a shell command's
# do (it runs as the cwd's owner): a rewrite goes through a new file and a rename, which
# would otherwise leave a private 0600 file root-owned and 0644, world-readable.

def _dir_owner(dfd: int) -> tuple[int, int] | None:
    """Who a new entry of directory ``dfd`` should belong to: its owner, when this is
    root making it for someone else; None when there is nothing to change."""
    if os.geteuid() != 0:
        return None
    st = os.fstat(dfd)
    return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)


def _give_to_dir_owner(fd: int, dfd: int) -> None:
    owner = _dir_owner(dfd)
    if owner is not None:
        os.fchown(fd, *owner)


def _give_name_to_dir_owner(name: str, dfd: int) -> None:
    owner = _dir_owner(dfd)
    if owner is not None:
        # Not following: were the new directory swapped for a link meanwhile, only the
        # link would change hands (in a directory its owner controls anyway).
        os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)


def _keep_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """Give the replacement of a regular file its owner and permission bits. Set-id bits
    are not carried over: an agent's bytes never become a set-id program."""
    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(PermissionError):  # unprivileged: it becomes ours
            os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat_mod.S_IMODE(old.st_mode) & 0o777)


def _refuse_hard_linked(st: os.stat_result, what: str, real: str) -> None:
    if st.st_nlink > 1:
        raise PermissionDenied(
            f"cannot {what} {real!r}: the file has {st.st_nlink} hard links, and another "
            "name may lie outside the granted tree; remove the extra links or write a "
            "new file", path=real, links=st.st_nlink)


def stat_dict(name: str, st: os.stat_result) -> dict[str, Any]:
    """What ``fs.stat`` and ``fs.list`` say of one entry."""
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
           "safe_open", "stat_dict"]
