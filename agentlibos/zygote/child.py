"""What a freshly forked AgentProcess does before the agent's first line runs.

Runs in the zygote's child, single-threaded. Everything here was decided by the
supervisor and arrives in ``spec``; the child does no thinking, only applies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Final, NoReturn

import setproctitle

from agentlibos.protocol.zmtp import Dealer
from agentlibos.sandbox import contain
from agentlibos.sandbox.pdeathsig import set_pdeathsig
from agentlibos.sandbox.seccomp import DENO_EXE_FD
from agentlibos.sdk.runtime import rehearse, run_agent

# Exit status of a child that could not be contained or started (the reason went down
# the report pipe first).
START_FAILED_STATUS = 121


def _report(fd: int, msg: dict[str, Any], *, keep: bool = False) -> None:
    data = json.dumps(msg).encode()
    try:
        os.write(fd, data + b"\n" if keep else data)
    finally:
        if not keep:
            os.close(fd)


def parse_report(data: bytes) -> dict[str, Any]:
    """The supervisor's side of ``_report``: a garbled report counts as a failure."""
    try:
        report = json.loads(data)
    except (ValueError, RecursionError):
        report = None
    if not isinstance(report, dict):
        return {"ok": False, "error": "unreadable start report"}
    return report


def decode_spec(data: bytes, report_fd: int, *, pid_ns_ready: bool) -> dict[str, Any]:
    """A freshly forked child's spec, from the JSON the zygote passed on undecoded
    (channel.encode_spawn); ``pid_ns_ready``: the zygote made it pid 1 of a new pid
    namespace. One the supervisor did not encode as an object: report it and exit,
    never return into the zygote's code."""
    try:
        spec = json.loads(data)
        if not isinstance(spec, dict):
            raise ValueError("the spec is not a JSON object")
    except (ValueError, RecursionError) as e:
        try:
            _report(report_fd, {"ok": False, "error": f"a garbled spawn request: {e}"})
        finally:
            os._exit(START_FAILED_STATUS)
    if pid_ns_ready:
        spec["pid_ns_ready"] = True
    return spec


def _redirect_stdio(log_fd: int) -> None:
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def _title(spec: dict[str, Any]) -> None:
    """What `ps` on the host shows for this process (``agentlibos: 7 summarize``)."""
    title = spec.get("title")
    if isinstance(title, str):
        setproctitle.setproctitle(title)


