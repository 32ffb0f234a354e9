"""The default shell provider: each command in a sandbox of its own, served by the loop.

A command is a sandboxed helper process (``workers.py``) forked by the zygote with the
"shell" profile (``sandbox/profile.build_shell_profile``): every layer on, exec allowed,
a cgroup inside the caller's, and a file system of exactly the request's
``read_only``/``read_write`` paths -- nothing else of the user's files. It runs as the
request's ``run_as`` (the owner of the caller's cwd). Its stdin, stdout and stderr are
pipes the supervisor's loop serves without ever blocking. At its deadline the whole
cgroup (and its pid namespace) is killed.

What the command may see was decided before it reaches here (``supervisor/shell.py``);
this module only runs it (``providers/shell.ShellProvider``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from agentlibos.config import Paths
from agentlibos.errors import LibOSError, Unavailable
from agentlibos.providers.fstree import discard_tree
from agentlibos.providers.shell import MAX_OUTPUT, ShellDone, ShellRequest, ShellResult
from agentlibos.sandbox.profile import SHELL_TMP
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.workers import Workers
from agentlibos.zygote.child import parse_report

_CHUNK: Final = 1 << 16


@dataclass
class _Stream:
    fd: int | None = None
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


@dataclass
class Run:
    wid: int
    req: ShellRequest
    scratch: Path
    done: ShellDone
    stdin: bytes = b""
    cgroup: Any = None
    host_pid: int | None = None
    pidfd: int | None = None
    report: int | None = None
    stdin_fd: int | None = None
    out: _Stream = field(default_factory=_Stream)
    err: _Stream = field(default_factory=_Stream)
    timer: Timer | None = None
    timed_out: bool = False
    killed: bool = False
    error: LibOSError | None = None
    layers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reported: bytearray = field(default_factory=bytearray)
    status: int | None = None  # the command's own wait status, from its init


# What the report pipe may carry: the start report and the command's status, two short
# lines. More is garbage (it is our init's, but checked all the same).
_MAX_REPORT: Final = 1 << 16


class SandboxShell:
    """``ShellProvider``: the sandboxed runner ``shell = "sandbox"`` names."""

    def __init__(self, paths: Paths, loop: Loop, sandbox: SandboxManager,
                 workers: Workers) -> None:
        self._paths = paths
        self._loop = loop
        self._sandbox = sandbox
        self._workers = workers
        self.runs: dict[int, Run] = {}
        self._fds: dict[int, Run] = {}

    def start(self, request: ShellRequest, done: ShellDone) -> None:
        wid = self._workers.new_id()
        scratch = self._paths.scratch / f"s{-wid}"
        scratch.mkdir(mode=0o700)
        run = Run(wid, request, scratch, done, request.stdin)
        argv = list(request.argv)
        try:
            _mount_points(scratch, (*request.read_only, *request.read_write))
            prep = self._sandbox.prepare_shell(
                wid, read_only=request.read_only, read_write=request.read_write,
                scratch=scratch, run_as=request.run_as, owner_pid=request.pid)
            self.runs[wid] = run
            run.cgroup = self._workers.start(wid, self, prep, {
                "command": True, "exe": request.exe, "argv": argv, "cwd": request.cwd,
                "scratch": str(scratch), "env": dict(request.env),
                "title": f"agentlibos: {request.pid} shell {argv[0]}",
            })
        except (LibOSError, OSError) as e:
            self.runs.pop(wid, None)
            discard_tree(scratch)
            if isinstance(e, LibOSError):
                raise
            raise Unavailable(f"shell.exec: cannot prepare the command's sandbox: {e}") from None
        run.timer = self._loop.call_later(request.timeout_s, lambda: self._timeout(run))

    # ------------------------------------------------------------ worker events

    def on_spawned(self, wid: int, host_pid: int, fds: list[int]) -> None:
        run = self.runs.get(wid)
        if run is None or len(fds) != 5:
            for fd in fds:
                os.close(fd)
            return
        run.host_pid = host_pid
        run.pidfd, run.report, run.stdin_fd, run.out.fd, run.err.fd = fds
        for fd in fds[1:]:
            os.set_blocking(fd, False)
        for fd in (run.report, run.out.fd, run.err.fd):
            self._fds[fd] = run
            self._loop.add_reader(fd, self._reader(fd))
        if run.killed:
            self._kill(run)
        self._feed(run)

    def on_exited(self, wid: int, status: int) -> None:
        run = self.runs.pop(wid, None)
        if run is None:
            return
        # Its pid namespace ended with it, so nothing else holds the pipes' write ends:
        # what is left in them is all there is.
        if run.report is not None:
            self._on_report(run)
        for s in (run.out, run.err):
            self._read(run, s)
        self._finish(run, status)

    def spawn_failed(self, wid: int, error: str) -> None:
        run = self.runs.pop(wid, None)
        if run is not None:
            run.error = Unavailable(f"shell.exec: the command could not start: {error}")
            self._finish(run, None)

    # ---------------------------------------------------------------- the pipes

    def _reader(self, fd: int) -> Any:
        return lambda events: self._ready(fd, events)

    def _ready(self, fd: int, events: int) -> None:
        run = self._fds.get(fd)
        if run is None:
            return
        if fd == run.report:
            self._on_report(run)
        elif fd == run.stdin_fd:
            self._feed(run)
        else:
            self._read(run, run.out if fd == run.out.fd else run.err)

    def _on_report(self, run: Run) -> None:
        """The report pipe: a line when the command's sandbox is up (or why it is not),
        then, from its init, a line with the command's own wait status; then EOF."""
        assert run.report is not None
        while True:
            try:
                data = os.read(run.report, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data or len(run.reported) + len(data) > _MAX_REPORT:
                break
            run.reported += data
        self._close(run.report)
        run.report = None
        lines = bytes(run.reported).split(b"\n")
        if not lines[0]:
            return
        report = parse_report(lines[0])
        run.layers = list(report.get("layers") or [])
        run.missing = list(report.get("missing") or [])
        if not report.get("ok"):
            run.error = Unavailable(f"shell.exec: the command could not be sandboxed: "
                                    f"{report.get('error')}")
        status = parse_report(lines[1]).get("status") if len(lines) > 1 and lines[1] else None
        if isinstance(status, int) and not isinstance(status, bool):
            run.status = status

    def _read(self, run: Run, s: _Stream) -> None:
        while s.fd is not None:
            try:
                chunk = os.read(s.fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._close(s.fd)
                s.fd = None
                return
            s.total += len(chunk)
            s.digest.update(chunk)
            room = MAX_OUTPUT - len(s.data)  # the rest is read, counted and dropped
            if room > 0:
                s.data += chunk[:room]

    def _feed(self, run: Run) -> None:
        """Write what is left of its stdin without blocking; close it when done."""
        fd = run.stdin_fd
        if fd is None:
            return
        while run.stdin:
            try:
                n = os.write(fd, run.stdin[:_CHUNK])
            except BlockingIOError:
                break
            except OSError:  # it closed its stdin: the rest is not wanted
                run.stdin = b""
                break
            run.stdin = run.stdin[n:]
        if run.stdin and fd not in self._fds:
            self._fds[fd] = run
            self._loop.add_reader(fd, self._reader(fd), zmq.POLLOUT)
        elif not run.stdin:
            self._close(fd)
            run.stdin_fd = None

    def _close(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    # ------------------------------------------------------------------ ending

    def _timeout(self, run: Run) -> None:
        if run.wid in self.runs:
            run.timed_out = True
            self._kill(run)

    def _kill(self, run: Run) -> None:
        """Kill the command and everything it started: its cgroup (every process in it,
        daemonized or not), and its pid 1 (which takes its pid namespace along)."""
        run.killed = True
        if run.cgroup is not None:
            with contextlib.suppress(LibOSError, OSError):
                run.cgroup.kill()
        if run.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)

    def _finish(self, run: Run, status: int | None) -> None:
        if run.timer is not None:
            run.timer.cancel()
        self._kill(run)  # whatever is left: nothing it started outlives the call
        for fd in (run.report, run.stdin_fd, run.out.fd, run.err.fd, run.pidfd):
            if fd is not None:
                self._close(fd)
        oom, pids_hit, _ = self._sandbox.verdict(run.cgroup)  # before it is removed
        self._workers.forget(run.wid)
        self._workers.release(run.wid, run.cgroup)
        discard_tree(run.scratch)
        code: int | None = None
        if run.status is not None:
            status = run.status  # the command's, not its init's (which exits 0)
        if status is not None:
            code = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                    else -os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
        run.done(ShellResult(
            code, bytes(run.out.data), bytes(run.err.data), run.timed_out,
            run.out.total, run.err.total, run.out.digest.hexdigest(),
            run.err.digest.hexdigest(), run.error,
            {"layers": run.layers, "missing": run.missing, "memory_killed": oom,
             "pids_limit_hit": pids_hit}))

    def end_process(self, pid: int) -> None:
        """The calling process ended: so do its commands."""
        for run in [r for r in self.runs.values() if r.req.pid == pid]:
            self._kill(run)


def _mount_points(scratch: Path, paths: Sequence[str]) -> None:
    """Paths under /tmp are bound inside the command's private /tmp (its scratch), after
    it: their mount points must exist there."""
    for p in paths:
        if not p.startswith(SHELL_TMP + "/"):
            continue
        target = scratch / p[len(SHELL_TMP) + 1:]
        if os.path.isdir(p):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        for d in (target, *target.parents):
            if d == scratch:
                break
            os.chmod(d, 0o755)  # noqa: S103 - an empty mount point, seen only by the command
