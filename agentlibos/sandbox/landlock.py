"""Landlock: which files an AgentProcess may touch, no TCP, and no reaching out by IPC.

A small ctypes binding to the three Landlock syscalls (the PyPI ``landlock`` package
knows no network or scope rights and misreads errno). What it stops:

* raw ``open()``, ``execve()``, ``mkdir()``, ``unlink()``, ``rename()``, ``link()`` ...
  outside the paths the profile names (the state database, other processes'
  directories, the user's files, ``~/.ssh``) -- even when the mount namespace is off
  or has a hole;
* TCP ``bind()`` and ``connect()`` (ABI >= 4): no reaching a local service by TCP and
  no binding a chosen port (but see ``listen()`` below);
* signals to processes outside the agent's own domain (ABI >= 6): an agent cannot
  kill the supervisor, the broker or another agent, though it can signal itself and its
  own children;
* ``connect()`` to abstract UNIX sockets made outside the domain (ABI >= 6): those
  sockets live in no file system, so no path rule could otherwise cover them.

Not covered, by design of the kernel (other layers carry these):

* UDP, raw and other socket families -- Landlock's network rights are TCP only; the
  seccomp filter (socket families) and the network namespace cover the rest. On
  kernels with erratum 1 fixed (this host), MPTCP, SCTP and SMC stream sockets are not
  TCP for Landlock either, although MPTCP falls back to plain TCP with a peer that does
  not speak it. And ``listen()`` on an unbound TCP socket auto-binds an ephemeral port
  without any ``bind()`` for Landlock to see. So seccomp must allow ``socket()`` only
  for AF_UNIX, and the network namespace has no route anyway.
* ``connect()`` to *pathname* UNIX sockets -- on purpose: the broker is reached through
  such a socket (``ipc://`` under ``run/``). Which of them an agent can reach is decided
  by what the mount namespace shows it (a later ABI adds a pathname-socket scope; this
  binding does not use it yet).
* ``stat``, ``chdir``, ``chmod``, ``chown``, ``access``, ``utime``, ``fcntl``,
  ``flock``, ``setxattr`` on visible paths; truncation before ABI 3; device ioctls
  before ABI 5; files opened before :func:`apply` (Landlock checks at ``open``).

Ordering constraints (see ``contain.py``):

* Landlock is **per thread**: :func:`apply` restricts the calling thread and the
  threads and processes it creates *afterwards*. A thread that already exists (a
  ZeroMQ I/O thread, say) stays unconfined, and because threads share memory, agent
  code could run through it. So it must be applied before any thread exists, and
  :func:`apply` refuses when the process has more than one thread.
* Children inherit the domain, forever, across ``fork`` and ``execve``; it can only be
  narrowed (stacked, at most 16 layers), never lifted.
* A domain with file-system rights handled cannot ``mount`` or ``pivot_root``, so the
  mount namespace is built first; rule paths are opened after it, in the child, so
  rules attach to what the agent will actually see.
* ``no_new_privs`` (or CAP_SYS_ADMIN) is required by ``landlock_restrict_self``;
  :func:`apply` sets it if an earlier step has not.

Deciding is pure (:func:`plan`, :func:`rights_for_inode`, :func:`ruleset_attr_bytes`)
and unit-tested for every ABI; :func:`apply` only opens paths and calls the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from agentlibos import libc
from agentlibos.errors import SandboxError
from agentlibos.sandbox import privileges

__all__ = [
    "KNOWN_ABI",
    "LANDLOCK_LAYER",
    "LandlockRules",
    "PathRule",
    "Plan",
    "abi_version",
    "access_names",
    "apply",
    "describe",
    "path_beneath_bytes",
    "plan",
    "rights_for_inode",
    "ruleset_attr_bytes",
]

LANDLOCK_LAYER: Final = "landlock"

# The newest ABI whose rights this binding knows. A newer kernel is used at this level:
# Landlock is backward compatible, so an ABI-7 ruleset means the same on ABI 9.
KNOWN_ABI: Final = 7

# Syscall numbers: the same on x86_64 and aarch64 (both use the generic table past 424).
_SYS_CREATE_RULESET: Final = 444
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446

_CREATE_RULESET_VERSION: Final = 1 << 0
_RULE_PATH_BENEATH: Final = 1


# Access rights, from include/uapi/linux/landlock.h.
ACCESS_FS_EXECUTE: Final = 1 << 0
ACCESS_FS_WRITE_FILE: Final = 1 << 1
ACCESS_FS_READ_FILE: Final = 1 << 2
ACCESS_FS_READ_DIR: Final = 1 << 3
ACCESS_FS_REMOVE_DIR: Final = 1 << 4
ACCESS_FS_REMOVE_FILE: Final = 1 << 5
ACCESS_FS_MAKE_CHAR: Final = 1 << 6
ACCESS_FS_MAKE_DIR: Final = 1 << 7
ACCESS_FS_MAKE_REG: Final = 1 << 8
ACCESS_FS_MAKE_SOCK: Final = 1 << 9
ACCESS_FS_MAKE_FIFO: Final = 1 << 10
ACCESS_FS_MAKE_BLOCK: Final = 1 << 11
ACCESS_FS_MAKE_SYM: Final = 1 << 12
ACCESS_FS_REFER: Final = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE: Final = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV: Final = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP: Final = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP: Final = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1  # ABI 6

# Every file-system right each ABI knows. Handling all of them is what makes the
# ruleset deny by default: a right left unhandled is simply allowed everywhere.
_FS_ABI1: Final = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_BY_ABI: Final[dict[int, int]] = {
    1: _FS_ABI1,
    2: _FS_ABI1 | ACCESS_FS_REFER,
    3: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    4: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    5: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV,
    6: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV,
    7: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV,
}

# The only rights a rule on a non-directory may carry; anything else is EINVAL from
# landlock_add_rule.
ACCESS_FILE: Final = (ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE
                      | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV)

READ_ONLY_ACCESS: Final = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR

# Everything except:
# * MAKE_CHAR, MAKE_BLOCK -- a device node is a door to a driver; an agent never needs
#   one (and without CAP_MKNOD it could not make one, but that is another layer);
# * IOCTL_DEV -- ioctl on devices is kernel attack surface (TTY TIOCSTI and the like);
#   ioctls on regular files, pipes and sockets are not covered by it and keep working,
#   and an isatty() probe that is refused just answers "not a tty".
# MAKE_SOCK and MAKE_FIFO stay: a socket or FIFO in the agent's own directory reaches
# nobody outside it (connecting to a pathname socket is not a file-system right).
READ_WRITE_ACCESS: Final = (_FS_BY_ABI[KNOWN_ABI]
                            & ~(ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_BLOCK
                                | ACCESS_FS_IOCTL_DEV))

# sizeof(struct landlock_ruleset_attr) as each ABI knows it: handled_access_fs,
# + handled_access_net (ABI 4), + scoped (ABI 6). Passing a larger struct than the
# kernel knows fails with E2BIG unless the tail is zero; passing exactly what the ABI
# knows keeps old kernels happy and the intent obvious.
_RULESET_ATTR_SIZE: Final[dict[int, int]] = {1: 8, 2: 8, 3: 8, 4: 16, 5: 16, 6: 24, 7: 24}

_FS_NAMES: Final[dict[int, str]] = {
    ACCESS_FS_EXECUTE: "execute", ACCESS_FS_WRITE_FILE: "write_file",
    ACCESS_FS_READ_FILE: "read_file", ACCESS_FS_READ_DIR: "read_dir",
    ACCESS_FS_REMOVE_DIR: "remove_dir", ACCESS_FS_REMOVE_FILE: "remove_file",
    ACCESS_FS_MAKE_CHAR: "make_char", ACCESS_FS_MAKE_DIR: "make_dir",
    ACCESS_FS_MAKE_REG: "make_reg", ACCESS_FS_MAKE_SOCK: "make_sock",
    ACCESS_FS_MAKE_FIFO: "make_fifo", ACCESS_FS_MAKE_BLOCK: "make_block",
    ACCESS_FS_MAKE_SYM: "make_sym", ACCESS_FS_REFER: "refer",
    ACCESS_FS_TRUNCATE: "truncate", ACCESS_FS_IOCTL_DEV: "ioctl_dev",
}


@dataclass(frozen=True)
class LandlockRules:
    """What the agent may reach. Prepared by the supervisor before fork.

    Paths must be absolute; they are opened (following symlinks) in the child when
    :func:`apply` runs, so a rule on ``/lib`` -> ``usr/lib`` covers ``/usr/lib``.
    """

    read_only: tuple[str, ...]  # read + execute files, list directories
    read_write: tuple[str, ...]  # also create, remove, write, truncate, link/rename within
    deny_tcp: bool = True  # every TCP bind and connect refused (ABI >= 4)
    scope_signals: bool = True  # no signals to processes outside the domain (ABI >= 6)
    scope_abstract_unix: bool = True  # no connect to outside abstract sockets (ABI >= 6)
    min_abi: int = 1  # refuse to run on a kernel older than this
    # Directories whose entries (names, not contents) may be listed, recursively: the
    # root of a private mount tree, where every file worth reading has its own rule.
    list_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathRule:
    """One path-beneath rule. ``access`` is for a directory; see :func:`rights_for_inode`."""

    path: str
    access: int


@dataclass(frozen=True)
class Plan:
    """Everything :func:`apply` will ask of the kernel, decided without one."""

    abi: int  # the ABI level the plan uses: min(kernel ABI, KNOWN_ABI)
    handled_access_fs: int
    handled_access_net: int
    scoped: int
    paths: tuple[PathRule, ...]
    # Protections the rules asked for that this ABI cannot enforce (best effort), for
    # doctor, ps and the audit to report: e.g. "tcp bind/connect (needs ABI 4)".
    unenforced: tuple[str, ...]
    restrict_flags: int = 0  # landlock_restrict_self flags: default audit logging

    @property
    def ruleset_attr_size(self) -> int:
        return _RULESET_ATTR_SIZE[self.abi]


def plan(rules: LandlockRules, abi: int) -> Plan:
    """Decide the ruleset for a kernel offering ``abi``. Pure; raises SandboxError.

    Follows the kernel documentation's best-effort table: each right or scope is used
    only from the ABI that introduced it (REFER 2, TRUNCATE 3, TCP 4, IOCTL_DEV 5,
    scopes 6; ABI 7 adds only audit-logging flags). ``rules.min_abi`` is the operator's
    floor below which best effort is not good enough.
    """
    if not 1 <= rules.min_abi <= KNOWN_ABI:
        raise SandboxError(
            f"landlock: min_abi {rules.min_abi} is outside 1..{KNOWN_ABI}, the ABIs this "
            f"binding knows", layer=LANDLOCK_LAYER)
    if abi < 1:
        raise SandboxError("landlock: not available on this kernel (ABI 0)",
                           layer=LANDLOCK_LAYER, abi=abi)
    if abi < rules.min_abi:
        raise SandboxError(
            f"landlock: kernel offers ABI {abi}, the profile requires at least "
            f"{rules.min_abi}", layer=LANDLOCK_LAYER, abi=abi, min_abi=rules.min_abi)
    used = min(abi, KNOWN_ABI)
    fs = _FS_BY_ABI[used]

    by_path: dict[str, int] = {}
    for paths, access in ((rules.list_only, ACCESS_FS_READ_DIR),
                          (rules.read_only, READ_ONLY_ACCESS),
                          (rules.read_write, READ_WRITE_ACCESS)):
        for p in paths:
            _check_path(p)
            # One rule per path; listed twice means the union (a layer allows an access
            # if any of its rules on the way does, so this changes nothing but noise).
            by_path[p] = by_path.get(p, 0) | (access & fs)

    net = 0
    scoped = 0
    unenforced: list[str] = []
    if used < 3:
        unenforced.append("truncate (needs ABI 3)")
    if used < 5:
        unenforced.append("device ioctl (needs ABI 5)")
    if rules.deny_tcp:
        if used >= 4:
            net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
        else:
            unenforced.append("tcp bind/connect (needs ABI 4)")
    if rules.scope_signals:
        if used >= 6:
            scoped |= SCOPE_SIGNAL
        else:
            unenforced.append("signal scoping (needs ABI 6)")
    if rules.scope_abstract_unix:
        if used >= 6:
            scoped |= SCOPE_ABSTRACT_UNIX_SOCKET
        else:
            unenforced.append("abstract unix socket scoping (needs ABI 6)")
    return Plan(
        abi=used,
        handled_access_fs=fs,
        handled_access_net=net,
        scoped=scoped,
        paths=tuple(PathRule(p, a) for p, a in by_path.items()),
        unenforced=tuple(unenforced),
    )


def _check_path(p: str) -> None:
    # Relative paths would resolve against whatever the child's cwd is at apply time:
    # the plan is made before fork, so it must not depend on that.
    if not p.startswith("/"):
        raise SandboxError(f"landlock: rule path {p!r} is not absolute",
                           layer=LANDLOCK_LAYER, path=p)
    if "\0" in p:
        raise SandboxError(f"landlock: rule path {p!r} contains NUL",
                           layer=LANDLOCK_LAYER, path=p)


def rights_for_inode(access: int, is_dir: bool) -> int:
    """The part of ``access`` a rule on this kind of inode may carry.

    Directory-only rights (read_dir, make_*, remove_*, refer) on a regular file, a
    device or a socket make ``landlock_add_rule`` fail with EINVAL.
    """
    return access if is_dir else access & ACCESS_FILE


def ruleset_attr_bytes(p: Plan) -> bytes:
    """struct landlock_ruleset_attr, cut to the size the plan's ABI knows."""
    full = struct.pack("=QQQ", p.handled_access_fs, p.handled_access_net, p.scoped)
    return full[:p.ruleset_attr_size]


