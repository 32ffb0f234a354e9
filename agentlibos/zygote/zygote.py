"""The zygote: a preloaded, single-threaded process that forks every AgentProcess.

Started once per supervisor as a fresh interpreter (``python -m
agentlibos.zygote.zygote FD SUPERVISOR_PID``), so it never inherits the supervisor's
ZeroMQ I/O threads or SQLite handles: forking a process that has other threads copies
locks held by threads that do not exist in the child. It imports everything an agent's
runtime needs *before* forking (the child pays no import cost) and never creates a
ZeroMQ context; each child creates its own after its sandbox is in place.

Protocol on the SOCK_SEQPACKET socket ``FD`` (one JSON object per packet):

  supervisor -> zygote  {"op": "spawn", "pid", "spec": {...}} | {"op": "exit"} |
                        {"op": "pool", "size", "key", "base": {...}} (the warm pool)
  zygote -> supervisor  {"op": "spawned", "pid", "host_pid"} + [pidfd, report_fd] as
                        SCM_RIGHTS (an "exec" adds its stdin and stdout pipes, and a
                        shell command's spec ("command") its stderr pipe too);
                        {"op": "spawn-failed", "pid", "error"};
                        {"op": "exited", "pid", "host_pid", "status"};
                        {"op": "pool-ready" | "pool-gone", "cgroup"} (the warm pool)

The zygote reaps its children (it is their parent) and reports each wait status; the
supervisor signals them through the pidfds, which cannot hit a recycled pid.

The warm pool (docs/sandbox.md): given ``base`` (what every agent's sandbox shares),
the zygote keeps ``size`` pooled processes forked and pre-confined (child.run_pooled),
forking a replacement after it has answered what was waiting, never before. A spawn
whose spec carries the pool's ``key`` is handed to a ready pooled process, if there is
one, by writing the spec down that process's own assignment pipe and closing it; the
supervisor sees the same "spawned" event either way (with "pooled": true). Each pooled
process serves one assignment and exits: none ever runs a second agent.

When the template carries a cgroup recipe, each pooled process also makes and joins a
top-level cgroup of its own (``p<zygote pid>-<n>``) before it is ready; the zygote says
"pool-ready" with that name, and hands a spawn only to the pooled process its spec
names ("pool_cgroup": the supervisor wrote a top-level agent's limits into that cgroup
first), never to another. One that ends unassigned is reported "pool-gone" (the
supervisor removes its cgroup).
"""

from __future__ import annotations

import _random
import collections
import contextlib
import ctypes
import errno
import gc
import json
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Final

import setproctitle

from agentlibos import libc
from agentlibos.sandbox.namespaces import CLONE_NEWPID
from agentlibos.sandbox.pdeathsig import set_pdeathsig

# Imported here, at the top, so the zygote has everything a child needs loaded before
# it forks: children share these pages copy-on-write and pay no import cost.
from agentlibos.zygote.child import (
    POOL_READY,
    agent_environ,
    run_child,
    run_command,
    run_exec,
    run_pooled,
)

MAX_PACKET: Final = 1 << 20

# libc's fork(), called with the GIL held (PyDLL): see _fork.
_LIBC_FORK: Final = ctypes.PyDLL(None, use_errno=True).fork
_LIBC_FORK.restype = ctypes.c_int
_LIBC_FORK.argtypes = ()


