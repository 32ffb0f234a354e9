"""The zygote: a preloaded, single-threaded process that forks every AgentProcess.

Started once per supervisor as a fresh interpreter (``python -m
agentlibos.zygote.zygote FD SUPERVISOR_PID``), so it never inherits the supervisor's
ZeroMQ I/O threads or SQLite handles: forking a process that has other threads copies
locks held by threads that do not exist in the child. It imports everything an agent's
runtime needs *before* forking (the child pays no import cost) and never creates a
ZeroMQ context; each child creates its own after its sandbox is in place.

Protocol on the SOCK_SEQPACKET socket ``FD`` (one JSON object per packet, except a
spawn's: a head, a NUL and the spec's JSON, which the zygote passes on undecoded --
channel.encode_spawn):

  supervisor -> zygote  {"op": "spawn" | "exec", "pid", "route": {...}} NUL {spec} (+ its
                        agent's binds, as SCM_RIGHTS, when a pooled process may take
                        it) | {"op": "exit"} |
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
asking for a replacement after it has answered what was waiting, never before. Its pool
forker (forker.py, a quiet child of its own) forks them, so that they do not each keep a
copy of the zygote's working set; the zygote holds their pipes and pidfds as before. A spawn
whose spec carries the pool's ``key`` is handed to a ready pooled process, if there is
one, by sending the spec and the binds down that process's own assignment socket and
closing it; the supervisor sees the same "spawned" event either way (with "pooled":
true). Each pooled process serves one assignment and exits: none ever runs a second
agent.

When the template carries a cgroup recipe, each pooled process also makes and joins a
top-level cgroup of its own (``p<zygote pid>-<n>``) before it is ready; the zygote says
"pool-ready" with that name, and hands a spawn only to the pooled process its spec
names ("pool_cgroup": the supervisor wrote a top-level agent's limits into that cgroup
first), never to another. One that ends unassigned is reported "pool-gone" (the
supervisor removes its cgroup).
"""

from __future__ import annotations

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
from agentlibos.zygote.channel import Channel, decode_head
from agentlibos.zygote.child import (
    MAX_ASSIGN_FDS,
    POOL_READY,
    agent_environ,
    decode_spec,
    run_child,
    run_command,
    run_exec,
)
from agentlibos.zygote.fork import fork as _fork
from agentlibos.zygote.forker import Forker

MAX_PACKET: Final = 1 << 20
PR_SET_CHILD_SUBREAPER: Final = 36

# Pooled processes that failed to pre-confine in a row before the pool is given up (the
# host cannot do it; every spawn then takes the cold path, which says why it fails).
POOL_MAX_FAILURES: Final = 3


