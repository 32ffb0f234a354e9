"""The pool's forker: a quiet process, forked once by the zygote, that forks every pooled
process (docs/sandbox.md, "The warm pool"; docs/benchmarks.md, issue 14's sixth pass).

Why a second process: a fork shares its parent's pages copy-on-write, and every page the
parent writes after the fork becomes the child's alone, counted in its USS for as long as
it lives. The zygote works between two forks (spawns, reports, JSON, its loop), and each
pooled process it forked kept its own copy of that whole working set: ~0.5 MiB of an idle
agent's 3.4 MiB, measured. The forker does nothing but fork on request and relay exits,
so what its children are left holding is a few pages.

Before its first fork (and after each new template) it also fills the free blocks of the
allocator's partly used pools (``fill_pools``): what a pooled process then allocates lands
in fresh pages, packed, instead of in free slots scattered over hundreds of pages it
shares with the zygote, each of which one small object copies whole.

Protocol on the SOCK_SEQPACKET socket (one JSON object per packet):

  zygote -> forker  {"op": "pool", "base": {...}}      the template run_pooled gets
                    {"op": "fork", "cgroup": name|null, "gen"}  fork one pooled process
                    {"op": "reap", "host_pid"}          the zygote has forgotten it
                    {"op": "exit"}                      kill and reap every child, end
  forker -> zygote  {"op": "forked", "host_pid", "cgroup", "gen"}
                        + [pidfd, report_r, log_r, assign_w (a stream socket)]
                    {"op": "fork-failed", "error", "cgroup", "gen"}
                    {"op": "exiting", "host_pid"}        dead, not reaped: answer "reap"
                    {"op": "exited", "host_pid", "status"}  reaped (status: waitpid's)

A child is reaped only once the zygote has answered "reap": until then its pid cannot be
reused, so the zygote's last uses of it (moving it into its agent's cgroups, on
assignment) can never reach another process. Pooled processes are this process's
children: they die with it (PDEATHSIG), and it dies with the zygote.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import sys
from typing import Any, Final, NoReturn

import setproctitle

from agentlibos import libc
from agentlibos.sandbox.namespaces import CLONE_NEWPID
from agentlibos.sandbox.pdeathsig import set_pdeathsig
from agentlibos.zygote.channel import Channel, send_packet
from agentlibos.zygote.child import _close_inherited, run_pooled
from agentlibos.zygote.fork import fork

MAX_PACKET: Final = 1 << 20
FORKER_TITLE: Final = "agentlibos: pool forker"
# The forker and the pooled processes it forks run at this niceness until a process is
# assigned (the zygote sets it back to 0 first): a refill competes with the spawn that
# emptied its slot on a small host, and the scheduler should favour the spawn.
POOL_NICE: Final = 19

# What fill_pools keeps alive: the objects that plug the pools' free blocks.
_PLUGS: list[object] = []
# A size-class line of sys._debugmallocstats(): class, size, pools, in use, available.
_CLASS_LINE: Final = re.compile(rb"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.M)


def _free_blocks() -> dict[int, int]:
    """Free blocks in the allocator's used pools, by size class (empty if this Python's
    allocator does not say: another build, or no pymalloc). The stats go to C's stderr,
    so fd 2 is pointed at a pipe for the call."""
    r, w = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(saved)
        os.close(r)
    return {int(m[1]): int(m[2]) for m in _CLASS_LINE.finditer(b"".join(chunks))}


def _plug(size: int) -> object:
    """One object that takes exactly one block of ``size`` bytes."""
    if size <= 16:
        return object()  # a bare object is 16 bytes
    if size <= 32:
        return 1 << 40 | len(_PLUGS)  # a two-digit int: 32 bytes, not a cached small int
    return bytes(size - 33)  # a bytes object is 33 bytes plus its length


def fill_pools(rounds: int = 3) -> int:
    """Plug every free block of the partly used pools; returns how many were plugged.
    A few rounds: reading the stats allocates a little itself."""
    plugged = 0
    for _ in range(rounds):
        free = _free_blocks()
        for size, n in free.items():
            _PLUGS.extend(_plug(size) for _ in range(n))
            plugged += n
        if not any(free.values()):
            break
    return plugged


class Forker:
    """The forker as the zygote sees it: its pid, its socket, and the zygote's queue of
    what it sends there (the zygote never blocks on the forker: Channel)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.ch = Channel(sock)

    @classmethod
    def start(cls, own_pid_ns: int) -> Forker:
        """Fork the forker. It keeps only its socket, the zygote's pid namespace (to
        return to after making one for a child) and stdio."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                set_pdeathsig(signal.SIGKILL)
                os.setpriority(os.PRIO_PROCESS, 0, POOL_NICE)  # its children inherit it
                setproctitle.setproctitle(FORKER_TITLE)
                _close_inherited(theirs.fileno(), own_pid_ns)
                _serve(socket.socket(fileno=theirs.detach()), own_pid_ns)
            finally:
                os._exit(1)
        theirs.close()
        mine.setblocking(False)
        return cls(pid, mine)


class _Serve:
    def __init__(self, sock: socket.socket, own_pid_ns: int) -> None:
        self.sock = sock
        self.own_pid_ns = own_pid_ns
        self.base: dict[str, Any] | None = None
        self.poll = select.epoll()
        self.poll.register(sock.fileno(), select.EPOLLIN)
        self.kids: dict[int, int] = {}  # pidfd -> host pid, while it runs
        self.dead: dict[int, int] = {}  # host pid -> pidfd, exited, not yet reaped

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        # Blocking: the zygote never blocks on us (it queues what it sends), so waiting
        # for it to read cannot deadlock.
        try:
            send_packet(self.sock, json.dumps(msg).encode(), fds)
        except OSError:
            os._exit(0)  # the zygote is gone; so are we

    def fork(self, msg: dict[str, Any]) -> None:
        cgroup = msg.get("cgroup")
        answer = {"gen": msg.get("gen"), "cgroup": cgroup}
        if self.base is None:
            self.send({"op": "fork-failed", "error": "no pool template", **answer})
            return
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        # A socket, not a pipe: the assignment brings its agent's binds as descriptors.
        assign_r, assign_w = (s.detach() for s in socket.socketpair(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
        pipes = (report_r, report_w, log_r, log_w, assign_r, assign_w)
        try:
            # pid 1 of a fresh pid namespace, as the zygote does for a cold spawn.
            libc.check(libc.unshare(ctypes.c_int(CLONE_NEWPID)), "unshare(CLONE_NEWPID)")
            try:
                host_pid = fork()
            except OSError:
                self._leave_pid_ns()
                raise
        except OSError as e:
            for fd in pipes:
                os.close(fd)
            self.send({"op": "fork-failed", "error": str(e), **answer})
            return
        if host_pid == 0:  # the pooled process: never returns
            # Its parent is outside its pid namespace: getppid() is 0 there.
            run_pooled(self.base, report_w, log_w, assign_r, zygote_pid=0,
                       cgroup_name=cgroup)
        self._leave_pid_ns()
        for fd in (report_w, log_w, assign_r):
            os.close(fd)
        try:
            pidfd = os.pidfd_open(host_pid)
        except OSError as e:
            os.kill(host_pid, signal.SIGKILL)  # our unreaped child: its pid is its own
            os.waitpid(host_pid, 0)
            for fd in (report_r, log_r, assign_w):
                os.close(fd)
            self.send({"op": "fork-failed", "error": f"pidfd_open: {e}", **answer})
            return
        self.kids[pidfd] = host_pid
        self.poll.register(pidfd, select.EPOLLIN)
        self.send({"op": "forked", "host_pid": host_pid, **answer},
                  [pidfd, report_r, log_r, assign_w])
        for fd in (report_r, log_r, assign_w):
            os.close(fd)

    def _leave_pid_ns(self) -> None:
        try:
            libc.check(libc.setns(ctypes.c_int(self.own_pid_ns), ctypes.c_int(CLONE_NEWPID)),
                       "setns(own pid namespace)")
        except OSError:
            # Every later fork would land in a dead namespace: better to end (the zygote
            # hears of it and starts another forker) than to fail every fork from now on.
            os._exit(3)

    def exited(self, pidfd: int) -> None:
        """A child ended: tell the zygote, and keep it unreaped until it answers."""
        host_pid = self.kids.pop(pidfd)
        self.poll.unregister(pidfd)
        self.dead[host_pid] = pidfd
        self.send({"op": "exiting", "host_pid": host_pid})

    def reap(self, host_pid: int) -> None:
        pidfd = self.dead.pop(host_pid, None)
        if pidfd is None:
            return
        # Still a zombie, so its process group id cannot be anyone else's: this ends
        # whatever the agent forked and left behind (as the zygote does for its own).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(host_pid, signal.SIGKILL)
        _, status = os.waitpid(host_pid, 0)
        os.close(pidfd)
        self.send({"op": "exited", "host_pid": host_pid, "status": status})

    def exit(self) -> NoReturn:
        for pidfd, host_pid in list(self.kids.items()):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            self.dead[host_pid] = pidfd
        self.kids.clear()
        for host_pid in list(self.dead):
            self.reap(host_pid)
        os._exit(0)

    def serve(self) -> NoReturn:
        while True:
            for fd, _ in self.poll.poll():
                if fd != self.sock.fileno():
                    self.exited(fd)
                    continue
                try:
                    data = self.sock.recv(MAX_PACKET)
                except InterruptedError:
                    continue
                if not data:
                    os._exit(0)  # the zygote is gone: PDEATHSIG ends our children
                msg = json.loads(data)
                op = msg.get("op")
                if op == "fork":
                    self.fork(msg)
                elif op == "reap":
                    self.reap(int(msg["host_pid"]))
                elif op == "pool":
                    self.base = msg.get("base")
                    fill_pools()
                elif op == "exit":
                    self.exit()


def _serve(sock: socket.socket, own_pid_ns: int) -> NoReturn:
    server = _Serve(sock, own_pid_ns)
    fill_pools()
    server.serve()