def _fork() -> int:
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
    share: the child reseeds it (_after_fork_child)."""
    pid = int(_LIBC_FORK())
    if pid < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fork: {os.strerror(e)}")
    if pid == 0:
        _after_fork_child()
    return pid


def _after_fork_child() -> None:
    """The part of os.fork()'s child hooks that still matters: a fresh random state.

    Seeded from the kernel by the C method (the Python one builds a 2.5 KiB int first).
    """
    random = sys.modules.get("random")
    if random is not None:
        inst = random._inst  # the module-level functions use this one
        _random.Random.seed(inst)
        inst.gauss_next = None
# Pooled processes that failed to pre-confine in a row before the pool is given up (the
# host cannot do it; every spawn then takes the cold path, which says why it fails).
POOL_MAX_FAILURES: Final = 3


@dataclass
class _Pooled:
    """A pooled process: its pidfd, report and log pipes (handed to the supervisor on
    assignment) and the write end of its assignment pipe."""

    host_pid: int
    pidfd: int
    report_r: int
    log_r: int
    assign_w: int
    ready: bool = False  # it said POOL_READY: pre-confined, blocked on its pipe
    cgroup: str | None = None  # the top-level cgroup it made for itself, if any

    def close(self) -> None:
        for fd in (self.pidfd, self.report_r, self.log_r, self.assign_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: dict[int, int | None] = {}  # host pid -> libOS pid (None: pooled)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own pid namespace, to return to after making one for a child (root only).
        self.own_pid_ns: int | None = None
        if os.geteuid() == 0:
            with contextlib.suppress(OSError):
                self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.pool_base: dict[str, Any] | None = None
        self.pool_key: str | None = None
        self.pool_size = 0
        self.pool: dict[int, _Pooled] = {}  # host pid -> pooled, oldest first
        self.pool_failures = 0
        self.pool_serial = 0  # names pooled processes' cgroups: p<zygote pid>-<serial>
        # Pooled processes' cgroups, by host pid, until assigned: when such a process
        # ends unassigned, the supervisor is told ("pool-gone") and removes the cgroup.
        self.pool_cgroups: dict[int, str] = {}
        # Messages for the supervisor that did not fit in the socket yet (see send).
        self.outbox: collections.deque[tuple[bytes, list[int]]] = collections.deque()

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        """Tell the supervisor; never block. The supervisor's own send to us blocks while
        we are busy, and a burst of spawns in one of its turns fills both directions:
        if we blocked too, each would wait for the other for ever. What does not fit
        waits in ``outbox`` (with its own copies of the fds; the caller closes its own),
        in order, and goes out as the socket drains (``flush``, from the loop)."""
        data = json.dumps(msg).encode()
        if not self.outbox and self._try_send(data, fds or []):
            return
        self.outbox.append((data, [os.dup(fd) for fd in fds or []]))

    def _try_send(self, data: bytes, fds: list[int]) -> bool:
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError:
            # The supervisor is gone; PDEATHSIG will end us. Nothing to report to.
            pass
        return True

    def flush(self) -> None:
        while self.outbox:
            data, fds = self.outbox[0]
            if not self._try_send(data, fds):
                return
            self.outbox.popleft()
            for fd in fds:
                os.close(fd)

    def _enter_child_pid_ns(self, spec: dict[str, Any]) -> bool:
        """Make the next fork's child pid 1 of a new pid namespace, if the profile wants
        one and this zygote may (root): it saves the child a second fork and a relay."""
        namespaces = (spec.get("profile") or {}).get("namespaces") or []
        if self.own_pid_ns is None or "pid" not in namespaces or "user" in namespaces:
            return False
        try:
            libc.check(libc.unshare(ctypes.c_int(CLONE_NEWPID)), "unshare(CLONE_NEWPID)")
        except OSError:
            return False  # the child enters one itself, the slower way
        spec["pid_ns_ready"] = True
        return True

    def _leave_child_pid_ns(self) -> None:
        assert self.own_pid_ns is not None
        try:
            libc.check(libc.setns(ctypes.c_int(self.own_pid_ns), ctypes.c_int(CLONE_NEWPID)),
                       "setns(own pid namespace)")
        except OSError:
            # Every later fork would land in a dead namespace: better to die and be
            # replaced by the supervisor than to fail every spawn from now on.
            os._exit(3)

    def spawn(self, msg: dict[str, Any]) -> None:
        """Fork an AgentProcess (op "spawn") or a sandboxed program such as a JIT tool's
        Deno (op "exec", which also gets a pipe for its stdin and one for its stdout)."""
        pid = int(msg["pid"])
        is_exec = msg.get("op") == "exec"
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        stdio: tuple[int, int, int, int] | None = None
        # A shell command (spec "command") also gets a pipe for its stderr.
        err: tuple[int, int] | None = None
        if is_exec:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            stdio = (in_r, in_w, out_r, out_w)
            if msg["spec"].get("command"):
                err = os.pipe2(os.O_CLOEXEC)
        else:
            # The agent's stdout and stderr: a pipe the supervisor reads and writes to
            # the log, up to the per-process cap (an agent never writes the log itself).
            log_r, log_w = os.pipe2(os.O_CLOEXEC)
        new_ns = self._enter_child_pid_ns(msg["spec"])
        try:
            host_pid = _fork()
        except OSError as e:
            if new_ns:
                self._leave_child_pid_ns()
            for fd in (report_r, report_w, *(stdio or (log_r, log_w)), *(err or ())):
                os.close(fd)
            self.send({"op": "spawn-failed", "pid": pid, "error": f"fork: {e}"})
            return
        if host_pid == 0:  # the child: never returns
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (report_r, self.wake_r, self.wake_w, self.sock.fileno(),
                       self.own_pid_ns if self.own_pid_ns is not None else -1,
                       *((stdio[1], stdio[2]) if stdio else (log_r,)),
                       *((err[0],) if err else ())):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if stdio is not None and err is not None:
                run_command(msg["spec"], report_w, stdio[0], stdio[3], err[1])
            if stdio is not None:
                run_exec(msg["spec"], report_w, stdio[0], stdio[3])
            run_child(msg["spec"], report_w, log_w, zygote_pid=os.getppid())
        if new_ns:
            self._leave_child_pid_ns()
        os.close(report_w)
        extra: list[int] = []
        if stdio is not None:
            os.close(stdio[0])
            os.close(stdio[3])
            # The supervisor writes the child's stdin and reads its stdout (and stderr).
            extra = [stdio[1], stdio[2]]
            if err is not None:
                os.close(err[1])
                extra.append(err[0])
        else:
            os.close(log_w)
            extra = [log_r]
        self.children[host_pid] = pid
        try:
            pidfd = os.pidfd_open(host_pid)
        except OSError as e:
            os.kill(host_pid, signal.SIGKILL)
            for fd in (report_r, *extra):
                os.close(fd)
            self.send({"op": "spawn-failed", "pid": pid, "error": f"pidfd_open: {e}"})
            return
        self.send({"op": "spawned", "pid": pid, "host_pid": host_pid},
                  [pidfd, report_r, *extra])
        for fd in (pidfd, report_r, *extra):
            os.close(fd)

    # ------------------------------------------------------------------ the warm pool

    def set_pool(self, msg: dict[str, Any]) -> None:
        """A new pool template (or size 0: none). Pooled processes built for an older one
        are retired: their pipe is closed unwritten, and they exit."""
        for entry in list(self.pool.values()):
            os.close(entry.assign_w)
            entry.assign_w = -1
        self.pool_base = msg.get("base") if self.own_pid_ns is not None else None
        self.pool_key = str(msg.get("key"))
        self.pool_size = max(0, int(msg.get("size", 0)))
        self.pool_failures = 0

    def pool_short(self) -> bool:
        live = sum(1 for e in self.pool.values() if e.assign_w >= 0)
        return self.pool_base is not None and live < self.pool_size

    def fork_pooled(self) -> None:
        """Fork one pooled process (after the loop has answered everything waiting)."""
        assert self.pool_base is not None and self.own_pid_ns is not None
        cgroup: str | None = None
        if self.pool_base.get("cgroup") is not None:
            self.pool_serial += 1
            cgroup = f"p{os.getpid()}-{self.pool_serial}"
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        assign_r, assign_w = os.pipe2(os.O_CLOEXEC)
        mine = (report_r, report_w, log_r, log_w, assign_r, assign_w)
        try:
            # pid 1 of a fresh pid namespace, as _enter_child_pid_ns does for a spawn.
            libc.check(libc.unshare(ctypes.c_int(CLONE_NEWPID)), "unshare(CLONE_NEWPID)")
        except OSError as e:
            for fd in mine:
                os.close(fd)
            self._pool_failed(f"unshare(CLONE_NEWPID): {e}")
            return
        try:
            host_pid = _fork()
        except OSError as e:
            self._leave_child_pid_ns()
            for fd in mine:
                os.close(fd)
            self._pool_failed(f"fork: {e}")
            return
        if host_pid == 0:  # the pooled process: never returns
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # run_pooled closes every other inherited fd (other pooled processes' pipes).
            run_pooled(self.pool_base, report_w, log_w, assign_r, zygote_pid=os.getppid(),
                       cgroup_name=cgroup)
        self._leave_child_pid_ns()
        for fd in (report_w, log_w, assign_r):
            os.close(fd)
        try:
            pidfd = os.pidfd_open(host_pid)
        except OSError as e:
            os.kill(host_pid, signal.SIGKILL)
            for fd in (report_r, log_r, assign_w):
                os.close(fd)
            self.children[host_pid] = None
            self._pool_failed(f"pidfd_open: {e}")
            return
        self.children[host_pid] = None  # no libOS pid until it is assigned one
        self.pool[host_pid] = _Pooled(host_pid, pidfd, report_r, log_r, assign_w,
                                      cgroup=cgroup)
        if cgroup is not None:
            self.pool_cgroups[host_pid] = cgroup

    def _pool_failed(self, why: str) -> None:
        self.pool_failures += 1
        print(f"zygote: a pooled process failed: {why}", file=sys.stderr, flush=True)
        if self.pool_failures >= POOL_MAX_FAILURES:
            print("zygote: giving up the warm pool; spawns take the cold path",
                  file=sys.stderr, flush=True)
            self.pool_base = None

    def on_pool_report(self, entry: _Pooled) -> None:
        """A pooled process said it is ready, or why it could not be pooled."""
        try:
            data = os.read(entry.report_r, 4096)
        except BlockingIOError:
            return
        if data == POOL_READY:
            entry.ready = True
            self.pool_failures = 0
            if entry.cgroup is not None:
                # The supervisor names the pooled process a spawn goes to by its cgroup
                # (it writes the agent's limits there first): it must know the ready ones.
                self.send({"op": "pool-ready", "cgroup": entry.cgroup})
            return
        del self.pool[entry.host_pid]
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.host_pid, signal.SIGKILL)
        entry.close()
        self._pool_failed(data.decode(errors="replace") or "it exited")

    def assign(self, msg: dict[str, Any]) -> bool:
        """Hand the spawn to a ready pooled process; False if none can take it."""
        if msg["spec"].get("pool") != self.pool_key or self.pool_base is None:
            return False
        if self.pool_base.get("cgroup") is not None:
            # Only the one the supervisor named: it may have written this agent's limits
            # into that process's cgroup, and no other agent may ever run there. Gone
            # or not ready: the cold path, which joins the named (empty) cgroup.
            name = msg["spec"].get("pool_cgroup")
            entry = next((e for e in self.pool.values()
                          if name and e.cgroup == name and e.ready and e.assign_w >= 0), None)
        else:
            entry = next((e for e in self.pool.values() if e.ready and e.assign_w >= 0), None)
        if entry is None:
            return False
        del self.pool[entry.host_pid]
        self.pool_cgroups.pop(entry.host_pid, None)  # the supervisor's now
        self._move_into_cgroups(entry, msg["spec"])
        pid = int(msg["pid"])
        try:
            data = json.dumps(msg["spec"]).encode()
            view = memoryview(data)
            while view:  # blocking: the process reads until EOF
                view = view[os.write(entry.assign_w, view):]
        except OSError:  # it died under us: the zygote reaps it; take the cold path
            entry.close()
            return False
        os.close(entry.assign_w)
        self.children[entry.host_pid] = pid
        self.send({"op": "spawned", "pid": pid, "host_pid": entry.host_pid, "pooled": True},
                  [entry.pidfd, entry.report_r, entry.log_r])
        for fd in (entry.pidfd, entry.report_r, entry.log_r):
            os.close(fd)
        return True

    @staticmethod
    def _move_into_cgroups(entry: _Pooled, spec: dict[str, Any]) -> None:
        """Move a pooled process into its agent's cgroups now, while it is blocked in
        read(2), unless it is in them already (a top-level agent's, when it made them).

        A running task moved between cpu cgroups is rescheduled: on a busy host it
        waits its turn again (~4 ms of a nested pooled spawn, measured), a sleeping one
        does not. Best effort: the child verifies from inside and joins what is missing.
        Its pid cannot have been reused: it is the zygote's unreaped child."""
        procs = (spec.get("profile") or {}).get("cgroup_procs") or []
        own = f"/{entry.cgroup}/self/cgroup.procs" if entry.cgroup else None
        if not procs or (own is not None and all(str(p).endswith(own) for p in procs)):
            return
        pid = str(entry.host_pid).encode()
        for path in procs:
            try:
                fd = os.open(str(path), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            except OSError:
                return

    def reap(self) -> None:
        while True:
            # Look before reaping (WNOWAIT): while the child is an unreaped zombie its pid
            # cannot be reused, so killing its process group now cannot hit a stranger.
            # That ends whatever the agent forked and left behind.
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(info.si_pid, signal.SIGKILL)
            host_pid, status = os.waitpid(info.si_pid, 0)
            pid = self.children.pop(host_pid, None)
            entry = self.pool.pop(host_pid, None)
            unused = self.pool_cgroups.pop(host_pid, None)
            if unused is not None:
                self.send({"op": "pool-gone", "cgroup": unused})
            if entry is not None:  # never assigned: retired, or it failed to pre-confine
                if not entry.ready and entry.assign_w >= 0:
                    self._pool_failed(f"it exited with status {status} before it was ready")
                entry.close()
                continue
            if pid is None:
                continue
            self.send({"op": "exited", "pid": pid, "host_pid": host_pid, "status": status})

    def shutdown(self) -> None:
        for entry in self.pool.values():
            entry.close()
        self.pool.clear()
        for host_pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(host_pid, signal.SIGKILL)
        while self.children:
            try:
                host_pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            pid = self.children.pop(host_pid, None)
            self.send({"op": "exited", "pid": pid, "host_pid": host_pid, "status": status})

    def loop(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        # Python does not restart select() on EINTR with a handler that returns, but
        # PEP 475 retries it; the wakeup fd is what makes the loop notice SIGCHLD.
        self.reap()
        self.sock.setblocking(False)  # sends queue instead of blocking (see send)
        while True:
            self.flush()
            waiting = {e.report_r: e for e in self.pool.values() if not e.ready}
            # A short pool is refilled only once nothing is waiting (timeout 0): a spawn
            # never waits behind a refill it did not need.
            short = self.pool_short()
            ready, writable, _ = select.select(
                [self.sock.fileno(), self.wake_r, *waiting],
                [self.sock.fileno()] if self.outbox else [], [], 0 if short else None)
            if writable:
                self.flush()
            if not ready:
                if writable:
                    continue
                self.fork_pooled()
                continue
            for fd in ready:
                if fd in waiting:
                    self.on_pool_report(waiting[fd])
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 4096):
                        pass
                self.reap()
            if self.sock.fileno() in ready:
                try:
                    data = self.sock.recv(MAX_PACKET)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        continue
                    data = b""
                if not data:
                    self.shutdown()
                    return
                msg = json.loads(data)
                op = msg.get("op")
                if op == "spawn" and self.assign(msg):
                    pass
                elif op in ("spawn", "exec"):
                    self.spawn(msg)
                elif op == "pool":
                    self.set_pool(msg)
                elif op == "exit":
                    self.shutdown()
                    return
            if self.pool_short():
                # Under a steady stream of spawns the loop is never idle: one refill per
                # turn, after this turn's answers went out.
                self.fork_pooled()


def main() -> None:
    fd, supervisor_pid = int(sys.argv[1]), int(sys.argv[2])
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != supervisor_pid:  # the supervisor died before prctl took effect
        os._exit(1)
    # Agents are forked from here; they must not inherit the supervisor's signal setup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock = socket.socket(fileno=fd)
    setproctitle.setproctitle("agentlibos: zygote")
    zygote = Zygote(sock)
    agent_environ()
    # Freeze what the preload allocated: the children then do not touch (and copy) those
    # pages when their garbage collector runs.
    gc.collect()
    gc.freeze()
    zygote.send({"op": "ready", "pid": os.getpid()})
    zygote.loop()


if __name__ == "__main__":
    main()
