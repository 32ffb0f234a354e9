"""Seccomp: which system calls an AgentProcess may make at all, and with which arguments.

Long because the rule table is the module: every rule sits with the threat it answers,
and the pure evaluator and the BPF emulator that prove the compiled filter agrees with
it must read the same table. Splitting them apart would separate a rule from its proof.

The last layer :mod:`.contain` applies, and the narrowest: whatever the other layers
leave reachable, an agent still cannot open a TCP socket, ``execve`` a binary, attach
to another process with ``ptrace``, read its memory with ``process_vm_readv``, make
itself a user namespace, mount anything, or reach the kernel's least-audited corners
(io_uring, bpf, perf, keyrings, userfaultfd). Every refusal is ``EPERM`` -- a clear
Python ``PermissionError`` -- never a silent kill, except a syscall made through a
foreign ABI (i386 ``int 0x80``, x32), which kills the process: no honest Python program
does that, and it is the classic way around a filter written for one ABI.

Deciding is pure and enforcing is thin:

* :func:`build_profile` returns the filter as data -- a :class:`SeccompProfile` of
  :class:`Rule` s, each with the threat it answers in ``why`` -- and needs no kernel.
  :func:`decide` evaluates a profile for one call in pure Python, with the semantics
  the compiled filter has, so the tests can ask "is ``clone(CLONE_NEWUSER)`` refused?"
  without forking; :func:`emulate_bpf` runs compiled bytes the same way, so they can
  check that the two agree on every syscall.
* :func:`compile_bpf` turns a profile into classic BPF through libseccomp. The
  supervisor calls it once, before any fork.
* :func:`load_bpf` is all the child does: one ``seccomp(2)`` with TSYNC, then a check
  that it took. No libseccomp call, no allocation worth the name, no decision.

Two styles, measured against each other in ``docs/sandbox-seccomp.md`` (``scripts/
bench-seccomp``): a **denylist** (allow by default, refuse the dangerous calls) and an
**allowlist** (refuse by default with EPERM, allow what CPython, pyzmq and ordinary
agent code use). The allowlist is the default: it costs the same per call on this
kernel, it also closes syscalls nobody has reviewed yet -- including the thirteen this
kernel has that libseccomp 2.5.4 cannot even name -- and a call it lacks fails loudly
with EPERM, not silently.

What seccomp cannot do, and which layer does it instead: it sees only registers, never
memory, so it cannot read a path (Landlock and the mount namespace decide which files),
a ``clone3`` flags struct (hence ENOSYS below), or a ``sockaddr``; and it cannot tell
whose pid an argument names (``kill``, ``sched_setscheduler``), which is what the pid
namespace and Landlock's signal scoping are for.

Variants: ``"agent"`` is the Python runtime; ``"shell"`` (``shell.exec`` commands) is
it plus ``execve``/``execveat`` (and the loader's ``arch_prctl``). ``"deno"`` (JIT tools)
differs mainly in its exec rule: Deno must ``execve`` only itself, and since seccomp cannot read the
path, the plan is to allow ``execveat(fd, "", argv, envp, AT_EMPTY_PATH)`` on the one
descriptor the supervisor opened on the Deno binary, with Landlock's EXECUTE right
limited to that file as the second lock. Adding it means one more entry in
``_VARIANTS``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import functools
import os
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from agentlibos.errors import SandboxError
from agentlibos.sandbox import privileges

__all__ = [
    "DEFAULT_STYLE",
    "SECCOMP_LAYER",
    "VARIANTS",
    "ArgCheck",
    "BpfRun",
    "Rule",
    "SeccompProfile",
    "Verdict",
    "build_profile",
    "compile_bpf",
    "decide",
    "describe",
    "emulate_bpf",
    "load_bpf",
    "syscall_name",
    "syscall_number",
    "unsupported_reason",
    "verdict_of",
]

SECCOMP_LAYER: Final = "seccomp"

Action = Literal["allow", "errno"]
Style = Literal["denylist", "allowlist"]
CmpOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"]

# Chosen by measurement (docs/sandbox-seccomp.md): same cost per call, smaller attack
# surface, unknown and future syscalls closed.
DEFAULT_STYLE: Final[Style] = "allowlist"

_U64: Final = (1 << 64) - 1
_U32: Final = (1 << 32) - 1


@dataclass(frozen=True)
class ArgCheck:
    """One comparison on a syscall argument; a rule matches when all its checks do.

    Comparisons are on the full 64-bit register, unsigned, as the kernel hands it to the
    filter. Where the kernel then uses only the low 32 bits (an ``int`` or ``unsigned
    int`` parameter such as ioctl's ``cmd``), a *denial* must use ``masked_eq`` with
    ``0xffffffff`` in the mask: otherwise ``0x1_00005412`` slips past a check for
    ``0x5412`` and the kernel, truncating, runs TIOCSTI anyway (the bug behind
    CVE-2019-10063 in Flatpak). An *allow* on the full value is safe: garbage in the
    upper half just fails to match and is refused.
    """

    arg: int  # 0..5
    op: CmpOp
    value: int
    mask: int = _U64  # masked_eq only: (arg & mask) == value

    def __post_init__(self) -> None:
        if not 0 <= self.arg <= 5:
            raise ValueError(f"a syscall has arguments 0..5, not {self.arg}")
        if not 0 <= self.value <= _U64 or not 0 <= self.mask <= _U64:
            raise ValueError("argument values are unsigned 64-bit")
        if self.op != "masked_eq" and self.mask != _U64:
            raise ValueError("a mask only makes sense with masked_eq")

    def matches(self, args: Sequence[int]) -> bool:
        a = (args[self.arg] if self.arg < len(args) else 0) & _U64
        match self.op:
            case "eq":
                return a == self.value
            case "ne":
                return a != self.value
            case "lt":
                return a < self.value
            case "le":
                return a <= self.value
            case "gt":
                return a > self.value
            case "ge":
                return a >= self.value
            case "masked_eq":
                return a & self.mask == self.value
        raise AssertionError(self.op)  # pragma: no cover - Literal is exhaustive


@dataclass(frozen=True)
class Verdict:
    """What the filter answers: run the call, or fail it with ``errno``."""

    action: Action
    errno: int = 0

    def __str__(self) -> str:
        if self.action == "allow":
            return "allow"
        return f"errno {_errno.errorcode.get(self.errno, self.errno)}"


ALLOW: Final = Verdict("allow")
EPERM: Final = Verdict("errno", _errno.EPERM)
ENOSYS: Final = Verdict("errno", _errno.ENOSYS)


@dataclass(frozen=True)
class Rule:
    """``syscall`` gets ``action`` when every one of ``arg_checks`` holds (none: always).

    ``why`` names the threat for a denial, or the user for an allowance.
    """

    syscall: str
    action: Action
    errno: int = 0
    arg_checks: tuple[ArgCheck, ...] = ()
    why: str = ""

    def __post_init__(self) -> None:
        if self.action == "allow" and self.errno:
            raise ValueError(f"{self.syscall}: an allow rule carries no errno")
        if self.action == "errno" and not 0 < self.errno < 4096:
            raise ValueError(f"{self.syscall}: an errno rule needs an errno in 1..4095")
        if len({c.arg for c in self.arg_checks}) != len(self.arg_checks):
            # libseccomp refuses two comparisons on one argument in one rule (EINVAL).
            raise ValueError(f"{self.syscall}: at most one check per argument in a rule")

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.action, self.errno)

    def matches(self, args: Sequence[int]) -> bool:
        return all(c.matches(args) for c in self.arg_checks)


@dataclass(frozen=True)
class SeccompProfile:
    """A whole filter, as data. ``rules`` keeps every denial with its reason even where
    the default already refuses (an allowlist); :func:`compile_bpf` leaves those out."""

    variant: str
    style: Style
    default_action: Verdict
    rules: tuple[Rule, ...]
    # Calls made through another ABI than the native one (i386 via int 0x80, x32).
    bad_arch_action: Literal["kill_process"] = "kill_process"

    def rules_for(self, syscall: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.syscall == syscall)


# --- the rules ----------------------------------------------------------------------
#
# Constants are the Linux generic ABI values (x86_64 and arm64 agree on all of these).

AF_UNIX: Final = 1
CLONE_NEW_FLAGS: Final[dict[str, int]] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    # CLONE_NEWTIME (0x80) cannot be passed to clone(), where that bit is part of the
    # exit signal; only clone3() and unshare() take it, and both are refused whole.
}
_CLONE_NEW_MASK: Final = sum(CLONE_NEW_FLAGS.values())
_TIOCSTI: Final = 0x5412
_TIOCLINUX: Final = 0x541C
_S_IFMT: Final = 0o170000
_S_IFCHR: Final = 0o020000
_S_IFBLK: Final = 0o060000
_S_IFIFO: Final = 0o010000
_S_IFREG: Final = 0o100000
_SCHED_RESET_ON_FORK: Final = 0x40000000
_SCHED_POLICY_MASK: Final = _U32 & ~_SCHED_RESET_ON_FORK
_PR_SET_MM: Final = 35
_PR_SET_VMA: Final = 0x53564D41


def _eq(arg: int, value: int) -> ArgCheck:
    return ArgCheck(arg, "eq", value)


def _ne(arg: int, value: int) -> ArgCheck:
    return ArgCheck(arg, "ne", value)


def _masked(arg: int, mask: int, value: int) -> ArgCheck:
    return ArgCheck(arg, "masked_eq", value, mask)


def _low32(arg: int, value: int) -> ArgCheck:
    """The low 32 bits equal ``value``: for int parameters the kernel truncates."""
    return _masked(arg, _U32, value & _U32)


def _deny(why: str, *syscalls: str, checks: tuple[ArgCheck, ...] = (),
          err: int = _errno.EPERM) -> tuple[Rule, ...]:
    return tuple(Rule(s, "errno", err, checks, why) for s in syscalls)


def _allow(why: str, *syscalls: str, checks: tuple[ArgCheck, ...] = ()) -> tuple[Rule, ...]:
    return tuple(Rule(s, "allow", 0, checks, why) for s in syscalls)


# Every variant refuses these. Each group's ``why`` names the threat.
_DENY_COMMON: Final[tuple[Rule, ...]] = (
    # Networking: only AF_UNIX, which is how the broker is reached. Every other family is
    # a way off the box (AF_INET/6), into the kernel's routing and firewall (AF_NETLINK),
    # onto the wire raw (AF_PACKET), or into rarely used protocol code with a history of
    # bugs (AF_VSOCK, AF_BLUETOOTH, AF_ALG, AF_RDS, ...). Domain is an int, but a refusal
    # on "!= AF_UNIX" over the full register only over-refuses garbage: safe.
    *_deny("network access: any socket family but AF_UNIX reaches the network, the "
           "kernel's routing/firewall (netlink) or raw packets",
           "socket", "socketpair", checks=(_ne(0, AF_UNIX),)),
    # Other processes: ptrace reads and writes another process's memory and registers
    # (a sibling agent's broker token, the supervisor); process_vm_* do the same without
    # stopping it; pidfd_getfd steals its open files (its broker socket); kcmp compares
    # its kernel objects (an address-ordering oracle); process_madvise pages it out.
    *_deny("reading or writing another process's memory, registers or descriptors",
           "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
           "process_madvise"),
    # The file-system view: mounting (old API and the 5.2+ fd-based one, and 6.15's
    # open_tree_attr, which libseccomp 2.5.4 cannot name) could re-expose what the mount
    # namespace hides or remount read-only paths writable; chroot and pivot_root with a
    # descriptor kept outside are the textbook escape.
    *_deny("reshaping the file-system view: mounts could undo the mount namespace and "
           "expose host paths",
           "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
           "fsconfig", "fsmount", "fspick", "mount_setattr", "open_tree_attr"),
    # Namespaces: a new user namespace hands out a full capability set inside it, which
    # unlocks kernel code (nf_tables, mounts of odd file systems) behind most recent
    # local-root exploits; setns joins another process's namespaces through /proc/N/ns.
    *_deny("new namespaces (a user namespace grants capabilities that reach exploitable "
           "kernel code) and joining other processes' namespaces",
           "unshare", "setns"),
    *tuple(
        Rule("clone", "errno", _errno.EPERM, (_masked(0, bit, bit),),
             f"clone with {name}: a new namespace, as unshare")
        for name, bit in CLONE_NEW_FLAGS.items()
    ),
    # clone3 takes its flags in a struct in memory, which a seccomp filter cannot read,
    # so it cannot be told from clone(CLONE_NEWUSER). ENOSYS, not EPERM: glibc (2.34+)
    # tries clone3 for every new thread and falls back to clone, whose flags in a
    # register are checked above, only when clone3 says ENOSYS.
    *_deny("clone3's flags live in memory the filter cannot read; ENOSYS makes glibc "
           "fall back to clone, whose flags are checked",
           "clone3", err=_errno.ENOSYS),
    # The kernel keyring is not namespaced: other users' and processes' keys (kerberos
    # tickets, fscrypt keys) and a long run of keyring bugs.
    *_deny("the kernel keyring, shared across containers, with a history of exploits",
           "keyctl", "add_key", "request_key"),
    # Kernel code the agent would get to run or steer: eBPF (verifier bugs -> kernel
    # memory), perf events (side channels, kernel address leaks, frequent bugs),
    # userfaultfd (pauses the kernel mid-copy: turns races into reliable exploits).
    *_deny("eBPF programs in the kernel: verifier bugs give kernel read/write", "bpf"),
    *_deny("perf events: side channels, kernel pointer leaks, frequent CVEs",
           "perf_event_open"),
    *_deny("userfaultfd: stalls the kernel mid-copy, the standard tool for winning races "
           "in kernel exploits", "userfaultfd"),
    # io_uring performs operations (openat, connect, socket...) that never pass through
    # the syscall entry this filter guards, and has been the largest single source of
    # kernel exploits in recent years; Google disables it for untrusted code.
    *_deny("io_uring runs operations that bypass this filter, and is a leading source of "
           "kernel exploits", "io_uring_setup", "io_uring_enter", "io_uring_register"),
    # Replacing or extending the kernel.
    *_deny("loading a new kernel", "kexec_load", "kexec_file_load"),
    *_deny("loading code into the kernel, or unloading security modules",
           "init_module", "finit_module", "delete_module"),
    # Python does not call personality (checked with strace). READ_IMPLIES_EXEC would
    # make every readable mapping executable, ADDR_NO_RANDOMIZE turn off ASLR for
    # children, and the PER_* emulations are old, little-used kernel code.
    *_deny("execution-domain changes: READ_IMPLIES_EXEC, no ASLR, old emulation code",
           "personality"),
    # Classic container escapes and host-wide effects.
    *_deny("open_by_handle_at opens any file on a mounted file system by inode handle, "
           "past the mount namespace and Landlock (the 'Shocker' escape); "
           "name_to_handle_at makes the handles",
           "open_by_handle_at", "name_to_handle_at"),
    *_deny("rebooting or halting the host", "reboot"),
    *_deny("host-wide swap configuration", "swapon", "swapoff"),
    *_deny("setting the host clock: breaks timestamps, audit order, TLS for everyone",
           "settimeofday", "clock_settime", "clock_adjtime", "adjtimex"),
    *_deny("the kernel log: kernel addresses (defeats KASLR) and other tenants' messages",
           "syslog"),
    *_deny("host-wide process accounting written to a file of the caller's choosing",
           "acct"),
    *_deny("host file-system quotas", "quotactl", "quotactl_fd"),
    *_deny("raw I/O port access to hardware", "iopl", "ioperm"),
    *_deny("16-bit segments through the LDT: old kernel code with a history of bugs, "
           "used by no Python program", "modify_ldt"),
    *_deny("the host's name, if the UTS namespace is missing", "sethostname",
           "setdomainname"),
    *_deny("watching every file access on a mount, other processes' included",
           "fanotify_init"),
    *_deny("obsolete interfaces whose only remaining users are exploits", "uselib",
           "lookup_dcookie", "vhangup"),
    # SysV IPC and POSIX message queues are named by keys, not paths: Landlock cannot see
    # them, and without an IPC namespace they are the host's (another program's shared
    # memory). Python's multiprocessing uses POSIX semaphores in /dev/shm, not these.
    *_deny("System V IPC and POSIX message queues: host-wide objects outside any path "
           "rule", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
           "semctl", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink",
           "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr"),
    *_deny("memory placement of other processes (by pid)", "migrate_pages", "move_pages"),
    # A forked descendant that leaves the agent's process group or session would miss the
    # supervisor's group kill. The runtime calls setpgid(0, 0) itself before this filter.
    *_deny("leaving the process group the supervisor signals", "setsid", "setpgid"),
    # TIOCSTI pushes characters into a terminal's input queue: keystrokes into the
    # operator's shell if the agent can open its controlling tty. TIOCLINUX can do the
    # same on a virtual console (selection paste). cmd is an unsigned int: masked.
    *_deny("TIOCSTI: typing commands into the operator's terminal", "ioctl",
           checks=(_low32(1, _TIOCSTI),)),
    *_deny("TIOCLINUX: virtual-console selection paste, keystroke injection", "ioctl",
           checks=(_low32(1, _TIOCLINUX),)),
    # Device nodes: with CAP_MKNOD a block device for the host's disk reads it raw, past
    # every file permission. FIFOs and regular files (os.mkfifo) stay allowed. mode is a
    # umode_t: the mask keeps only the type bits.
    *_deny("creating a device node (the host disk, raw)", "mknod",
           checks=(_masked(1, _S_IFMT, _S_IFCHR),)),
    *_deny("creating a device node (the host disk, raw)", "mknod",
           checks=(_masked(1, _S_IFMT, _S_IFBLK),)),
    *_deny("creating a device node (the host disk, raw)", "mknodat",
           checks=(_masked(2, _S_IFMT, _S_IFCHR),)),
    *_deny("creating a device node (the host disk, raw)", "mknodat",
           checks=(_masked(2, _S_IFMT, _S_IFBLK),)),
    # Real-time scheduling is outside the CFS bandwidth limit the cpu cgroup sets: a
    # SCHED_FIFO busy loop takes a whole core from the host. libzmq sets SCHED_OTHER on
    # its own threads, which stays allowed. sched_setattr also reaches SCHED_DEADLINE
    # and takes its policy in a struct: refused whole (glibc and Python do not use it).
    *_deny("real-time scheduling escapes the cgroup's CPU limit and can starve the host",
           "sched_setscheduler", checks=(_masked(1, _SCHED_POLICY_MASK, 1),)),
    *_deny("real-time scheduling escapes the cgroup's CPU limit and can starve the host",
           "sched_setscheduler", checks=(_masked(1, _SCHED_POLICY_MASK, 2),)),
    *_deny("real-time or deadline scheduling, with the policy in a struct the filter "
           "cannot read", "sched_setattr"),
    *_deny("real-time I/O priority starves the host's disks; also aims at other pids",
           "ioprio_set"),
    # Only the caller's own niceness: PRIO_PGRP/PRIO_USER (or another pid) would let an
    # agent deprioritise the supervisor.
    *_deny("renicing other processes, a whole user's included", "setpriority",
           checks=(_ne(0, 0),)),
    *_deny("renicing other processes, a whole user's included", "setpriority",
           checks=(_ne(1, 0),)),
    # Resource limits are a sandbox layer (rlimits): with CAP_SYS_RESOURCE they could be
    # raised again. Reading one's own stays allowed (prlimit64(0, r, NULL, &old)).
    *_deny("raising the sandbox's resource limits", "setrlimit"),
    *_deny("setting resource limits, or touching another process's", "prlimit64",
           checks=(_ne(2, 0),)),
    *_deny("setting resource limits, or touching another process's", "prlimit64",
           checks=(_ne(0, 0),)),
    # kill(-1, sig) signals every process the caller may signal: as root outside a pid
    # namespace, the whole host. pid is an int: masked to catch 0xffffffff and -1.
    *_deny("kill(-1) signals every process the caller can reach", "kill",
           checks=(_low32(0, _U32),)),
    # PR_SET_MM rewrites what /proc shows about the process (its exe link, argv and
    # environment bounds): masquerading to whoever inspects it.
    *_deny("PR_SET_MM rewrites the process's /proc identity (exe, argv bounds)", "prctl",
           checks=(_low32(0, _PR_SET_MM),)),
)

# File locks as a covert channel: two agents with no capabilities at all could signal
# each other by locking a file both can read (the shared, read-only runtime) -- measured
# at about 170,000 bit/s with no errors (scripts/measure-lock-channel). Read locks on
# read-only files never conflict, so what carries a signal is flock(2) (LOCK_EX works on
# any fd) and testing another process's lock with F_GETLK/F_OFD_GETLK. Refused for
# agents; F_SETLK and F_OFD_SETLK stay, so locking files in scratch still works (and on
# the read-only runtime an agent can only take read locks, which nobody can observe).
# cmd is an int: masked to its low 32 bits.
_F_GETLK: Final = 5
_F_OFD_GETLK: Final = 36
_DENY_LOCK_CHANNEL: Final[tuple[Rule, ...]] = (
    *_deny("flock(2) on a shared file signals another agent (a covert channel)", "flock"),
    *_deny("testing another process's lock (F_GETLK) reads a covert channel", "fcntl",
           checks=(_low32(1, _F_GETLK),)),
    *_deny("testing another process's lock (F_OFD_GETLK) reads a covert channel", "fcntl",
           checks=(_low32(1, _F_OFD_GETLK),)),
    # inotify reports another process opening or reading a watched file -- the shared
    # runtime's files included: the same channel by other means.
    *_deny("inotify sees other agents open and read shared files (a covert channel)",
           "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch"),
)

# Deno (its cache) and shell commands (git, package tools) lock files with flock and
# test locks; they run alone in their own mount trees.
_ALLOW_FLOCK: Final[tuple[Rule, ...]] = (
    *_allow("whole-file locks (Deno's cache, programs)", "flock"),
    *_allow("descriptor flags, record locks, pipe sizes, seals", "fcntl"),
    *_allow("watching files (programs that follow their own files)", "inotify_init",
            "inotify_init1", "inotify_add_watch", "inotify_rm_watch"),
)
# An agent's fcntl: every command but the two that read another process's locks.
_FCNTL_AGENT: Final = {
    "F_DUPFD": 0, "F_GETFD": 1, "F_SETFD": 2, "F_GETFL": 3, "F_SETFL": 4, "F_SETLK": 6,
    "F_SETLKW": 7, "F_SETOWN": 8, "F_GETOWN": 9, "F_SETSIG": 10, "F_GETSIG": 11,
    "F_SETOWN_EX": 15, "F_GETOWN_EX": 16, "F_OFD_SETLK": 37, "F_OFD_SETLKW": 38,
    "F_SETLEASE": 1024, "F_GETLEASE": 1025, "F_NOTIFY": 1026, "F_DUPFD_CLOEXEC": 1030,
    "F_SETPIPE_SZ": 1031, "F_GETPIPE_SZ": 1032, "F_ADD_SEALS": 1033, "F_GET_SEALS": 1034,
}
_ALLOW_FCNTL_AGENT: Final[tuple[Rule, ...]] = tuple(
    Rule("fcntl", "allow", 0, (_low32(1, cmd),), f"fcntl {name}")
    for name, cmd in _FCNTL_AGENT.items())

# Running another program: the agent gets an interpreter, not a shell. A fresh binary
# would shed everything the runtime assumes (and setuid binaries exist); shell access is
# the broker's shell:exec capability, audited. The "deno" variant will swap this group
# for its execveat-of-itself rule.
_DENY_EXEC: Final[tuple[Rule, ...]] = _deny(
    "running another program instead of going through the broker's shell:exec",
    "execve", "execveat")

# What the allowlist lets through: CPython 3.11, glibc 2.36, libzmq 4.3 (pyzmq 27) and
# ordinary agent code. Found with `strace -f` over the demo agents and a battery of
# stdlib probes (scripts/bench-seccomp), then reviewed one by one.
_ALLOW_PYTHON: Final[tuple[Rule, ...]] = (
    *_allow("memory: malloc arenas, thread stacks, mmap module, ctypes",
            "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore"),
    *_allow("files and directories (which ones: Landlock and the mount namespace)",
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
            "preadv2", "pwritev2", "lseek", "open", "openat", "openat2", "creat", "close",
            "close_range", "dup", "dup2", "dup3", "pipe", "pipe2",
            "fsync", "fdatasync", "ftruncate", "truncate", "fallocate", "fadvise64",
            "sendfile", "copy_file_range", "stat", "fstat", "lstat", "newfstatat", "statx",
            "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getdents",
            "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir",
            "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat",
            "symlink", "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat",
            "umask", "utime", "utimes", "utimensat", "futimesat", "getxattr", "lgetxattr",
            "fgetxattr", "listxattr", "llistxattr", "flistxattr", "memfd_create"),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknod",
            checks=(_masked(1, _S_IFMT, _S_IFIFO),)),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknod",
            checks=(_masked(1, _S_IFMT, _S_IFREG),)),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknod",
            checks=(_masked(1, _S_IFMT, 0),)),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknodat",
            checks=(_masked(2, _S_IFMT, _S_IFIFO),)),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknodat",
            checks=(_masked(2, _S_IFMT, _S_IFREG),)),
    *_allow("os.mkfifo and plain files by mknod; never device nodes", "mknodat",
            checks=(_masked(2, _S_IFMT, 0),)),
    # isatty (TCGETS), terminal size, bytes waiting, non-blocking and close-on-exec
    # toggles. Device-specific ioctls are a large, driver-written attack surface.
    *tuple(
        Rule("ioctl", "allow", 0, (_eq(1, cmd),), f"ioctl {name}")
        for name, cmd in (("TCGETS", 0x5401), ("TIOCGWINSZ", 0x5413),
                          ("TIOCGPGRP", 0x540F), ("FIONREAD", 0x541B),
                          ("FIONBIO", 0x5421), ("FIONCLEX", 0x5450), ("FIOCLEX", 0x5451))
    ),
    *_allow("processes and threads: identity, exit, wait, fork, futexes, rseq",
            "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
            "getresuid", "getresgid", "getgroups", "getpgrp", "getpgid", "getsid", "exit",
            "exit_group", "wait4", "waitid", "fork", "vfork", "set_robust_list",
            "set_tid_address", "rseq", "futex", "futex_waitv", "sched_yield",
            "sched_getaffinity", "sched_setaffinity", "sched_getparam",
            "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
            "sched_rr_get_interval", "sched_getattr", "getpriority", "getcpu", "getrusage",
            "times", "capget", "getrlimit", "restart_syscall", "tkill", "tgkill",
            "pidfd_open", "pidfd_send_signal"),
    *_allow("threads and fork, without new namespaces", "clone",
            checks=(_masked(0, _CLONE_NEW_MASK, 0),)),
    # libzmq's threads set SCHED_OTHER on themselves (pthread_setschedparam), and abort
    # if that fails. BATCH and IDLE only lower a process's share.
    *tuple(
        Rule("sched_setscheduler", "allow", 0, (_masked(1, _SCHED_POLICY_MASK, policy),),
             f"libzmq threads: {name}")
        for name, policy in (("SCHED_OTHER", 0), ("SCHED_BATCH", 3), ("SCHED_IDLE", 5))
    ),
    *_allow("os.nice on oneself", "setpriority", checks=(_eq(0, 0), _eq(1, 0))),
    *_allow("resource.getrlimit on oneself", "prlimit64", checks=(_eq(0, 0), _eq(2, 0))),
    # Signals to a pid >= 0 (oneself, children, 0 = own group). Negative pids (a group by
    # number, or -1 = everyone) are refused; the pid namespace bounds the rest.
    *_allow("os.kill of a process or of one's own group", "kill",
            checks=(ArgCheck(0, "le", 0x7FFFFFFF),)),
    *tuple(
        Rule("prctl", "allow", 0, (_eq(0, option),), f"prctl {name}")
        for name, option in (("PR_GET_PDEATHSIG", 2), ("PR_GET_DUMPABLE", 3),
                             ("PR_SET_NAME", 15), ("PR_GET_NAME", 16),
                             ("PR_GET_SECCOMP", 21), ("PR_SET_SECCOMP", 22),
                             ("PR_CAPBSET_READ", 23), ("PR_GET_TIMERSLACK", 30),
                             ("PR_SET_NO_NEW_PRIVS", 38), ("PR_GET_NO_NEW_PRIVS", 39),
                             ("PR_SET_VMA", _PR_SET_VMA))
    ),
    *_allow("signals", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
            "rt_sigtimedwait", "rt_sigsuspend", "sigaltstack", "pause", "alarm",
            "getitimer", "setitimer", "signalfd", "signalfd4"),
    *_allow("time and timers", "clock_gettime", "clock_getres", "gettimeofday", "time",
            "nanosleep", "clock_nanosleep", "timer_create", "timer_settime",
            "timer_gettime", "timer_getoverrun", "timer_delete", "timerfd_create",
            "timerfd_settime", "timerfd_gettime"),
    *_allow("waiting for events: libzmq's epoll and eventfd, selectors, asyncio",
            "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
            "epoll_pwait2", "poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2"),
    *_allow("AF_UNIX sockets: the broker's ipc:// endpoint, socketpair, asyncio",
            "socket", "socketpair", checks=(_eq(0, AF_UNIX),)),
    *_allow("using the AF_UNIX sockets socket() allowed", "connect", "bind", "listen",
            "accept", "accept4", "getsockname", "getpeername", "getsockopt", "setsockopt",
            "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown"),
    *_allow("platform facts and randomness", "uname", "sysinfo", "getrandom"),
)


# The Deno variant. The child opens the Deno binary, moves the fd to DENO_EXE_FD, loads
# this filter and calls execveat(DENO_EXE_FD, "", argv, envp, AT_EMPTY_PATH): the only
# program it can ever start. After the exec the fd is gone (O_CLOEXEC), and Landlock
# grants EXECUTE on the Deno binary (and its loader) alone, so Deno cannot run anything
# else even through a file it opens under that number.
DENO_EXE_FD: Final = 100
_AT_EMPTY_PATH: Final = 0x1000
_DENY_PATH_EXEC: Final[tuple[Rule, ...]] = (
    *_deny("running a program by path: a JIT tool's sandbox starts Deno by fd, then nothing",
           "execve"),
    *_deny("execveat of anything but the pre-opened Deno binary", "execveat",
           checks=(_ne(0, DENO_EXE_FD),)),
    *_deny("execveat by a path relative to the Deno binary's fd", "execveat",
           checks=(_masked(4, _AT_EMPTY_PATH, 0),)),
)
_ALLOW_DENO: Final[tuple[Rule, ...]] = (
    Rule("execveat", "allow", 0,
         (_eq(0, DENO_EXE_FD), _masked(4, _AT_EMPTY_PATH, _AT_EMPTY_PATH)),
         "execveat of the pre-opened Deno binary, once, to start the tool runner"),
    *_allow("the dynamic loader sets up thread-local storage (x86_64)", "arch_prctl"),
    *_allow("V8 asks for memory protection keys and copes when it gets none",
            "pkey_alloc", "pkey_free", "pkey_mprotect"),
    *_allow("Deno's module cache in its own scratch DENO_DIR", "fchown", "fchownat"),
)


# The shell variant (``shell.exec``): a command the broker runs for an agent, in a
# sandbox of its own built from the agent's fs capabilities. It may run other programs
# (that is its purpose: git, make, python3) and fork them; everything the agent variant
# refuses it refuses too -- no namespaces, mounts, ptrace, io_uring, non-UNIX sockets,
# setsid/setpgid (a command must not leave the process group killed at its deadline).
# Which programs exist is what its mount tree shows and Landlock allows to execute.
# A command runs as the owner of its cwd, which may be root (a root-owned project).
# A set-id bit it put on a file would outlive it on the host, where no nosuid applies:
# `cp /usr/bin/python3 . && chmod u+s` would leave a root shell for any local user.
# Every call that sets a file's mode refuses S_ISUID and S_ISGID; the mode argument is a
# umode_t, so the mask tests only those bits. (mkdir ignores them: the kernel keeps only
# S_ISVTX from its mode.) openat2 takes its mode in a struct the filter cannot read: it
# is refused with ENOSYS, which callers answer by falling back to openat.
_SETID: Final = 0o6000
_CREATES: Final = os.O_CREAT | (os.O_TMPFILE & ~os.O_DIRECTORY)
_MODE_ARG: Final = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("creat", 1))
_OPEN_ARGS: Final = (("open", 1, 2), ("openat", 2, 3))  # (syscall, flags, mode)
_SETID_WHY: Final = "a set-id bit on a file, which would outlive the command on the host"
_SHELL_MODES: Final[tuple[Rule, ...]] = (
    *(r for name, arg in _MODE_ARG for bit in (0o4000, 0o2000)
      for r in _deny(_SETID_WHY, name, checks=(_masked(arg, bit, bit),))),
    *(r for name, flags, mode in _OPEN_ARGS for bit in (0o4000, 0o2000)
      for create in (os.O_CREAT, _CREATES & ~os.O_CREAT)
      for r in _deny(_SETID_WHY, name, checks=(_masked(flags, create, create),
                                               _masked(mode, bit, bit)))),
    *(r for name in ("mknod", "mknodat") for bit in (0o4000, 0o2000)
      for r in _deny(_SETID_WHY, name, checks=(_masked(1 if name == "mknod" else 2, bit,
                                                       bit),))),
    *_deny("openat2's mode is in a struct the filter cannot read (set-id bits)",
           "openat2", err=_errno.ENOSYS),
    # The allowlist's side of the same rule: these calls only without set-id bits.
    *(r for name, arg in _MODE_ARG
      for r in _allow("changing a mode, without set-id bits", name,
                      checks=(_masked(arg, _SETID, 0),))),
    *(r for name, flags, mode in _OPEN_ARGS
      for r in (*_allow("opening without creating", name,
                        checks=(_masked(flags, _CREATES, 0),)),
                *_allow("creating a file, without set-id bits", name,
                        checks=(_masked(mode, _SETID, 0),)))),
    *(r for name, arg in (("mknod", 1), ("mknodat", 2)) for kind in (_S_IFIFO, _S_IFREG, 0)
      for r in _allow("os.mkfifo and plain files by mknod, without set-id bits", name,
                      checks=(_masked(arg, _S_IFMT | _SETID, kind),))),
)
# What _ALLOW_PYTHON allows of those outright is left out of the shell variant's allows.
_MODE_SYSCALLS: Final = frozenset({"chmod", "fchmod", "fchmodat", "creat", "open", "openat",
                                   "openat2", "mknod", "mknodat"})

_ALLOW_SHELL: Final[tuple[Rule, ...]] = (
    *_allow("running programs: the command itself and whatever it starts (git's "
            "helpers, make's recipes); which files can be executed is Landlock's and the "
            "mount tree's decision", "execve", "execveat"),
    *_allow("the dynamic loader of every exec'd program sets up thread-local storage "
            "(x86_64)", "arch_prctl"),
)


# The pool variant: the first of two stacked filters (docs/sandbox.md, "The warm pool").
# A pooled process loads it before it waits for an assignment; on assignment it still
# has to attach its agent's binds (move_mount: the supervisor cloned them), seal the root,
# change uid, drop capabilities, apply Landlock -- then it loads the agent filter on top.
# It pivoted before loading this one: pivot_root and umount2 stay refused. The kernel
# runs every stacked filter and the strictest verdict wins, so agent code runs under
# exactly the agent filter: this one only lets the assignment's own steps through, for
# the little while between the two loads, and only our code runs in that while.
_ASSIGN_SYSCALLS: Final = ("mount", "move_mount", "landlock_create_ruleset",
                           "landlock_add_rule", "landlock_restrict_self", "setgroups",
                           "setresgid", "setresuid", "setgid", "setuid", "capset",
                           "chown", "fchown", "fchownat", "lchown", "seccomp")
_ALLOW_POOL: Final[tuple[Rule, ...]] = (
    *_allow("finishing containment on assignment: the agent's binds and the read-only "
            "root, Landlock, the uid switch, dropping capabilities, the scratch directory's "
            "owner, and loading the agent filter on top of this one", *_ASSIGN_SYSCALLS),
    *tuple(
        Rule("prctl", "allow", 0, (_eq(0, option),), f"prctl {name} (on assignment)")
        for name, option in (("PR_SET_PDEATHSIG", 1), ("PR_CAPBSET_DROP", 24),
                             ("PR_CAP_AMBIENT", 47))
    ),
)


@dataclass(frozen=True)
class _Variant:
    deny: tuple[Rule, ...]
    allow: tuple[Rule, ...]
    why: str


_VARIANTS: Final[dict[str, _Variant]] = {
    "agent": _Variant(_DENY_COMMON + _DENY_EXEC + _DENY_LOCK_CHANNEL,
                      _ALLOW_PYTHON + _ALLOW_FCNTL_AGENT,
                      "a CPython AgentProcess: pyzmq, threads, the standard library"),
    "deno": _Variant(_DENY_COMMON + _DENY_PATH_EXEC,
                     _ALLOW_PYTHON + _ALLOW_DENO + _ALLOW_FLOCK,
                     "a JIT tool: the Python child until it execs Deno, then Deno (V8, "
                     "tokio threads) with no permissions"),
    "pool": _Variant(tuple(r for r in _DENY_COMMON + _DENY_EXEC + _DENY_LOCK_CHANNEL
                           if r.syscall not in _ASSIGN_SYSCALLS),
                     _ALLOW_PYTHON + _ALLOW_FCNTL_AGENT + _ALLOW_POOL,
                     "a pooled process waiting for its assignment: the agent variant "
                     "plus the assignment's own steps; the agent filter is stacked on it"),
    "shell": _Variant(_DENY_COMMON + tuple(r for r in _SHELL_MODES if r.verdict != ALLOW),
                      tuple(r for r in _ALLOW_PYTHON if r.syscall not in _MODE_SYSCALLS)
                      + tuple(r for r in _SHELL_MODES if r.verdict == ALLOW)
                      + _ALLOW_SHELL + _ALLOW_FLOCK,
                      "a shell.exec command: any program its mount tree holds, forking "
                      "and exec'ing, with the agent's other refusals"),
}
VARIANTS: Final[tuple[str, ...]] = tuple(_VARIANTS)
_PLANNED: Final[dict[str, str]] = {}


def build_profile(variant: str = "agent", style: str = DEFAULT_STYLE) -> SeccompProfile:
    """The filter for ``variant`` in ``style``, as data. Pure: no kernel, no libseccomp.

    ``denylist``: allow by default, refuse the rules' calls. ``allowlist``: refuse by
    default with EPERM, allow the rules' calls; the denials are kept (with their
    reasons, and the few whose errno differs from the default, like clone3's ENOSYS).
    Raises ValueError for an unknown variant or style, or an inconsistent rule set.
    """
    if variant not in _VARIANTS:
        if variant in _PLANNED:
            raise ValueError(f"seccomp: {_PLANNED[variant]}")
        raise ValueError(f"seccomp: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    v = _VARIANTS[variant]
    if style == "denylist":
        profile = SeccompProfile(variant, "denylist", ALLOW, v.deny)
    elif style == "allowlist":
        profile = SeccompProfile(variant, "allowlist", EPERM, v.deny + v.allow)
    else:
        raise ValueError(f"seccomp: unknown style {style!r}; use 'denylist' or 'allowlist'")
    _effective_rules(profile)  # fail now, in pure code, on an inconsistent table
    return profile


@functools.lru_cache(maxsize=32)
def _effective_rules(profile: SeccompProfile) -> tuple[Rule, ...]:
    """The rules the filter must contain: those whose verdict differs from the default.

    Checks the one invariant that keeps :func:`decide` and the compiled filter in step:
    per syscall, every effective rule gives the same verdict. libseccomp silently lets
    an unconditional rule override conditional ones for the same syscall, so an
    unconditional rule next to a denial with another verdict is an error here (an
    allowlist that allows ``ioctl`` outright would quietly drop the TIOCSTI denial).
    """
    by_syscall: dict[str, list[Rule]] = {}
    for r in profile.rules:
        by_syscall.setdefault(r.syscall, []).append(r)
    out: list[Rule] = []
    for name, rules in by_syscall.items():
        kept = [r for r in rules if r.verdict != profile.default_action]
        verdicts = {r.verdict for r in kept}
        if len(verdicts) > 1:
            raise ValueError(f"seccomp: {name} has rules with different verdicts "
                             f"({', '.join(sorted(map(str, verdicts)))}); the filter "
                             f"would depend on libseccomp's rule order")
        if any(not r.arg_checks for r in kept) and len(kept) != len(rules):
            raise ValueError(f"seccomp: {name} is {kept[0].verdict} unconditionally, which "
                             f"would override its conditional rules with another verdict")
        out.extend(kept)
    return tuple(out)


def decide(profile: SeccompProfile, syscall: str, args: Sequence[int] = ()) -> Verdict:
    """What the compiled ``profile`` answers to ``syscall(*args)`` on the native ABI.

    Pure; the same semantics as the BPF :func:`compile_bpf` produces (the tests check
    the two agree on every syscall number).
    """
    for rule in _rules_by_syscall(profile).get(syscall, ()):
        if rule.matches(args):
            return rule.verdict
    return profile.default_action


@functools.lru_cache(maxsize=32)
def _rules_by_syscall(profile: SeccompProfile) -> dict[str, tuple[Rule, ...]]:
    out: dict[str, list[Rule]] = {}
    for rule in _effective_rules(profile):
        out.setdefault(rule.syscall, []).append(rule)
    return {k: tuple(v) for k, v in out.items()}


# --- compiling (the supervisor, before fork) ---------------------------------------------

# Syscalls Linux 6.18 has but Debian's libseccomp 2.5.4 cannot name (it knows up to
# futex_requeue, 456). x86_64 numbers, from arch/x86/entry/syscalls/syscall_64.tbl;
# libseccomp's own answer wins where it has one.
_NEWER_X86_64: Final[dict[str, int]] = {
    "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
    "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461,
    "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
    "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469,
}
_AUDIT_ARCH_X86_64: Final = 0xC000003E
_SCMP_ERROR: Final = -1  # __NR_SCMP_ERROR: libseccomp does not know the name
_BPF_MAXINSNS: Final = 4096


def _libseccomp() -> Any:  # pyseccomp has no type stubs
    """pyseccomp, imported on first use. Only compiling needs libseccomp: the child,
    which only loads bytes, never dlopens it (and its mount namespace and Landlock rules
    need not show it)."""
    try:
        import pyseccomp  # noqa: PLC0415 - deliberately lazy, see above
    except (ImportError, RuntimeError) as e:  # RuntimeError: libseccomp.so not found
        raise SandboxError(f"seccomp: libseccomp is not usable: {e}",
                           layer=SECCOMP_LAYER) from e
    return pyseccomp


def _native_arch() -> int:
    return int(_libseccomp().system_arch())


def syscall_number(name: str) -> int | None:
    """The native number of ``name``; None if the syscall does not exist on this ABI.

    Raises ValueError for a name neither libseccomp nor our table knows (a typo must not
    silently drop a denial).
    """
    lib = _libseccomp()
    nr = int(lib.resolve_syscall(lib.Arch.NATIVE, name))
    if nr == _SCMP_ERROR:
        if _native_arch() == _AUDIT_ARCH_X86_64 and name in _NEWER_X86_64:
            return _NEWER_X86_64[name]
        raise ValueError(f"seccomp: unknown syscall {name!r}")
    if nr < 0:  # a libseccomp pseudo-number: the call does not exist on this ABI
        return None
    return nr


def syscall_name(nr: int) -> str | None:
    """The native name of syscall number ``nr``, or None."""
    try:
        lib = _libseccomp()
        return bytes(lib.resolve_syscall(lib.Arch.NATIVE, nr)).decode()
    except ValueError:
        if _native_arch() == _AUDIT_ARCH_X86_64:
            for name, n in _NEWER_X86_64.items():
                if n == nr:
                    return name
        return None


# Kernel ABI values (include/uapi/linux/seccomp.h) and libseccomp's scmp_compare enum.
_RET_KILL_PROCESS: Final = 0x80000000
_RET_ERRNO: Final = 0x00050000
_RET_ALLOW: Final = 0x7FFF0000
_SCMP_OP: Final[dict[CmpOp, int]] = {
    "ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7,
}


def _scmp_action(v: Verdict) -> int:
    return _RET_ALLOW if v.action == "allow" else _RET_ERRNO | (v.errno & 0xFFFF)


def _scmp_arg(lib: Any, c: ArgCheck) -> Any:
    if c.op == "masked_eq":
        return lib.Arg(c.arg, _SCMP_OP["masked_eq"], c.mask, c.value)
    return lib.Arg(c.arg, _SCMP_OP[c.op], c.value)


def compile_bpf(profile: SeccompProfile, *, tree: bool = True) -> bytes:
    """Compile ``profile`` to classic BPF for the native ABI: raw ``struct sock_filter``
    bytes (8 per instruction), ready for :func:`load_bpf`.

    The filter kills the process for a call through any other ABI (libseccomp checks
    ``seccomp_data.arch``, and on x86_64 also refuses x32 numbers). Syscalls are laid out
    as a binary tree: on this kernel most allowed calls never run the filter at all (the
    constant-action cache), and the rest pay log2(n) comparisons, not n.
    (``tree=False`` keeps libseccomp's linear, priority-ordered layout; for the benchmark.)
    Raises SandboxError (``seccomp: ...``) if libseccomp refuses.
    """
    try:
        rules = _effective_rules(profile)
        lib = _libseccomp()
        f = lib.SyscallFilter(_scmp_action(profile.default_action))
        f.set_attr(lib.Attr.ACT_BADARCH, _RET_KILL_PROCESS)
        # load_bpf sets no_new_privs itself; the exported program does not depend on it.
        f.set_attr(lib.Attr.CTL_NNP, 0)
        f.set_attr(lib.Attr.CTL_OPTIMIZE, 2 if tree else 1)
        for rule in rules:
            nr = syscall_number(rule.syscall)
            if nr is None:
                continue
            f.add_rule_exactly(_scmp_action(rule.verdict), nr,
                               *(_scmp_arg(lib, c) for c in rule.arg_checks))
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        with open(fd, "w+b") as out:
            f.export_bpf(out)
            out.seek(0)
            bpf = out.read()
    except (OSError, ValueError) as e:
        raise SandboxError(f"seccomp: cannot compile the {profile.variant}/{profile.style} "
                           f"filter: {e}", layer=SECCOMP_LAYER) from e
    if not bpf or len(bpf) % 8 or len(bpf) // 8 > _BPF_MAXINSNS:
        raise SandboxError(f"seccomp: libseccomp produced {len(bpf)} bytes, not a loadable "
                           f"program of at most {_BPF_MAXINSNS} instructions",
                           layer=SECCOMP_LAYER)
    return bpf


# --- a classic-BPF interpreter, for tests and the benchmark --------------------------------

_SECCOMP_RET_ACTION_FULL: Final = 0xFFFF0000


def _alu(code: int, acc: int, src: int, pc: int) -> int:
    match code & 0xF0:
        case 0x00:
            r = acc + src
        case 0x10:
            r = acc - src
        case 0x40:
            r = acc | src
        case 0x50:
            r = acc & src
        case 0x60:
            r = acc << (src & 31)
        case 0x70:
            r = acc >> (src & 31)
        case 0xA0:
            r = acc ^ src
        case _:
            raise ValueError(f"unsupported ALU op {code:#x} at {pc}")
    return r & _U32


class BpfRun(NamedTuple):
    ret: int  # the seccomp return value (action | data)
    steps: int  # instructions executed
    # Whether the path taken loaded an argument. The kernel (5.11+) caches, per syscall
    # number, "always allowed" when the program reaches ALLOW without looking at any
    # argument, and then skips the filter for that syscall entirely.
    read_args: bool

    @property
    def cacheable(self) -> bool:
        return verdict_of(self.ret) == ALLOW and not self.read_args


def emulate_bpf(bpf: bytes, nr: int, args: Sequence[int] = (),
                arch: int = _AUDIT_ARCH_X86_64) -> BpfRun:
    """Run a seccomp BPF program on one ``seccomp_data``, as the kernel would.

    The subset libseccomp emits (loads of seccomp_data words, scratch memory, ALU with
    constants, conditional jumps, returns). Pure; raises ValueError on anything else.
    """
    a6 = [(args[i] if i < len(args) else 0) & _U64 for i in range(6)]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *a6)
    insns = [struct.unpack_from("=HBBI", bpf, off) for off in range(0, len(bpf), 8)]
    acc = x = 0
    mem = [0] * 16
    pc = steps = 0
    read_args = False
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        steps += 1
        pc += 1
        cls = code & 0x07
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            read_args = read_args or k >= 16
        elif code == 0x00:  # ld #k
            acc = k
        elif code == 0x60:  # ld M[k]
            acc = mem[k]
        elif code == 0x61:  # ldx M[k]
            x = mem[k]
        elif code == 0x02:  # st M[k]
            mem[k] = acc
        elif code == 0x03:  # stx M[k]
            mem[k] = x
        elif code == 0x87:  # txa
            acc = x
        elif code == 0x07:  # tax
            x = acc
        elif cls == 0x04:  # alu
            acc = _alu(code, acc, x if code & 0x08 else k, pc - 1)
        elif code == 0x05:  # ja
            pc += k
        elif cls == 0x05:  # conditional jumps
            op, src = code & 0xF0, (x if code & 0x08 else k)
            conds = {0x10: acc == src, 0x20: acc > src, 0x30: acc >= src,
                     0x40: bool(acc & src)}
            if op not in conds:
                raise ValueError(f"unsupported jump {code:#x} at {pc - 1}")
            pc += jt if conds[op] else jf
        elif code == 0x06:  # ret #k
            return BpfRun(k, steps, read_args)
        elif code == 0x16:  # ret a
            return BpfRun(acc, steps, read_args)
        else:
            raise ValueError(f"unsupported BPF instruction {code:#x} at {pc - 1}")
    raise ValueError("the program ran off its end")


def verdict_of(ret: int) -> Verdict | Literal["kill_process", "other"]:
    """Read a seccomp return value the way the kernel does (for emulate_bpf results)."""
    action = ret & _SECCOMP_RET_ACTION_FULL
    if action == _RET_ALLOW:
        return ALLOW
    if action == _RET_ERRNO:
        return Verdict("errno", ret & 0xFFFF)
    if action == _RET_KILL_PROCESS:
        return "kill_process"
    return "other"


# --- loading (the child, after fork) ------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int

_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_GET_ACTION_AVAIL: Final = 2
_SECCOMP_FILTER_FLAG_TSYNC: Final = 1
_PR_GET_SECCOMP: Final = 21
# seccomp(2)'s number per machine, so that loading needs no libseccomp (see _libseccomp).
_NR_SECCOMP: Final = {"x86_64": 317, "aarch64": 277, "riscv64": 277}.get(platform.machine())


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _errname(e: int) -> str:
    return f"{_errno.errorcode.get(e, str(e))} ({os.strerror(e)})"


def _prctl_call(option: int, arg2: int = 0) -> tuple[int, int]:
    # prctl is variadic: pass sized ctypes so the upper register halves are defined.
    r = int(_prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)))
    return r, (ctypes.get_errno() if r < 0 else 0)


def load_bpf(bpf: bytes) -> None:
    """Install ``bpf`` on every thread of the calling process, for good.

    Sets no_new_privs first (idempotent; the kernel requires it of a caller without
    CAP_SYS_ADMIN, and it stops setuid binaries anyway). TSYNC puts the filter on the
    threads that already exist too, atomically: if one cannot take it the kernel applies
    it to none and returns that thread's id. Then checks PR_GET_SECCOMP says "filter".
    Raises SandboxError (``seccomp: ...``) on any failure: the agent must not start.
    """
    n = len(bpf) // 8
    if len(bpf) % 8 or not 0 < n <= _BPF_MAXINSNS:
        raise SandboxError(f"seccomp: {len(bpf)} bytes is not a BPF program of 1.."
                           f"{_BPF_MAXINSNS} 8-byte instructions", layer=SECCOMP_LAYER)
    if _NR_SECCOMP is None:
        raise SandboxError(f"seccomp: seccomp(2)'s number on {platform.machine()} is not known "
                           f"here", layer=SECCOMP_LAYER)
    privileges.set_no_new_privs()  # idempotent; contain.py has set it already
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(n, ctypes.addressof(buf))
    rc = int(_syscall(ctypes.c_long(_NR_SECCOMP), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC),
                      ctypes.c_void_p(ctypes.addressof(prog))))
    if rc < 0:
        e = ctypes.get_errno()
        hint = {
            _errno.EINVAL: " (the program is malformed, or the kernel lacks filter mode)",
            _errno.EFAULT: " (the program is not readable)",
            _errno.ENOMEM: " (too many filters stacked on this process)",
            _errno.EACCES: " (no_new_privs is not set and the caller lacks CAP_SYS_ADMIN)",
            _errno.ENOSYS: " (the kernel has no seccomp)",
        }.get(e, "")
        raise SandboxError(f"seccomp: seccomp(SET_MODE_FILTER, TSYNC) failed: "
                           f"{_errname(e)}{hint}", layer=SECCOMP_LAYER,
                           errno=_errno.errorcode.get(e, str(e)))
    if rc > 0:
        raise SandboxError(f"seccomp: thread {rc} could not take the filter (TSYNC: it has "
                           f"a diverging filter); nothing was applied", layer=SECCOMP_LAYER,
                           thread=rc)
    mode, e = _prctl_call(_PR_GET_SECCOMP)
    if mode != 2:
        raise SandboxError(f"seccomp: loaded, but PR_GET_SECCOMP says mode {mode}"
                           f"{' (' + _errname(e) + ')' if mode < 0 else ''}, not 2 (filter)",
                           layer=SECCOMP_LAYER)


# --- what this host offers (doctor) --------------------------------------------------------

_REQUIRED_ACTIONS: Final[dict[str, int]] = {
    "allow": _RET_ALLOW, "errno": _RET_ERRNO, "kill_process": _RET_KILL_PROCESS,
}


def _action_available(action: int) -> tuple[bool, int]:
    a = ctypes.c_uint32(action)
    if _NR_SECCOMP is None:
        return False, _errno.ENOSYS
    r = int(_syscall(ctypes.c_long(_NR_SECCOMP), ctypes.c_long(_SECCOMP_GET_ACTION_AVAIL),
                     ctypes.c_long(0), ctypes.c_void_p(ctypes.addressof(a))))
    return r == 0, (ctypes.get_errno() if r < 0 else 0)


def unsupported_reason() -> str | None:
    """Why this kernel cannot enforce our filters, or None when it can. Never raises."""
    mode, e = _prctl_call(_PR_GET_SECCOMP)
    if mode < 0:
        return f"the kernel has no seccomp (PR_GET_SECCOMP: {_errname(e)}; CONFIG_SECCOMP)"
    for name, action in _REQUIRED_ACTIONS.items():
        ok, e = _action_available(action)
        if not ok:
            return (f"the kernel lacks seccomp filter action {name} "
                    f"(SECCOMP_GET_ACTION_AVAIL: {_errname(e)}; needs CONFIG_SECCOMP_FILTER, "
                    f"Linux 4.14+)")
    return None


def _libseccomp_version() -> str:
    class _Version(ctypes.Structure):
        _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                    ("micro", ctypes.c_uint))

    path = ctypes.util.find_library("seccomp")
    if path is None:
        return "libseccomp not found"
    lib = ctypes.CDLL(path)
    fn = lib.seccomp_version
    fn.restype = ctypes.POINTER(_Version)
    v = fn().contents
    return f"libseccomp {v.major}.{v.minor}.{v.micro}"


def describe() -> str:
    """One line for ``agentlibos doctor``. Never raises."""
    try:
        lib = _libseccomp_version()
    except (OSError, AttributeError, ValueError) as e:
        lib = f"libseccomp version unknown ({e})"
    why_not = unsupported_reason()
    if why_not is not None:
        return f"not available: {why_not}; {lib}"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().split()
    except OSError:
        actions = list(_REQUIRED_ACTIONS)
    try:
        prof = build_profile()
        n = len(compile_bpf(prof)) // 8
        filt = f"{prof.variant} {prof.style}, {n} instructions"
    except (SandboxError, ValueError) as e:
        filt = f"cannot compile the default filter: {e}"
    return (f"filter mode ({lib}, {platform.machine()}; actions: {' '.join(actions)}); "
            f"{filt}")