def path_beneath_bytes(access: int, fd: int) -> bytes:
    """struct landlock_path_beneath_attr: packed, 12 bytes (u64 allowed_access, s32 fd)."""
    return struct.pack("=Qi", access, fd)


def access_names(access: int) -> str:
    """``read_file|read_dir``: for error messages and docs."""
    return "|".join(name for bit, name in _FS_NAMES.items() if access & bit) or "none"


# --- the kernel side ---------------------------------------------------------------

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def _errname(e: int) -> str:
    return f"{errno.errorcode.get(e, str(e))} ({os.strerror(e)})"


def _probe() -> tuple[int, int]:
    """(ABI, 0) or (0, errno). syscall(2) is variadic: every argument is a sized ctype,
    since a bare Python int for a size_t would leave the upper half of the register
    undefined."""
    r = int(_syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.c_void_p(None),
                     ctypes.c_size_t(0), ctypes.c_long(_CREATE_RULESET_VERSION)))
    if r < 0:
        return 0, ctypes.get_errno()
    return r, 0


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when it is not built in or disabled. Never raises."""
    try:
        return _probe()[0]
    except (OSError, AttributeError):  # no libc syscall(): not Linux
        return 0


def describe() -> str:
    """One line for ``agentlibos doctor``."""
    try:
        abi, err = _probe()
    except (OSError, AttributeError):
        return "not available: no syscall() in this C library (not Linux?)"
    if abi == 0:
        if err == errno.ENOSYS:
            return "not available: kernel built without Landlock (ENOSYS; needs 5.13+ " \
                   "and CONFIG_SECURITY_LANDLOCK)"
        if err == errno.EOPNOTSUPP:
            return "not available: Landlock is disabled at boot (EOPNOTSUPP; add " \
                   "landlock to the lsm= kernel parameter)"
        return f"not available: landlock_create_ruleset failed with {_errname(err)}"
    features = ["fs"]
    if abi >= 4:
        features.append("net TCP")
    if abi >= 6:
        features.append("signal and abstract-unix scoping")
    line = f"ABI {abi} ({', '.join(features)})"
    if abi < 3:
        line += "; truncate not restricted before ABI 3"
    if abi > KNOWN_ABI:
        line += f"; used at ABI {KNOWN_ABI}, the newest this binding knows"
    return line


def apply(rules: LandlockRules, *, optional_paths: Collection[str] = (),
          rehearse: bool = False) -> int:
    """Restrict the calling thread (and every process it later creates) to ``rules``.

    ``rehearse``: do everything but the restriction itself -- the ruleset is built and
    dropped, nothing is enforced. A pooled process rehearses with the template's paths
    while it waits, so that the pages of the code and data this path touches are its
    own before its assignment, not faulted in on the spawn's path (docs/sandbox.md).

    Returns the ABI level used (see :attr:`Plan.abi`). Raises SandboxError naming the
    reason and errno on any failure; nothing is enforced then, and the caller must not
    run the agent (fail closed).

    A path that does not exist is an error -- a typo in a profile must not silently
    shrink what the agent can do in a way nobody notices, nor hide that a directory the
    operator meant to grant is missing -- unless it is in ``optional_paths``: things
    like ``/lib64`` or ``/usr/local/lib`` that exist on some hosts and not others, which
    the supervisor lists. Only ENOENT and ENOTDIR are forgiven; any other error (EACCES,
    ELOOP) always fails.
    """
    p = plan(rules, abi_version())
    optional = frozenset(optional_paths)

    # Landlock restricts this thread only. Another thread (ZeroMQ's I/O threads, a
    # logging thread) would stay unconfined while sharing this memory, so agent code
    # could use it: refuse rather than run half-sandboxed.
    threads = _thread_count()
    if threads != 1:
        raise SandboxError(
            f"landlock: the process has {threads} threads; Landlock applies per thread, "
            f"so it must be applied before any other thread exists",
            layer=LANDLOCK_LAYER, threads=threads)

    attr = ctypes.create_string_buffer(ruleset_attr_bytes(p), p.ruleset_attr_size)
    ruleset_fd = int(_syscall(ctypes.c_long(_SYS_CREATE_RULESET),
                              ctypes.c_void_p(ctypes.addressof(attr)),
                              ctypes.c_size_t(p.ruleset_attr_size), ctypes.c_long(0)))
    if ruleset_fd < 0:
        e = ctypes.get_errno()
        raise SandboxError(
            f"landlock: landlock_create_ruleset(fs={p.handled_access_fs:#x}, "
            f"net={p.handled_access_net:#x}, scoped={p.scoped:#x}) failed: {_errname(e)}",
            layer=LANDLOCK_LAYER, errno=errno.errorcode.get(e, str(e)))
    try:
        for rule in p.paths:
            _add_path_rule(ruleset_fd, rule, optional)
        if rehearse:
            return p.abi
        privileges.set_no_new_privs()  # idempotent; contain.py has set it already
        r = int(_syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_long(ruleset_fd),
                         ctypes.c_long(p.restrict_flags)))
        if r != 0:
            e = ctypes.get_errno()
            why = {
                errno.EPERM: "; no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
                errno.E2BIG: "; 16 Landlock layers are already stacked on this thread",
            }.get(e, "")
            raise SandboxError(f"landlock: landlock_restrict_self failed: {_errname(e)}{why}",
                               layer=LANDLOCK_LAYER, errno=errno.errorcode.get(e, str(e)))
    finally:
        os.close(ruleset_fd)
    return p.abi


def _add_path_rule(ruleset_fd: int, rule: PathRule, optional: frozenset[str]) -> None:
    try:
        fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        e = exc.errno or 0
        if e in (errno.ENOENT, errno.ENOTDIR) and rule.path in optional:
            return
        hint = "; list it in optional_paths if it may be absent" if e == errno.ENOENT else ""
        raise SandboxError(f"landlock: cannot open rule path {rule.path}: {_errname(e)}{hint}",
                           layer=LANDLOCK_LAYER, path=rule.path,
                           errno=errno.errorcode.get(e, str(e))) from None
    try:
        # fstat on the O_PATH fd, not stat on the name: the type must be that of the
        # very inode the rule attaches to.
        access = rights_for_inode(rule.access, stat.S_ISDIR(os.fstat(fd).st_mode))
        buf = ctypes.create_string_buffer(path_beneath_bytes(access, fd), 12)
        r = int(_syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_long(ruleset_fd),
                         ctypes.c_long(_RULE_PATH_BENEATH),
                         ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_long(0)))
        if r != 0:
            e = ctypes.get_errno()
            raise SandboxError(
                f"landlock: landlock_add_rule({rule.path}, {access_names(access)}) failed: "
                f"{_errname(e)}", layer=LANDLOCK_LAYER, path=rule.path,
                errno=errno.errorcode.get(e, str(e)))
    finally:
        os.close(fd)


def _thread_count() -> int:
    # /proc/self/task, not /proc/self/status: generating status walks the memory map,
    # which a freshly forked child pays for in page faults on its start-up path.
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError as exc:
        raise SandboxError(f"landlock: cannot count this process's threads: {exc}",
                           layer=LANDLOCK_LAYER) from None