@dataclass
class _Pooled:
    """A pooled process: its pidfd, report and log pipes (handed to the supervisor on
    assignment) and our end of its assignment socket."""

    host_pid: int
    pidfd: int
    report_r: int
    log_r: int
    assign_w: int
    ready: bool = False  # it said POOL_READY: pre-confined, blocked on its socket
    cgroup: str | None = None  # the top-level cgroup it made for itself, if any

    def retire(self) -> None:
        """Close its assignment socket unwritten: it exits, and nobody is handed to it."""
        if self.assign_w >= 0:
            os.close(self.assign_w)
            self.assign_w = -1

    def close(self) -> None:
        for fd in (self.pidfd, self.report_r, self.log_r, self.assign_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sup = Channel(sock)
        self.children: dict[int, int] = {}  # host pid -> libOS pid (cold spawns)
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
        # The pool's forker (forker.py), started with the first pool template, and the
        # pooled processes it forked: host pid -> libOS pid (None until assigned).
        self.forker: Forker | None = None
        self.forked: dict[int, int | None] = {}
        self.pool_asked = 0  # forks asked of the forker and not answered yet
        self.pool_gen = 0  # bumped by each template: "forked" under an older one retires
        self.dying: dict[int, _Pooled | None] = {}  # said "exiting", not yet reaped

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        """Tell the supervisor; never block (Channel.send)."""
        self.sup.send(msg, fds)

    @property
    def outbox(self) -> collections.deque[tuple[bytes, list[int]]]:
        return self.sup.outbox

    def flush(self) -> None:
        self.sup.flush()
        if self.forker is not None:
            self.forker.ch.flush()

    def _enter_child_pid_ns(self, route: dict[str, Any]) -> bool:
        """Make the next fork's child pid 1 of a new pid namespace, if the profile wants
        one and this zygote may (root): it saves the child a second fork and a relay."""
        namespaces = route.get("namespaces") or []
        if self.own_pid_ns is None or "pid" not in namespaces or "user" in namespaces:
            return False
        try:
            libc.check(libc.unshare(ctypes.c_int(CLONE_NEWPID)), "unshare(CLONE_NEWPID)")
        except OSError:
            return False  # the child enters one itself, the slower way
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

    def spawn(self, msg: dict[str, Any], spec: bytes) -> None:
        """Fork an AgentProcess (op "spawn") or a sandboxed program such as a JIT tool's
        Deno (op "exec", which also gets a pipe for its stdin and one for its stdout).
        ``spec``: its JSON, which the child decodes (channel.encode_spawn)."""
        pid = int(msg["pid"])
        route = msg["route"]
        is_exec = msg.get("op") == "exec"
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        stdio: tuple[int, int, int, int] | None = None
        # A shell command (spec "command") also gets a pipe for its stderr.
        err: tuple[int, int] | None = None
        if is_exec:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            stdio = (in_r, in_w, out_r, out_w)
            if route.get("command"):
                err = os.pipe2(os.O_CLOEXEC)
        else:
            # The agent's stdout and stderr: a pipe the supervisor reads and writes to
            # the log, up to the per-process cap (an agent never writes the log itself).
            log_r, log_w = os.pipe2(os.O_CLOEXEC)
        new_ns = self._enter_child_pid_ns(route)
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
            child_spec = decode_spec(spec, report_w, pid_ns_ready=new_ns)
            if stdio is not None and err is not None:
                run_command(child_spec, report_w, stdio[0], stdio[3], err[1])
            if stdio is not None:
                run_exec(child_spec, report_w, stdio[0], stdio[3])
            run_child(child_spec, report_w, log_w, zygote_pid=os.getppid())
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
        for entry in self.pool.values():
            entry.retire()
        self.pool_base = msg.get("base") if self.own_pid_ns is not None else None
        self.pool_key = str(msg.get("key"))
        self.pool_size = max(0, int(msg.get("size", 0)))
        self.pool_failures = 0
        self.pool_gen += 1  # a fork asked for under the old template is retired unused
        if self.forker is not None and self.pool_base is not None:
            self.forker.ch.send({"op": "pool", "base": self.pool_base})

    def pool_short(self) -> bool:
        live = sum(1 for e in self.pool.values() if e.assign_w >= 0)
        return self.pool_base is not None and live + self.pool_asked < self.pool_size

    def fork_pooled(self) -> None:
        """Ask the forker for one pooled process (after the loop has answered everything
        waiting); it comes back as "forked" (on_forker)."""
        assert self.pool_base is not None and self.own_pid_ns is not None
        if self.forker is None:
            # Pooled processes' orphans (the forker died) come to us to be reaped.
            libc.check(libc.prctl(ctypes.c_int(PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(1)),
                       "prctl(PR_SET_CHILD_SUBREAPER)")
            self.forker = Forker.start(self.own_pid_ns)
            self.forker.ch.send({"op": "pool", "base": self.pool_base})
        cgroup: str | None = None
        if self.pool_base.get("cgroup") is not None:
            self.pool_serial += 1
            cgroup = f"p{os.getpid()}-{self.pool_serial}"
        self.pool_asked += 1
        self.forker.ch.send({"op": "fork", "cgroup": cgroup, "gen": self.pool_gen})

    def on_forker(self) -> None:
        """What the forker says: a pooled process forked, or one that ended."""
        assert self.forker is not None
        try:
            data, fds, _, _ = socket.recv_fds(self.forker.sock, MAX_PACKET, 4)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return  # it exited: reap() hears of it
        msg = json.loads(data)
        op, host_pid = msg.get("op"), int(msg.get("host_pid") or 0)
        if op == "forked":
            self.pool_asked -= 1
            pidfd, report_r, log_r, assign_w = fds
            entry = _Pooled(host_pid, pidfd, report_r, log_r, assign_w,
                            cgroup=msg.get("cgroup"))
            self.forked[host_pid] = None  # no libOS pid until it is assigned one
            self.pool[host_pid] = entry
            if entry.cgroup is not None:
                self.pool_cgroups[host_pid] = entry.cgroup
            if msg.get("gen") != self.pool_gen or self.pool_base is None:
                entry.retire()  # asked for under an older template
        elif op == "fork-failed":
            self.pool_asked -= 1
            for fd in fds:
                os.close(fd)
            self._pool_failed(str(msg.get("error")))
        elif op == "exiting":
            # Forget its pid before the forker reaps it (no later use can reach another
            # process that got the same pid), then let it.
            self.dying[host_pid] = self.pool.pop(host_pid, None)
            self.forker.ch.send({"op": "reap", "host_pid": host_pid})
        elif op == "exited":
            self._ended(host_pid, int(msg["status"]), self.dying.pop(host_pid, None))

    def _forker_gone(self, status: int) -> None:
        """The forker ended (PDEATHSIG has killed its children: they come to us, its
        subreaper, and reap() reports them). The next refill starts another."""
        assert self.forker is not None
        self.forker.sock.close()
        self.forker = None
        self.pool_asked = 0
        for entry in self.pool.values():  # dying with it: never hand one out
            entry.retire()
        self._pool_failed(f"the pool's forker exited with status {status}")

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
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(entry.pidfd, signal.SIGKILL)
        entry.close()
        self._pool_failed(data.decode(errors="replace") or "it exited")

    def assign(self, msg: dict[str, Any], spec: bytes, fds: list[int]) -> bool:
        """Hand the spawn to a ready pooled process: ``spec`` (its JSON, passed on as
        it came) with ``fds`` (its agent's binds, which the caller closes); False if
        none can take it."""
        route = msg["route"]
        if route.get("pool") != self.pool_key or self.pool_base is None:
            return False
        if self.pool_base.get("cgroup") is not None:
            # Only the one the supervisor named: it may have written this agent's limits
            # into that process's cgroup, and no other agent may ever run there. Gone
            # or not ready: the cold path, which joins the named (empty) cgroup.
            name = route.get("pool_cgroup")
            entry = next((e for e in self.pool.values()
                          if name and e.cgroup == name and e.ready and e.assign_w >= 0), None)
        else:
            entry = next((e for e in self.pool.values() if e.ready and e.assign_w >= 0), None)
        if entry is None:
            return False
        del self.pool[entry.host_pid]
        self.pool_cgroups.pop(entry.host_pid, None)  # the supervisor's now
        self._move_into_cgroups(entry, route)
        with contextlib.suppress(OSError):
            # Back from the pool's niceness (forker.POOL_NICE) before it wakes: it is
            # a spawn now. Its pid is its own until we forget it (as above).
            os.setpriority(os.PRIO_PROCESS, entry.host_pid, 0)
        pid = int(msg["pid"])
        sock = socket.socket(fileno=entry.assign_w)
        entry.assign_w = -1
        try:
            # Blocking: the process reads until EOF. The descriptors ride on the first
            # bytes; the spec's "mount_fds" names what they are.
            sent = socket.send_fds(sock, [spec[:1 << 16]], fds) if fds else 0
            sock.sendall(spec[sent:])
        except OSError:  # it died under us: the zygote reaps it; take the cold path
            sock.close()
            entry.close()
            return False
        sock.close()
        self.forked[entry.host_pid] = pid
        self.send({"op": "spawned", "pid": pid, "host_pid": entry.host_pid, "pooled": True},
                  [entry.pidfd, entry.report_r, entry.log_r])
        for fd in (entry.pidfd, entry.report_r, entry.log_r):
            os.close(fd)
        return True

    @staticmethod
    def _move_into_cgroups(entry: _Pooled, route: dict[str, Any]) -> None:
        """Move a pooled process into its agent's cgroups now, while it is blocked in
        recvmsg(2), unless it is in them already (a top-level agent's, when it made them).

        A running task moved between cpu cgroups is rescheduled: on a busy host it
        waits its turn again (~4 ms of a nested pooled spawn, measured), a sleeping one
        does not. Best effort: the child verifies from inside, and fails to start if it was
        not moved (pivoted already, it cannot name a cgroup to join).
        Its pid cannot have been reused: the forker reaps its children only once we have
        forgotten them (forker.py)."""
        procs = route.get("cgroup_procs") or []
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

    def _ended(self, host_pid: int, status: int, entry: _Pooled | None) -> None:
        """A child is reaped (ours, or one of the forker's): tell the supervisor."""
        pid = self.children.pop(host_pid, None)
        if host_pid in self.forked:
            pid = self.forked.pop(host_pid)
        unused = self.pool_cgroups.pop(host_pid, None)
        if unused is not None:
            self.send({"op": "pool-gone", "cgroup": unused})
        if entry is not None:  # never assigned: retired, or it failed to pre-confine
            if not entry.ready and entry.assign_w >= 0:
                self._pool_failed(f"it exited with status {status} before it was ready")
            entry.close()
            return
        if pid is not None:
            self.send({"op": "exited", "pid": pid, "host_pid": host_pid, "status": status})

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
            if self.forker is not None and host_pid == self.forker.pid:
                self._forker_gone(status)
                continue
            self._ended(host_pid, status,
                        self.pool.pop(host_pid, None) or self.dying.pop(host_pid, None))

    def shutdown(self) -> None:
        for entry in self.pool.values():
            entry.close()
        self.pool.clear()
        if self.forker is not None:
            self._stop_forker(self.forker)
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

    def _stop_forker(self, forker: Forker) -> None:
        """The forker kills and reaps its children, and says how each ended."""
        forker.sock.setblocking(True)
        forker.ch.drop()
        with contextlib.suppress(OSError):
            forker.sock.send(json.dumps({"op": "exit"}).encode())
            while True:
                data, fds, _, _ = socket.recv_fds(forker.sock, MAX_PACKET, 4)
                for fd in fds:
                    os.close(fd)
                if not data:
                    break
                msg = json.loads(data)
                if msg.get("op") == "exited":
                    self._ended(int(msg["host_pid"]), int(msg["status"]), None)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(forker.pid, 0)
        self.forker = None

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
            forker = self.forker.sock.fileno() if self.forker is not None else -1
            outgoing = [self.sock.fileno()] if self.outbox else []
            if self.forker is not None and self.forker.ch.outbox:
                outgoing.append(forker)
            ready, writable, _ = select.select(
                [self.sock.fileno(), self.wake_r, *waiting, *([forker] if forker >= 0 else [])],
                outgoing, [], 0 if short else None)
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
            if forker >= 0 and forker in ready:
                self.on_forker()
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 4096):
                        pass
                self.reap()
            if self.sock.fileno() in ready:
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, MAX_PACKET, MAX_ASSIGN_FDS)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        continue
                    data, fds = b"", []
                if not data:
                    self.shutdown()
                    return
                msg, spec = decode_head(data)
                op = msg.get("op")
                try:
                    if op == "spawn" and self.assign(msg, spec, fds):
                        pass
                    elif op in ("spawn", "exec"):
                        # The cold path binds by path: a pooled spawn's descriptors
                        # (the pool was empty) are not needed.
                        self.spawn(msg, spec)
                    elif op == "pool":
                        self.set_pool(msg)
                    elif op == "exit":
                        self.shutdown()
                        return
                finally:
                    for fd in fds:
                        os.close(fd)
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
