"""Deep directory trees, walked and removed without recursion and without following links.

An agent can make a 1,500-level chain in its scratch directory or its granted tree;
``shutil.rmtree`` and ``os.walk`` recurse in Python (RecursionError in the one loop
every agent shares) and lose their way past PATH_MAX. Here every walk works on
directory descriptors relative to their parent with an explicit stack, holds O(1) of
them, climbs back through ``..`` and checks it arrived where it came from, and never
crosses a symlink or a mount.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final

from agentlibos.errors import InvalidArgument, LibOSError, NotFound, from_oserror

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One directory on the way down: enough to climb back to it and check it is the
    same one (the tree may change meanwhile), without keeping its descriptor open."""

    name: str
    path: str
    dev: int
    ino: int
    pending: list[str] = field(default_factory=list)  # subdirectories not yet visited


def walk_tree(dfd: int, name: str, path: str) -> Generator[tuple[str, int, str, bool], None, None]:
    """Every entry of the directory ``name`` in ``dfd``, children before their directory.

    Yields ``(path, parent_fd, entry_name, is_dir)``; ``parent_fd`` is open while the
    consumer acts on the entry (it may unlink or rmdir it). Never follows a symlink,
    never leaves the file system ``name`` is on, and keeps one descriptor open whatever
    the depth: it climbs back through ``..`` and checks it arrived where it came from.
    """
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        top = os.fstat(fd)
        stack = [_Level(name, path, top.st_dev, top.st_ino)]
        scan = True
        while True:
            level = stack[-1]
            if scan:
                with os.scandir(fd) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            level.pending.append(entry.name)
                        else:
                            yield os.path.join(level.path, entry.name), fd, entry.name, False
                scan = False
            if level.pending:
                child = level.pending.pop()
                try:
                    cfd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    # Swapped for a symlink or a file since the scan: it is a leaf.
                    yield os.path.join(level.path, child), fd, child, False
                    continue
                cst = os.fstat(cfd)
                if cst.st_dev != top.st_dev:
                    os.close(cfd)
                    raise OSError(errno.EXDEV, "another file system is mounted below",
                                  os.path.join(level.path, child))
                os.close(fd)
                fd = cfd
                stack.append(_Level(child, os.path.join(level.path, child),
                                    cst.st_dev, cst.st_ino))
                scan = True
                continue
            stack.pop()
            if not stack:
                os.close(fd)
                fd = -1
                yield level.path, dfd, level.name, True
                return
            pfd = os.open("..", _DIR_FLAGS, dir_fd=fd)
            pst = os.fstat(pfd)
            os.close(fd)
            fd = pfd
            if (pst.st_dev, pst.st_ino) != (stack[-1].dev, stack[-1].ino):
                raise OSError(errno.EBUSY, "the tree was moved while it was walked",
                              level.path)
            yield level.path, fd, level.name, True
    finally:
        if fd >= 0:
            os.close(fd)


def remove_dir_tree(dfd: int, name: str, path: str) -> None:
    with contextlib.closing(walk_tree(dfd, name, path)) as entries:
        for _path, parent_fd, entry, is_dir in entries:
            try:
                if is_dir:
                    os.rmdir(entry, dir_fd=parent_fd)
                else:
                    os.unlink(entry, dir_fd=parent_fd)
            except FileNotFoundError:
                pass  # gone already: what was wanted


def remove_tree(path: str, *, missing_ok: bool = True) -> None:
    """Delete ``path`` and everything below it, of any depth, never following a symlink.

    For the supervisor's own cleanup (a process's scratch directory at exit and at
    start). Works by directory descriptor relative to its parent, with an explicit
    stack and O(1) descriptors, so a 2,000-level chain whose paths are far beyond
    PATH_MAX is removed like any other; ``shutil.rmtree`` recursed there until
    RecursionError. A symlink (even at ``path`` itself) is removed, not followed; a
    file system mounted below is not entered (``Conflict``, nothing across it removed).
    Raises a typed :class:`LibOSError` on failure.
    """
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise InvalidArgument(f"remove_tree: {path!r} names no removable directory")
    try:
        dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise NotFound(f"cannot remove {path!r}: it does not exist") from None
    except OSError as e:
        raise from_oserror(e, f"cannot remove {path!r}") from None
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            if missing_ok:
                return
            raise NotFound(f"cannot remove {path!r}: it does not exist") from None
        if stat_mod.S_ISDIR(st.st_mode):
            remove_dir_tree(dfd, name, path)
        else:
            os.unlink(name, dir_fd=dfd)
    except OSError as e:
        raise from_oserror(e, f"cannot remove {path!r}") from None
    finally:
        os.close(dfd)


def discard_tree(path: str | os.PathLike[str]) -> None:
    """:func:`remove_tree` for cleanup that must not fail its caller: errors are logged.

    The supervisor's own housekeeping (scratch at exit and start, dead tools' files):
    an agent-made tree of any depth is removed, and one that cannot be is reported,
    never raised into the loop.
    """
    try:
        remove_tree(os.fspath(path), missing_ok=True)
    except (LibOSError, OSError) as e:
        logging.getLogger(__name__).warning("cannot remove %s: %s", os.fspath(path), e)
