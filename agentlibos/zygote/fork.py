"""fork(2) the zygote's way: libc's, without CPython's after-fork hooks (see fork)."""

from __future__ import annotations

import _random
import ctypes
import os
import sys
from typing import Final

# libc's fork(), called with the GIL held (PyDLL): see fork.
_LIBC_FORK: Final = ctypes.PyDLL(None, use_errno=True).fork
_LIBC_FORK.restype = ctypes.c_int
_LIBC_FORK.argtypes = ()


def fork() -> int:
    """fork(2) without CPython's after-fork work; the child's pid, 0 in the child.

    os.fork() runs the interpreter's after-fork hooks in the child: threading rebuilds its
    thread table (walking a WeakSet), logging re-creates its handlers' locks, random
    reseeds. Each write lands on a page the child shares with the zygote, and every one
    of those pages is then copied into the child: 650 KiB of the 890 KiB an agent owns
    right after its fork (Private_Dirty, measured on the preloaded zygote), in every
    agent, before it has done anything. What those hooks repair is state another thread
    could have left locked or half-written at the fork; the zygote never runs a second
    thread (it never creates a ZeroMQ context, and no module it imports starts one), so
    there is nothing to repair -- except random's state, which every child must not
    share: the child reseeds it (after_fork_child)."""
    pid = int(_LIBC_FORK())
    if pid < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fork: {os.strerror(e)}")
    if pid == 0:
        after_fork_child()
    return pid


def after_fork_child() -> None:
    """The part of os.fork()'s child hooks that still matters: a fresh random state.

    Seeded from the kernel by the C method (the Python one builds a 2.5 KiB int first).
    """
    random = sys.modules.get("random")
    if random is not None:
        inst = random._inst  # the module-level functions use this one
        _random.Random.seed(inst)
        inst.gauss_next = None
