"""The seccomp filter: decided in pure code, compiled to the same answers, and attacked from
inside a real filtered process.

The pure tests need no kernel. The ``privileged`` ones fork a child, load the filter in it
(never in the pytest process), attack from inside through Python's own APIs and through raw
``syscall()`` numbers, and report what happened as JSON over a pipe; the parent asserts.
Every one of them runs under both styles: whichever is the default, both must hold.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from agentlibos.errors import SandboxError
from agentlibos.sandbox import seccomp
from agentlibos.sandbox.seccomp import (
    ALLOW,
    ENOSYS,
    EPERM,
    ArgCheck,
    Rule,
    SeccompProfile,
    Verdict,
    build_profile,
    compile_bpf,
    decide,
    emulate_bpf,
    load_bpf,
    verdict_of,
)

STYLES = ("denylist", "allowlist")
U64 = (1 << 64) - 1

# What the filter must refuse with EPERM, whatever the style.
REQUIRED_EPERM = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "userfaultfd", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "personality", "open_by_handle_at",
    "name_to_handle_at", "pidfd_getfd", "reboot", "swapon", "swapoff", "chroot",
    "settimeofday", "clock_settime", "adjtimex", "syslog", "acct", "quotactl", "iopl",
    "ioperm", "kcmp",
)
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEW_ALL = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                 0x40000000)
# glibc's flags for pthread_create (through clone, once clone3 says ENOSYS) and for fork.
THREAD_FLAGS = 0x3D0F00
FORK_FLAGS = 0x01200000 | signal.SIGCHLD
TIOCSTI = 0x5412


@pytest.fixture(params=STYLES)
def profile(request: pytest.FixtureRequest) -> SeccompProfile:
    style: str = request.param
    return build_profile("agent", style)


def witness(rule: Rule) -> list[int]:
    """Arguments that match ``rule``."""
    args = [0] * 6
    for c in rule.arg_checks:
        args[c.arg] = {"eq": c.value, "ne": (c.value + 1) & U64, "lt": max(c.value - 1, 0),
                       "le": c.value, "gt": (c.value + 1) & U64, "ge": c.value,
                       "masked_eq": c.value}[c.op]
    assert rule.matches(args), rule
    return args


# --- building the profile (pure) ------------------------------------------------------------

def test_every_required_syscall_is_refused_with_eperm_and_says_why(
    profile: SeccompProfile,
) -> None:
    for name in REQUIRED_EPERM:
        rules = profile.rules_for(name)
        assert rules, f"{name} has no rule in the {profile.style}"
        for r in rules:
            assert (r.action, r.errno) == ("errno", errno.EPERM), r
            assert len(r.why) > 10, f"{name}: the rule must name the threat"
        assert decide(profile, name, [0] * 6) == EPERM, name
        assert decide(profile, name, [U64] * 6) == EPERM, name


def test_every_rule_names_its_reason(profile: SeccompProfile) -> None:
    assert all(r.why.strip() for r in profile.rules)


def test_clone3_fails_with_enosys_so_glibc_falls_back_to_the_checkable_clone(
    profile: SeccompProfile,
) -> None:
    (rule,) = profile.rules_for("clone3")
    assert rule.verdict == ENOSYS and "cannot read" in rule.why
    assert decide(profile, "clone3", [0] * 6) == ENOSYS


@pytest.mark.parametrize("domain", [socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK,
                                    socket.AF_PACKET, socket.AF_VSOCK, socket.AF_ALG, 0,
                                    255, (1 << 32) | socket.AF_INET, (1 << 32) | 1])
def test_sockets_of_any_family_but_unix_are_refused(
    profile: SeccompProfile, domain: int
) -> None:
    # Garbage in the upper half: the kernel would read AF_INET from the low half. A check
    # on the whole register refuses it (and over-refuses 0x1_00000001: harmless).
    for call in ("socket", "socketpair"):
        assert decide(profile, call, [domain, socket.SOCK_STREAM, 0]) == EPERM, (call, domain)


def test_unix_sockets_are_allowed(profile: SeccompProfile) -> None:
    for call in ("socket", "socketpair"):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
            assert decide(profile, call, [socket.AF_UNIX, kind | socket.SOCK_CLOEXEC]) == ALLOW


def test_clone_for_threads_and_fork_is_allowed_but_every_namespace_flag_is_refused(
    profile: SeccompProfile,
) -> None:
    assert decide(profile, "clone", [THREAD_FLAGS]) == ALLOW
    assert decide(profile, "clone", [FORK_FLAGS]) == ALLOW
    for bit in CLONE_NEW_ALL:
        assert decide(profile, "clone", [FORK_FLAGS | bit]) == EPERM, hex(bit)
        assert decide(profile, "clone", [THREAD_FLAGS | bit]) == EPERM, hex(bit)
    assert decide(profile, "clone", [sum(CLONE_NEW_ALL) | signal.SIGCHLD]) == EPERM


def test_tiocsti_is_refused_even_with_garbage_in_the_upper_half_of_cmd(
    profile: SeccompProfile,
) -> None:
    # ioctl's cmd is an unsigned int: the kernel drops the upper half, so a filter that
    # compared all 64 bits would let 0x1_00005412 through (CVE-2019-10063).
    for cmd in (TIOCSTI, (1 << 32) | TIOCSTI, (0xDEAD << 32) | TIOCSTI, 0x541C):
        assert decide(profile, "ioctl", [0, cmd, 0]) == EPERM, hex(cmd)
    assert decide(profile, "ioctl", [0, 0x5401, 0]) == ALLOW  # TCGETS, i.e. isatty()


def test_device_nodes_are_refused_but_fifos_are_not(profile: SeccompProfile) -> None:
    assert decide(profile, "mknodat", [0, 0, 0o020600, 0x0801]) == EPERM  # char device
    assert decide(profile, "mknodat", [0, 0, 0o060600, 0x0801]) == EPERM  # block device
    assert decide(profile, "mknod", [0, 0o060600, 0x0801]) == EPERM
    assert decide(profile, "mknodat", [0, 0, 0o010600, 0]) == ALLOW  # os.mkfifo


def test_real_time_scheduling_is_refused_but_libzmqs_sched_other_is_not(
    profile: SeccompProfile,
) -> None:
    tid = 1234
    for policy in (1, 2, 1 | 0x40000000, (1 << 32) | 2):  # FIFO, RR, RESET_ON_FORK, garbage
        assert decide(profile, "sched_setscheduler", [tid, policy, 0]) == EPERM, policy
    assert decide(profile, "sched_setscheduler", [tid, 0, 0]) == ALLOW
    assert decide(profile, "sched_setattr", [0, 0, 0]) == EPERM


def test_kill_minus_one_is_refused_however_it_is_spelled(profile: SeccompProfile) -> None:
    for pid in (U64, 0xFFFFFFFF):  # sign-extended, zero-extended
        assert decide(profile, "kill", [pid, 0]) == EPERM
    assert decide(profile, "kill", [os.getpid(), signal.SIGTERM]) == ALLOW
    assert decide(profile, "kill", [0, signal.SIGTERM]) == ALLOW


def test_resource_limits_can_be_read_but_not_set(profile: SeccompProfile) -> None:
    assert decide(profile, "prlimit64", [0, 7, 0, 0x7FFF0000]) == ALLOW
    assert decide(profile, "prlimit64", [0, 7, 0x7FFF0000, 0]) == EPERM
    assert decide(profile, "prlimit64", [1, 7, 0, 0x7FFF0000]) == EPERM
    assert decide(profile, "setrlimit", [7, 0x7FFF0000]) == EPERM


def test_every_denial_in_the_profile_takes_effect(profile: SeccompProfile) -> None:
    # No allow rule may shadow a denial: a call matching any errno rule is refused.
    for rule in profile.rules:
        if rule.action == "errno":
            assert decide(profile, rule.syscall, witness(rule)) == rule.verdict, rule


def test_the_denylist_allows_by_default_and_the_allowlist_refuses_with_eperm() -> None:
    deny = build_profile("agent", "denylist")
    allow = build_profile("agent", "allowlist")
    assert deny.default_action == ALLOW and allow.default_action == EPERM
    assert decide(deny, "sync") == ALLOW
    assert decide(allow, "sync") == EPERM
    assert decide(allow, "open_tree_attr") == EPERM
    assert {r.syscall for r in deny.rules} <= {r.syscall for r in allow.rules}
    assert deny.bad_arch_action == allow.bad_arch_action == "kill_process"


def test_the_default_style_is_the_measured_winner() -> None:
    # docs/sandbox-seccomp.md has the figures behind this choice.
    assert seccomp.DEFAULT_STYLE == "allowlist"
    assert build_profile().style == "allowlist"
    assert build_profile() == build_profile("agent", "allowlist")


def test_the_allowlist_allows_what_the_agent_runtime_was_seen_to_use() -> None:
    # From strace -f of the demo agents: the interpreter, libzmq's threads, the runtime.
    p = build_profile("agent", "allowlist")
    seen: dict[str, list[int]] = {
        "read": [], "write": [], "close": [], "openat": [], "newfstatat": [], "lseek": [],
        "getdents64": [], "mmap": [], "munmap": [], "mprotect": [], "madvise": [], "brk": [],
        "futex": [], "set_robust_list": [], "rseq": [], "rt_sigaction": [],
        "rt_sigprocmask": [], "exit": [], "exit_group": [], "getpid": [], "gettid": [],
        "getrandom": [], "epoll_create1": [], "epoll_ctl": [], "epoll_wait": [], "poll": [],
        "eventfd2": [], "fcntl": [], "connect": [], "getsockopt": [], "getsockname": [],
        "getpeername": [], "sendto": [], "recvfrom": [], "chdir": [], "sched_getparam": [],
        "sched_getscheduler": [], "clock_nanosleep": [], "wait4": [], "pipe2": [],
        "socket": [socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0],
        "socketpair": [socket.AF_UNIX, socket.SOCK_STREAM, 0],
        "clone": [THREAD_FLAGS], "sched_setscheduler": [4321, 0, 0],
        "prctl": [15, 0], "ioctl": [1, 0x5401, 0], "prlimit64": [0, 7, 0, 1],
    }
    for name, args in seen.items():
        assert decide(p, name, args) == ALLOW, name


def test_unknown_variants_and_styles_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown variant 'bogus'; known: agent, deno"):
        build_profile("bogus")
    with pytest.raises(ValueError, match="unknown style 'greylist'"):
        build_profile("agent", "greylist")


def test_an_unconditional_allow_that_would_silently_drop_a_denial_is_rejected() -> None:
    # libseccomp lets an unconditional rule override conditional ones for the same
    # syscall without a word: allowing ioctl outright would drop the TIOCSTI denial.
    tiocsti = Rule("ioctl", "errno", errno.EPERM, (ArgCheck(1, "eq", TIOCSTI),), "x")
    bad = SeccompProfile("agent", "allowlist", EPERM,
                         (tiocsti, Rule("ioctl", "allow", why="everything")))
    with pytest.raises(ValueError, match="ioctl is allow unconditionally"):
        decide(bad, "ioctl", [0, TIOCSTI])
    with pytest.raises(SandboxError, match=r"^seccomp: cannot compile"):
        compile_bpf(bad)
    mixed = SeccompProfile("agent", "denylist", ALLOW,
                           (tiocsti, Rule("ioctl", "errno", errno.EACCES,
                                          (ArgCheck(1, "eq", 1),), "y")))
    with pytest.raises(ValueError, match="different verdicts"):
        decide(mixed, "ioctl")


def test_rules_and_checks_refuse_what_libseccomp_cannot_express() -> None:
    with pytest.raises(ValueError, match=r"0\.\.5"):
        ArgCheck(6, "eq", 0)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        ArgCheck(0, "eq", -1)
    with pytest.raises(ValueError, match="mask"):
        ArgCheck(0, "eq", 0, mask=0xFF)
    with pytest.raises(ValueError, match="no errno"):
        Rule("read", "allow", errno.EPERM)
    with pytest.raises(ValueError, match="needs an errno"):
        Rule("read", "errno", 0)
    with pytest.raises(ValueError, match="one check per argument"):
        Rule("personality", "errno", errno.EPERM,
             (ArgCheck(0, "ne", 0), ArgCheck(0, "ne", 0xFFFFFFFF)))


def test_arg_checks_compare_unsigned_64_bit_values() -> None:
    assert ArgCheck(0, "le", 0x7FFFFFFF).matches([5])
    assert not ArgCheck(0, "le", 0x7FFFFFFF).matches([-5 & U64])
    assert ArgCheck(1, "masked_eq", 0x5412, 0xFFFFFFFF).matches([0, (7 << 32) | 0x5412])
    assert ArgCheck(2, "gt", 3).matches([0, 0, 4]) and ArgCheck(2, "lt", 3).matches([])
    assert str(EPERM) == "errno EPERM" and str(ALLOW) == "allow"


# --- compiling (pure: libseccomp in this process, nothing loaded) ------------------------------

@pytest.fixture
def bpf(profile: SeccompProfile) -> bytes:
    return compile_bpf(profile)


def test_compile_returns_whole_sock_filter_instructions(bpf: bytes) -> None:
    assert len(bpf) % 8 == 0
    assert 0 < len(bpf) // 8 <= 4096


def test_the_compiled_filter_agrees_with_decide_on_every_syscall(
    profile: SeccompProfile, bpf: bytes
) -> None:
    def check(nr: int, name: str | None, args: list[int]) -> None:
        want: Verdict = decide(profile, name, args) if name else profile.default_action
        got = verdict_of(emulate_bpf(bpf, nr, args).ret)
        assert got == want, (nr, name, [hex(a) for a in args])

    generic = [[0] * 6, [U64] * 6, [socket.AF_INET, 1, 0, 0, 0, 0], [1, 0x5401, 0o10600, 0, 0, 0],
               [FORK_FLAGS | CLONE_NEWUSER] * 6, [(1 << 32) | TIOCSTI] * 6]
    for nr in range(512):
        for args in generic:
            check(nr, seccomp.syscall_name(nr), args)
    # Each rule's own edge: a matching call, the same with garbage in the upper halves,
    # and a near miss.
    for rule in profile.rules:
        rule_nr = seccomp.syscall_number(rule.syscall)
        if rule_nr is None:
            continue
        w = witness(rule)
        for args in (w, [a | (1 << 32) for a in w], [a ^ 1 for a in w]):
            check(rule_nr, rule.syscall, args)


def test_a_call_through_another_abi_kills_the_process(bpf: bytes) -> None:
    i386 = 0x40000003  # AUDIT_ARCH_I386: int 0x80 from a 64-bit process
    assert verdict_of(emulate_bpf(bpf, 20, arch=i386).ret) == "kill_process"
    assert verdict_of(emulate_bpf(bpf, 0x40000000 | 39).ret) == "kill_process"  # x32 getpid
    assert verdict_of(emulate_bpf(bpf, 39).ret) == ALLOW  # native getpid


def test_hot_syscalls_never_run_the_filter_but_checked_ones_do(bpf: bytes) -> None:
    # Linux 5.11+ caches "always allowed" per syscall when the filter reaches ALLOW without
    # reading an argument: the hot path of Python and libzmq costs no BPF at all.
    for name in ("read", "write", "futex", "epoll_wait", "poll", "recvfrom", "sendto"):
        nr = seccomp.syscall_number(name)
        assert nr is not None and emulate_bpf(bpf, nr).cacheable, name
    for name in ("socket", "clone", "ioctl", "kill"):
        nr = seccomp.syscall_number(name)
        assert nr is not None and not emulate_bpf(bpf, nr).cacheable, name


def test_syscalls_libseccomp_cannot_name_are_still_refused(
    profile: SeccompProfile, bpf: bytes
) -> None:
    if seccomp.syscall_number("open_tree_attr") is None:
        pytest.skip("open_tree_attr does not exist on this ABI")
    nr = seccomp.syscall_number("open_tree_attr")
    assert nr is not None
    assert verdict_of(emulate_bpf(bpf, nr, [0] * 6).ret) == EPERM
    with pytest.raises(ValueError, match="unknown syscall 'no_such_call'"):
        seccomp.syscall_number("no_such_call")


def test_describe_is_one_line_that_names_the_library_and_actions() -> None:
    line = seccomp.describe()
    assert "\n" not in line
    if seccomp.unsupported_reason() is None:
        assert "libseccomp 2." in line and "errno" in line and "allowlist" in line


def test_importing_the_module_does_not_load_libseccomp() -> None:
    # The child only loads bytes: it must not need libseccomp.so inside its sandbox.
    code = ("import sys, agentlibos.sandbox.seccomp as s; "
            "assert 'pyseccomp' not in sys.modules, 'imported'; "
            "assert s._NR_SECCOMP is not None, 'no syscall number'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_load_refuses_what_is_not_a_whole_program_before_touching_the_process() -> None:
    # Validation comes first: these never reach prctl() or seccomp().
    with open("/proc/self/status") as f:
        before = [ln for ln in f if ln.startswith(("NoNewPrivs", "Seccomp"))]
    for bad in (b"", b"\x06" * 7, b"\x00" * 8 * 4097):
        with pytest.raises(SandboxError, match=r"^seccomp: .* not a BPF program"):
            load_bpf(bad)
    with open("/proc/self/status") as f:
        assert [ln for ln in f if ln.startswith(("NoNewPrivs", "Seccomp"))] == before


# --- enforcement, from inside a real filtered child --------------------------------------------

_why_not = seccomp.unsupported_reason()
privileged = [
    pytest.mark.privileged,
    pytest.mark.skipif(_why_not is not None, reason=f"no seccomp filters: {_why_not}"),
]
NR: dict[str, int | None] = {
    n: seccomp.syscall_number(n)
    for n in ("socket", "execveat", "ptrace", "process_vm_readv", "unshare", "setns", "clone",
              "clone3", "mount", "umount2", "fsopen", "open_tree", "open_tree_attr",
              "io_uring_setup", "bpf", "keyctl", "add_key", "perf_event_open", "userfaultfd",
              "init_module", "kexec_load", "ioctl", "kill", "personality", "getpid")
}


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def raw(name: str, *args: int) -> int:
    """The errno of a raw syscall(2), 0 if it succeeded. Every argument is a c_long: the
    function is variadic, and a bare int would leave the upper half undefined."""
    nr = NR[name]
    assert nr is not None, name
    r = _libc().syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if r < 0 else 0


def attempt(fn: Callable[[], object]) -> int | str:
    """The errno ``fn`` failed with, 0 if it worked."""
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    except Exception as e:  # noqa: BLE001 - anything else is reported, not raised
        return f"{type(e).__name__}: {e}"
    return 0


def in_sandbox(style: str | None, fn: Callable[[], Any], *,
               before: Callable[[], None] | None = None,
               serve: Callable[[], None] | None = None,
               timeout_s: float = 60.0) -> tuple[dict[str, Any] | None, int]:
    """Fork; in the child run ``before``, load the ``style`` filter (None: none), run ``fn``
    and send ``{"ok", "value"|"error"}`` back. Returns (report or None, wait status).

    The filter is compiled here, before the fork, as the supervisor does. ``serve`` is
    called in the parent, repeatedly, while it waits (an echo server's turn).
    """
    bpf = compile_bpf(build_profile("agent", style)) if style else b""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(r)
            # A test that kills the child must not leave a core file behind.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if before is not None:
                before()
            if bpf:
                load_bpf(bpf)
            out: dict[str, Any] = {"ok": True, "value": fn()}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        try:
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if serve is not None:
                serve()
            if select.select([r], [], [], 0.0 if serve else 0.5)[0]:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    return (json.loads(b"".join(chunks)) if chunks else None), status


def inside(style: str | None, fn: Callable[[], Any], **kw: Any) -> Any:
    """Run ``fn`` in a filtered child and return its value; fail with what went wrong."""
    report, status = in_sandbox(style, fn, **kw)
    assert report is not None, f"the child sent no report (wait status {status:#x})"
    assert report["ok"], report["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return report["value"]


styles = pytest.mark.parametrize("style", STYLES)


def sandboxed(fn: Callable[[str], None]) -> Callable[[str], None]:
    """Privileged, skipped only without kernel support, run under each style."""
    for mark in (*reversed(privileged), styles):
        fn = mark(fn)
    return fn


@sandboxed
def test_inside_only_unix_sockets_can_be_made(style: str) -> None:
    def pair() -> None:
        a, b = socket.socketpair()
        a.close()
        b.close()

    def attack() -> dict[str, Any]:
        return {
            "inet": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            "inet_udp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
            "inet6": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)),
            "netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
            "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
            "raw_inet": raw("socket", socket.AF_INET, socket.SOCK_STREAM, 0),
            "raw_inet_high_bits": raw("socket", (1 << 32) | socket.AF_INET,
                                      socket.SOCK_STREAM, 0),
            "pair_inet": attempt(lambda: socket.socketpair(socket.AF_INET)),
            "unix": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()),
            "unix_dgram": attempt(lambda: socket.socket(socket.AF_UNIX,
                                                        socket.SOCK_DGRAM).close()),
            "unix_pair": attempt(pair),
        }

    got = inside(style, attack)
    for key in ("inet", "inet_udp", "inet6", "netlink", "packet", "raw_inet",
                "raw_inet_high_bits", "pair_inet"):
        assert got[key] == errno.EPERM, (key, got[key])
    assert got["unix"] == got["unix_dgram"] == got["unix_pair"] == 0, got


@sandboxed
def test_inside_no_other_program_can_be_run(style: str) -> None:
    def attack() -> dict[str, Any]:
        sh = os.open("/bin/sh", os.O_RDONLY | os.O_CLOEXEC)
        empty = ctypes.create_string_buffer(b"")
        argv = (ctypes.c_char_p * 4)(b"sh", b"-c", b"exit 0", None)
        return {
            "execv": attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "exit 0"])),  # noqa: S606
            "execveat": raw("execveat", sh, ctypes.addressof(empty), ctypes.addressof(argv),
                            0, 0x1000),  # AT_EMPTY_PATH
            "subprocess": attempt(lambda: __import__("subprocess").run(["/bin/true"])),
        }

    got = inside(style, attack)
    assert got == {"execv": errno.EPERM, "execveat": errno.EPERM, "subprocess": errno.EPERM}


@sandboxed
def test_inside_the_parent_cannot_be_traced_or_read(style: str) -> None:
    secret = b"the parent's secret"
    where = ctypes.create_string_buffer(secret)  # same address in the forked child

    def attack() -> dict[str, Any]:
        parent = os.getppid()
        got = raw("ptrace", 16, parent, 0, 0)  # PTRACE_ATTACH
        if got == 0:  # the filter failed: let the parent go before reporting
            os.waitpid(parent, 0x40000000)  # __WALL
            _libc().ptrace(ctypes.c_long(17), ctypes.c_long(parent), None, None)
        buf = ctypes.create_string_buffer(len(secret))
        local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), len(secret))
        remote = (ctypes.c_void_p * 2)(ctypes.addressof(where), len(secret))
        return {"ptrace": got,
                "process_vm_readv": raw("process_vm_readv", parent, ctypes.addressof(local),
                                        1, ctypes.addressof(remote), 1, 0),
                "leaked": buf.raw == secret}

    assert inside(style, attack) == {"ptrace": errno.EPERM,
                                     "process_vm_readv": errno.EPERM, "leaked": False}


@sandboxed
def test_inside_no_namespace_can_be_made_or_joined(style: str) -> None:
    def attack() -> dict[str, Any]:
        def clone(flags: int) -> int:
            nr = NR["clone"]
            assert nr is not None
            r = _libc().syscall(ctypes.c_long(nr), ctypes.c_long(flags), *[ctypes.c_long(0)] * 4)
            if r == 0:  # the filter failed and we are the new child: leave at once
                os._exit(0)
            if r > 0:
                os.waitpid(r, 0)
                return 0
            return ctypes.get_errno()

        uts = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        return {
            "unshare_user": raw("unshare", CLONE_NEWUSER),
            "unshare_mnt": raw("unshare", CLONE_NEWNS),
            "clone_newns": clone(CLONE_NEWNS | signal.SIGCHLD),
            "clone_newuser": clone(CLONE_NEWUSER | signal.SIGCHLD),
            "setns": raw("setns", uts, 0),
            "clone3": raw("clone3", 0, 0),
            "plain_fork": clone(signal.SIGCHLD),
        }

    got = inside(style, attack)
    assert got == {"unshare_user": errno.EPERM, "unshare_mnt": errno.EPERM,
                   "clone_newns": errno.EPERM, "clone_newuser": errno.EPERM,
                   "setns": errno.EPERM, "clone3": errno.ENOSYS, "plain_fork": 0}


@sandboxed
def test_inside_nothing_can_be_mounted(style: str) -> None:
    # NULL paths: should the filter fail, the kernel says EFAULT, and nothing is mounted
    # in what is still the host's mount namespace.
    def attack() -> dict[str, Any]:
        out = {name: raw(name, 0, 0, 0, 0, 0) for name in ("mount", "umount2", "fsopen",
                                                           "open_tree")}
        if NR["open_tree_attr"] is not None:
            out["open_tree_attr"] = raw("open_tree_attr", 0, 0, 0, 0, 0)
        return out

    got = inside(style, attack)
    assert got and all(v == errno.EPERM for v in got.values()), got


@sandboxed
def test_inside_the_kernels_riskiest_interfaces_are_refused(style: str) -> None:
    def attack() -> dict[str, Any]:
        params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
        return {
            "io_uring_setup": raw("io_uring_setup", 8, ctypes.addressof(params)),
            "bpf": raw("bpf", 0, 0, 0),  # BPF_MAP_CREATE
            "keyctl": raw("keyctl", 0, -3, 0),  # KEYCTL_GET_KEYRING_ID, session keyring
            "add_key": raw("add_key", 0, 0, 0, 0, 0),
            "perf_event_open": raw("perf_event_open", 0, 0, -1, -1, 0),
            "userfaultfd": raw("userfaultfd", os.O_CLOEXEC),
            "init_module": raw("init_module", 0, 0, 0),
            "kexec_load": raw("kexec_load", 0, 0, 0, -1),  # invalid flags, come what may
            "personality": raw("personality", 0x0400000),  # READ_IMPLIES_EXEC
        }

    got = inside(style, attack)
    assert got and all(v == errno.EPERM for v in got.values()), got


@sandboxed
def test_inside_keystrokes_cannot_be_pushed_into_a_terminal(style: str) -> None:
    fds: list[int] = []

    def open_pty() -> None:
        fds.extend(os.openpty())

    def attack() -> dict[str, Any]:
        ch = ctypes.c_char(b"x")
        return {"tiocsti": raw("ioctl", fds[1], TIOCSTI, ctypes.addressof(ch)),
                "tiocsti_high_bits": raw("ioctl", fds[1], (1 << 32) | TIOCSTI,
                                         ctypes.addressof(ch)),
                "isatty": os.isatty(fds[1])}

    got = inside(style, attack, before=open_pty)
    assert got == {"tiocsti": errno.EPERM, "tiocsti_high_bits": errno.EPERM, "isatty": True}


@sandboxed
def test_inside_kill_minus_one_is_refused(style: str) -> None:
    # Signal 0 only asks "could I?": harmless even if the filter failed.
    got = inside(style, lambda: {"kill_all": attempt(lambda: os.kill(-1, 0)),
                                 "kill_self": attempt(lambda: os.kill(os.getpid(), 0))})
    assert got == {"kill_all": errno.EPERM, "kill_self": 0}


@sandboxed
def test_inside_status_shows_the_filter_and_no_new_privs(style: str) -> None:
    def status() -> dict[str, str]:
        with open("/proc/self/status") as f:
            lines = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        return {k: lines[k] for k in ("Seccomp", "Seccomp_filters", "NoNewPrivs")}

    assert inside(style, status) == {"Seccomp": "2", "Seccomp_filters": "1", "NoNewPrivs": "1"}


@sandboxed
def test_inside_python_zmq_threads_and_json_work(style: str) -> None:
    d = tempfile.mkdtemp(prefix="alos-sc-", dir="/tmp")
    endpoint = f"ipc://{d}/broker"

    def agent() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with zmq.Context(io_threads=1) as ctx, ctx.socket(zmq.DEALER) as s:
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            for i in range(3):
                s.send_multipart([b"ping", str(i).encode()])
                if not s.poll(10_000):
                    raise TimeoutError("no reply from the ROUTER")
                out[f"reply{i}"] = [f.decode() for f in s.recv_multipart()]
        results: list[str] = []
        t = threading.Thread(target=lambda: results.append(
            hashlib.sha256(json.dumps({"a": [1, 2]}).encode()).hexdigest()))
        t.start()
        t.join()
        out["thread"] = results
        sys.modules.pop("colorsys", None)  # a real import under the filter: openat, read...
        colorsys = importlib.import_module("colorsys")
        out["import"] = colorsys.rgb_to_hsv(1.0, 0.0, 0.0)
        scratch = tempfile.mkdtemp()
        with open(os.path.join(scratch, "f.json"), "w") as f:
            json.dump({"k": "v"}, f)
        with open(os.path.join(scratch, "f.json")) as f:
            out["file"] = json.load(f)
        shutil.rmtree(scratch)
        return out

    # The ROUTER is made in this process only after the fork: a process with ZeroMQ I/O
    # threads must never fork.
    state: dict[str, Any] = {}

    def serve() -> None:
        if "sock" not in state:
            state["ctx"] = zmq.Context(io_threads=1)
            state["sock"] = state["ctx"].socket(zmq.ROUTER)
            state["sock"].setsockopt(zmq.LINGER, 0)
            state["sock"].bind(endpoint)
        sock: zmq.Socket[bytes] = state["sock"]
        if sock.poll(20):
            ident, *frames = sock.recv_multipart()
            sock.send_multipart([ident, b"pong", *frames[1:]])

    try:
        got = inside(style, agent, serve=serve)
    finally:
        if "sock" in state:
            state["sock"].close(0)
            state["ctx"].term()
        shutil.rmtree(d, ignore_errors=True)
    assert got["reply0"] == ["pong", "0"] and got["reply2"] == ["pong", "2"]
    assert got["thread"] == [hashlib.sha256(b'{"a": [1, 2]}').hexdigest()]
    assert got["import"] == [0.0, 1.0, 1.0] and got["file"] == {"k": "v"}


@sandboxed
def test_a_thread_started_before_the_filter_is_filtered_too(style: str) -> None:
    # TSYNC: a thread that already exists gets the filter at the same instant.
    go, done = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def start_thread() -> None:
        def body() -> None:
            go.wait(10)
            seen["inet"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            done.set()

        threading.Thread(target=body, daemon=True).start()

    def attack() -> dict[str, Any]:
        go.set()
        done.wait(10)
        return seen

    assert inside(style, attack, before=start_thread) == {"inet": errno.EPERM}


@sandboxed
def test_a_syscall_through_the_x32_abi_kills_the_process(style: str) -> None:
    def attack() -> dict[str, Any]:
        libc = _libc()
        libc.syscall(ctypes.c_long(0x40000000 | 39))  # x32 getpid
        return {"survived": True}

    report, status = in_sandbox(style, attack)
    assert report is None, report
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def _status(key: str) -> str:
    with open("/proc/self/status") as f:
        return next(ln.split()[1] for ln in f if ln.startswith(key + ":"))


@pytest.mark.privileged
@pytest.mark.skipif(_why_not is not None, reason=f"no seccomp filters: {_why_not}")
def test_a_program_the_kernel_refuses_fails_closed_with_the_reason() -> None:
    # One instruction, "jump 5 ahead": out of range, so the kernel says EINVAL.
    bogus = bytes([0x05, 0x00, 0, 0, 5, 0, 0, 0])

    def attempt_load() -> dict[str, Any]:
        try:
            load_bpf(bogus)
        except SandboxError as e:
            return {"error": e.message, "mode": _status("Seccomp")}
        return {"error": None}

    got = inside(None, attempt_load)
    assert got["error"].startswith("seccomp: seccomp(SET_MODE_FILTER, TSYNC) failed: EINVAL")
    assert got["mode"] == "0"


@pytest.mark.privileged
@pytest.mark.skipif(_why_not is not None, reason=f"no seccomp filters: {_why_not}")
def test_a_thread_that_cannot_take_the_filter_fails_the_load_and_is_named() -> None:
    # A thread with a filter of its own (loaded without TSYNC) has diverged: the kernel
    # then applies the filter to no thread and answers with that thread's id.
    bpf = compile_bpf(build_profile())
    allow_all = compile_bpf(SeccompProfile("agent", "denylist", ALLOW, ()))
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def diverge() -> None:
        tid.append(threading.get_native_id())
        libc = _libc()
        prog = ctypes.create_string_buffer(allow_all)
        fprog = (ctypes.c_ulong * 2)(len(allow_all) // 8, ctypes.addressof(prog))
        libc.prctl(ctypes.c_int(38), ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))  # PR_SET_NO_NEW_PRIVS, this thread
        libc.prctl(ctypes.c_int(22), ctypes.c_ulong(2), ctypes.c_void_p(ctypes.addressof(fprog)),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))  # PR_SET_SECCOMP, this thread only
        ready.set()
        done.wait(10)

    def attempt_load() -> dict[str, Any]:
        threading.Thread(target=diverge, daemon=True).start()
        ready.wait(10)
        try:
            load_bpf(bpf)
        except SandboxError as e:
            return {"error": e.message, "tid": tid[0], "mode": _status("Seccomp")}
        finally:
            done.set()
        return {"error": None}

    got = inside(None, attempt_load)
    assert got["error"] == (f"seccomp: thread {got['tid']} could not take the filter (TSYNC: "
                            f"it has a diverging filter); nothing was applied")
    assert got["mode"] == "0"


@pytest.fixture(autouse=True)
def _no_filter_in_pytest() -> Iterator[None]:
    """Guard: nothing here may ever filter the test runner itself."""
    yield
    with open("/proc/self/status") as f:
        assert "Seccomp:\t0" in f.read()


DENO_EXE_FD = seccomp.DENO_EXE_FD


def test_the_deno_variant_execs_only_the_pre_opened_binary_and_nothing_by_path() -> None:
    for style in ("allowlist", "denylist"):
        p = build_profile("deno", style)
        assert seccomp.decide(p, "execveat", (DENO_EXE_FD, 0, 0, 0, 0x1000)).action == "allow"
        assert seccomp.decide(p, "execveat", (DENO_EXE_FD + 1, 0, 0, 0, 0x1000)).action \
            == "errno"
        assert seccomp.decide(p, "execveat", (DENO_EXE_FD, 0, 0, 0, 0)).action == "errno"
        assert seccomp.decide(p, "execve").action == "errno"
        # Everything the agent variant refuses, Deno is refused too.
        for name in ("ptrace", "mount", "bpf", "io_uring_setup", "unshare"):
            assert seccomp.decide(p, name).action == "errno", (style, name)
