"""Privileges: no_new_privs, dropping every capability, and leaving uid 0.

* ``no_new_privs`` -- no execve can ever grant more (setuid binaries, file capabilities);
  required by seccomp and Landlock for an unprivileged caller.
* capabilities -- an agent forked from a root supervisor would otherwise hold every
  capability: the bounding set is emptied (nothing can come back) and the effective,
  permitted, inheritable and ambient sets cleared.
* uid -- where the mount namespace is in place the agent also runs as an unprivileged
  uid (65534 by default), so even files it can see that are owned by root and writable
  by their owner are not writable by it. Without the mount namespace the interpreter's
  own files may sit under a directory only root can enter (/root/.pyenv), so the uid is
  kept and the other layers carry the load.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

from agentlibos import libc
from agentlibos.errors import SandboxError

PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


def _prctl(option: int, arg2: int = 0) -> int:
    return int(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)))


def set_no_new_privs() -> None:
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        e = ctypes.get_errno()
        raise SandboxError(f"no_new_privs: prctl failed: {os.strerror(e)}")
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise SandboxError("no_new_privs: set, but the kernel does not report it")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 63  # every bit the kernel could know; unknown ones fail harmlessly


def drop_bounding_set() -> None:
    """Empty the bounding and ambient sets: no capability can ever be gained again.

    First of the three steps (it needs CAP_SETPCAP, which clearing takes away); the
    process keeps its effective set, so a uid switch can still follow.
    """
    for cap in range(_last_cap() + 1):
        if _prctl(PR_CAPBSET_DROP, cap) != 0:
            e = ctypes.get_errno()
            raise SandboxError(f"capabilities: cannot drop {cap} from the bounding set: "
                               f"{os.strerror(e)}")
    libc.prctl(ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL),
                ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets; verify every set is empty."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        e = ctypes.get_errno()
        raise SandboxError(f"capabilities: capset: {os.strerror(e)}")
    # Verify with capget (cheaper than /proc/self/status, which forked children pay for).
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    got = (_CapData * 2)(_CapData(1, 1, 1), _CapData(1, 1, 1))
    if libc.capget(ctypes.byref(header), ctypes.byref(got)) != 0:
        e = ctypes.get_errno()
        raise SandboxError(f"capabilities: capget: {os.strerror(e)}")
    if any(d.effective or d.permitted or d.inheritable for d in got):
        raise SandboxError("capabilities: a capability set is not empty after clearing")
    if libc.prctl(ctypes.c_int(PR_CAPBSET_READ), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise SandboxError("capabilities: the bounding set still holds CAP_CHOWN")


def switch_uid(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good (real, effective and saved), with no groups."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SandboxError(f"uid: cannot become {uid}:{gid}: {e.strerror}") from None
    if os.getresuid() != (uid, uid, uid):
        raise SandboxError(f"uid: still {os.getresuid()} after switching to {uid}")