def _start(spec: dict[str, Any], report_fd: int,
           setup: Callable[[], None], pooled: contain.Pooled | None = None,
           handed: contain.Handed | None = None, keep_report: bool = False
           ) -> contain.Contained:
    """Set up, contain, enter scratch and report -- or report why not and exit.
    ``keep_report``: the report is a line and its pipe stays open (a shell command's
    init reports the command's status on it later)."""
    try:
        setup()
        contained = contain.apply(spec.get("profile", {}),
                                  pid_ns_ready=bool(spec.get("pid_ns_ready")), pooled=pooled,
                                  handed=handed)
        # A shell command starts in its caller's libOS cwd (bound at its own path).
        os.chdir(spec.get("cwd") or contained.inside(spec["scratch"]))
        _report(report_fd, {"ok": True, "layers": contained.layers,
                            "missing": contained.missing, "timings_ms": contained.timings_ms},
                keep=keep_report)
        return contained
    except BaseException as e:  # noqa: BLE001 - anything here means "did not start"
        try:
            _report(report_fd, {"ok": False, "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
        finally:
            os._exit(START_FAILED_STATUS)


def _close_inherited(*keep: int) -> None:
    """Close everything inherited except stdio and ``keep`` (the report pipe...)."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def run_exec(spec: dict[str, Any], report_fd: int, stdin_fd: int, stdout_fd: int) -> NoReturn:
    """Contain this child, then exec ``spec["argv"]`` -- a JIT tool's Deno.

    The program is opened before the sandbox closes and executed by fd
    (``execveat(DENO_EXE_FD, "", ..., AT_EMPTY_PATH)``): the seccomp filter allows
    exactly that one exec, and Landlock allows executing that one file.
    """

    def setup() -> None:
        set_pdeathsig(signal.SIGKILL)
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _title(spec)
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                      0o600)
        os.dup2(log, 2)
        _close_inherited(report_fd)
        exe = os.open(spec["argv"][0], os.O_PATH | os.O_CLOEXEC)
        os.dup2(exe, DENO_EXE_FD, inheritable=False)
        os.close(exe)

    _start(spec, report_fd, setup)
    try:
        os.execve(DENO_EXE_FD, spec["argv"], spec["env"])  # noqa: S606 - no shell, by fd
    except OSError as e:
        os.write(2, f"exec {spec['argv'][0]}: {e}\n".encode())
    os._exit(START_FAILED_STATUS)


# Exit status of a command that could not be executed (not found, not executable), as a
# POSIX shell reports it.
EXEC_FAILED_STATUS = 127


def run_command(spec: dict[str, Any], report_fd: int, stdin_fd: int, stdout_fd: int,
                stderr_fd: int) -> NoReturn:
    """Contain this child, then exec a shell.exec command: ``spec["exe"]`` (argv[0] as
    the supervisor resolved and authorised it) with ``spec["argv"]``, in ``spec["cwd"]``.

    The "shell" seccomp variant allows execve; the profile runs it as the owner of the
    cwd with no capabilities, in a tree of the system and the caller's fs paths only.
    """

    def setup() -> None:
        set_pdeathsig(signal.SIGKILL)
        os.setpgid(0, 0)
        # Python ignores SIGPIPE and SIGXFSZ, and the zygote SIGINT; an ignored signal
        # stays ignored across exec: `yes | head` would never end, a full file not stop.
        for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        _title(spec)
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        _close_inherited(report_fd)

    _start(spec, report_fd, setup, keep_report=True)
    os.set_inheritable(report_fd, False)
    try:
        command = os.fork()
    except OSError as e:
        os.write(2, f"{spec['argv'][0]}: cannot start it: {e.strerror}\n".encode())
        os._exit(EXEC_FAILED_STATUS)
    if command == 0:
        try:
            os.execve(spec["exe"], spec["argv"], spec["env"])  # noqa: S606 - argv only
        except OSError as e:
            os.write(2, f"{spec['argv'][0]}: cannot run it: {e.strerror}\n".encode())
        os._exit(EXEC_FAILED_STATUS)
    _init(command, report_fd)


def _init(command: int, report_fd: int) -> NoReturn:
    """Pid 1 of a shell command's pid namespace, with the command as pid 2.

    The kernel drops every signal a namespace's pid 1 has no handler for when it comes
    from inside, so a command that was pid 1 itself could not kill or abort itself
    (``kill -TERM $$`` went on, ``abort()`` became SIGSEGV): this init, like
    ``docker --init``, reaps what the command leaves and reports the command's own wait
    status on the start report's pipe. Its exit then ends the namespace, and the kernel
    kills whatever is left in it.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a supervisor gone: nothing to tell
    os.closerange(0, 3)
    while True:
        try:
            pid, status = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(EXEC_FAILED_STATUS)
        if pid == command:
            break
    with contextlib.suppress(OSError):
        _report(report_fd, {"status": status})
    os._exit(0)


# An agent's environment, besides HOME and TMPDIR (its scratch directory).
AGENT_ENVIRON: Final = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def agent_environ() -> None:
    """Make this process's environment an agent's (less HOME and TMPDIR): called once in
    the zygote, after its imports, so that each child only sets its two paths. Clearing
    and refilling os.environ in every child ran the mapping's Python methods over every
    variable there, and copied ~0.5 MiB of pages the child shares with the zygote.

    (The zygote's own start-up environment is the supervisor's cut to an allow-list:
    zygote_client.zygote_env. It stays in the exec'd block, /proc/self/environ, which
    therefore holds nothing secret either.)"""
    os.environ.clear()
    os.environ.update(AGENT_ENVIRON)


def run_child(spec: dict[str, Any], report_fd: int, log_fd: int, *,
              zygote_pid: int, pooled: contain.Pooled | None = None,
              dealer: Dealer | None = None, handed: contain.Handed | None = None
              ) -> NoReturn:
    def setup() -> None:
        if pooled is not None:  # run_pooled did the rest before the assignment came
            _title(spec)
            return
        # If the zygote (and so the supervisor) dies, so do we: no unsupervised agents.
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(START_FAILED_STATUS)
        # Our own process group: a kill of the group reaches whatever the agent forks.
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _title(spec)
        _redirect_stdio(log_fd)
        _close_inherited(report_fd)

    contained = _start(spec, report_fd, setup, pooled, handed)
    scratch = contained.inside(spec["scratch"])
    # The rest of the environment was set once, in the zygote (agent_environ).
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    endpoint = spec["endpoint"]
    if endpoint.startswith("ipc://"):
        endpoint = "ipc://" + contained.inside(endpoint[len("ipc://"):])
    code = run_agent(endpoint, spec["pid"], bytes.fromhex(spec["token"]), dealer=dealer)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# What a pooled process writes on its report pipe once pre-confined: the zygote reads
# it (anything else is why it failed) before it hands the pipe to the supervisor.
POOL_READY: Final = b"R"
POOL_TITLE: Final = "agentlibos: pooled"


# Where a pooled process holds its assignment socket while it waits (_renumber).
POOL_ASSIGN_FD: Final = 4
# The most descriptors an assignment brings: its agent's binds (image, scratch, broker
# socket) and a nested agent's cgroups (one per hierarchy); the zygote receives a spawn's
# with the same bound. More is an error.
MAX_ASSIGN_FDS: Final = 16


def run_pooled(pool: dict[str, Any], report_fd: int, log_fd: int, assign_fd: int, *,
               zygote_pid: int, cgroup_name: str | None = None) -> NoReturn:
    """A pooled process (docs/sandbox.md, "The warm pool"): confine as far as nothing
    image-specific is needed, say so, block on the socket ``assign_fd`` until the zygote
    sends one assignment -- the spec run_child takes, with its agent's binds as
    descriptors (namespaces.agent_binds) -- and closes it, then run it. It serves that
    one agent and exits; EOF without a spec means it was retired unused.
    ``cgroup_name``: the top-level cgroup it makes for itself when the template has a
    cgroup recipe."""
    dealer: list[Dealer] = []

    def connect() -> None:
        # Connected now, as root, by the host path, before the pivot hides it: the fd
        # outlives the pivot, Landlock and the uid switch on assignment (none of them
        # acts on an open socket).
        if pool.get("broker"):
            dealer.append(Dealer("ipc://" + pool["broker"]))

    try:
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(START_FAILED_STATUS)
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        setproctitle.setproctitle(POOL_TITLE)
        _redirect_stdio(log_fd)
        _close_inherited(report_fd, assign_fd)
        report_fd, assign_fd = _renumber(report_fd, assign_fd)  # 3, POOL_ASSIGN_FD
        pooled = contain.pre_contain(pool, cgroup_name, before_pivot=connect)
        os.write(report_fd, POOL_READY)
    except BaseException as e:  # noqa: BLE001 - anything here means "cannot be pooled"
        with contextlib.suppress(OSError):
            os.write(report_fd, f"{type(e).__name__}: {e}".encode()[:4000])
        os._exit(START_FAILED_STATUS)
    try:
        contain.join_own_cgroup(pooled)
        contain.rehearse(pooled)
        t0 = time.perf_counter()
        if rehearse():  # the SDK's first steps (its entry module's import)
            pooled.timings_ms["pool_rehearsal"] = round((time.perf_counter() - t0) * 1e3, 3)
        spec, handed = _read_assignment(assign_fd)
    except BaseException:  # noqa: BLE001 - the zygote reports the exit; nothing runs here
        traceback.print_exc()
        os._exit(START_FAILED_STATUS)
    if spec is None:
        os._exit(0)
    run_child(spec, report_fd, -1, zygote_pid=zygote_pid, pooled=pooled,
              dealer=dealer[0] if dealer else None, handed=handed)


def _renumber(*fds: int) -> list[int]:
    """Move ``fds`` to 3, 4, ...: the numbers the forker's pipes got vary with what it
    holds, and so would those of every descriptor opened after them, the agent's
    included -- each agent should find the same ones, whichever process served it."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
    for fd in fds:
        os.close(fd)
    out = []
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=False)
        os.close(fd)
        out.append(3 + i)
    return out


def _read_assignment(assign_fd: int) -> tuple[dict[str, Any] | None, contain.Handed]:
    """Block in recvmsg(2) (no polling, no timer) until the zygote has sent the spec and
    closed the socket: the spec (None if it closed it unwritten) and the descriptors --
    its binds' ("mount_fds" names their targets), then its cgroups' ("cgroup_fds")."""
    sock = socket.socket(fileno=assign_fd)
    chunks: list[bytes] = []
    fds: list[int] = []
    try:
        while True:
            try:
                data, got, flags, _ = socket.recv_fds(sock, 1 << 16, MAX_ASSIGN_FDS)
            except InterruptedError:
                continue
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise ValueError(f"an assignment with more than {MAX_ASSIGN_FDS} descriptors")
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    if not chunks:
        for fd in fds:
            os.close(fd)
        return None, contain.Handed()
    spec = json.loads(b"".join(chunks))
    binds, joins = len(spec.get("mount_fds") or ()), len(spec.get("cgroup_fds") or ())
    if len(fds) != binds + joins:
        raise ValueError(f"the assignment brought {len(fds)} descriptors for {binds} "
                         f"binds and {joins} cgroups")
    return spec, contain.Handed(fds[:binds], fds[binds:])
