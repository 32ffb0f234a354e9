"""The C library functions the runtime calls directly, resolved once, at import.

Resolving a ctypes function (dlsym, building its function object) costs a few hundred
microseconds the first time; done here, in the zygote before it forks, every child
inherits the resolved functions instead of paying that on its critical path.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

LIBC: Final = ctypes.CDLL(None, use_errno=True)
prctl: Final = LIBC.prctl
unshare: Final = LIBC.unshare
setns: Final = LIBC.setns
mount: Final = LIBC.mount
umount2: Final = LIBC.umount2
capset: Final = LIBC.capset
capget: Final = LIBC.capget
syscall: Final = LIBC.syscall


def check(ret: int, what: str) -> None:
    """Raise OSError (with the errno) if a libc call returned non-zero."""
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
