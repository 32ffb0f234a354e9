"""The descriptor-based mount API: how a pooled process, already inside its own root,
receives the binds that are its agent's own (docs/sandbox.md, "The warm pool").

A pooled process pivots into its private tree and drops the host's root before it has
an assignment: the old root's lazy unmount waits out an RCU grace period (0.3-1.1 ms
measured), which is then off every spawn's path. From there no host path can be named,
so its agent's binds -- the image, its scratch directory, the broker socket -- come as
descriptors instead. The supervisor clones each from its own view
(``open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)``: a detached copy, in no namespace),
sets its flags (``mount_setattr``) and sends it with the assignment; the process
attaches it at its target (``move_mount``). What it can reach is what it was sent.

Linux 5.12 or later (mount_setattr); where these calls are missing there is no pool,
and every spawn takes the cold path (:func:`missing` says why).
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

from agentlibos import libc
from agentlibos.errors import SandboxError

# Numbered alike on every architecture (the unified table, from 424 on).
SYS_OPEN_TREE: Final = 428
SYS_MOVE_MOUNT: Final = 429
SYS_MOUNT_SETATTR: Final = 442

OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
AT_FDCWD: Final = -100
AT_EMPTY_PATH: Final = 0x1000
AT_RECURSIVE: Final = 0x8000
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4

MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8
MS_PRIVATE: Final = 1 << 18

# The old API's remount flags (namespaces.MountOps binds) and their new names.
_ATTRS: Final = ((1, MOUNT_ATTR_RDONLY), (2, MOUNT_ATTR_NOSUID), (4, MOUNT_ATTR_NODEV),
                 (8, MOUNT_ATTR_NOEXEC))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _sys(nr: int, *args: object) -> int:
    ret = int(libc.syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _setattr(fd: int, attr: _MountAttr, flags: int) -> None:
    _sys(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH | flags),
         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def clone_bind(source: str, remount_flags: int, *, at: int | None = None) -> int:
    """A detached copy of the mount tree at ``source`` with the flags a bind remount
    with ``remount_flags`` (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC) would give its top
    mount -- what ``mount --rbind`` then ``mount -o remount,bind`` makes on the cold
    path. Returns a close-on-exec descriptor; raises SandboxError naming the source.

    Every mount in the copy is made private first: a clone stays in its source's peer
    group, and a mount the host later made inside the image would otherwise appear in
    the agent's view (the cold path makes its whole tree private for the same reason).

    ``at``: a descriptor of ``source`` already opened (namespaces.open_no_symlinks, for a
    strict source): that is cloned, and ``source`` only names it in errors.
    """
    try:
        if at is None:
            fd = _sys(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(source),
                      ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))
        else:
            fd = _sys(SYS_OPEN_TREE, ctypes.c_int(at), b"",
                      ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
                                    | AT_EMPTY_PATH))
    except OSError as e:
        raise SandboxError(f"namespaces: cannot clone {source}: {e.strerror}",
                           errno=e.errno) from None
    try:
        _setattr(fd, _MountAttr(0, 0, MS_PRIVATE, 0), AT_RECURSIVE)
        want = sum(attr for ms, attr in _ATTRS if remount_flags & ms)
        every = sum(attr for _, attr in _ATTRS)
        # Exactly these flags, as a bind remount sets them: the clone kept its source's.
        _setattr(fd, _MountAttr(want, every & ~want, 0, 0), 0)
    except OSError as e:
        os.close(fd)
        raise SandboxError(f"namespaces: cannot set the flags of {source}'s copy: "
                           f"{e.strerror}", errno=e.errno) from None
    return fd


def attach(fd: int, target: str) -> None:
    """Attach the detached tree ``fd`` at ``target`` (in the caller's mount namespace)."""
    try:
        _sys(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
             os.fsencode(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    except OSError as e:
        raise SandboxError(f"namespaces: cannot attach the bind at {target}: {e.strerror}",
                           errno=e.errno) from None


def missing() -> str | None:
    """None if this kernel has open_tree, mount_setattr and move_mount (and we may use
    them), else why not -- for the pool's template and ``agentlibos doctor``."""
    try:
        fd = _sys(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), b"/",
                  ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC))
    except OSError as e:
        return f"open_tree: {e.strerror} (Linux 5.2 or later, and CAP_SYS_ADMIN)"
    try:
        _setattr(fd, _MountAttr(0, 0, MS_PRIVATE, 0), 0)
    except OSError as e:
        return f"mount_setattr: {e.strerror} (Linux 5.12 or later)"
    finally:
        os.close(fd)
    return None
