"""``shell.exec``'s service: each command in a sandbox of its own, off the loop.

A command is a sandboxed helper process (``workers.py``) forked by the zygote with the
"shell" profile (``sandbox/profile.build_shell_profile``): every layer on, exec allowed,
a cgroup inside the caller's, and a file system built from the caller's ``fs``
capabilities -- what it may read bound read-only, what it may write read-write, nothing
else of the user's files. It runs as the owner of the caller's cwd. Its stdin, stdout
and stderr are pipes the supervisor's loop serves without ever blocking; the calling
syscall is suspended (wait ``shell:<argv0>``) until the command has ended. At its
deadline the whole cgroup (and its pid namespace) is killed.

Deciding which host paths the command sees is pure (:func:`shell_paths`, tested on its
own); the rest of this module only runs what was decided.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.broker.syscalls.shell import SHELL_PATH
from agentlibos.config import Paths
from agentlibos.errors import LibOSError, NotFound, PermissionDenied, Unavailable
from agentlibos.kernel.caps import CapPattern, escape, parse_cap
from agentlibos.kernel.policy import Policy, Request, authorize
from agentlibos.kernel.text import storable
from agentlibos.providers.fstree import discard_tree
from agentlibos.sandbox.profile import SHELL_TMP
from agentlibos.store import Store
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.waits import Waits
from agentlibos.supervisor.workers import Workers
from agentlibos.zygote.child import parse_report

log = logging.getLogger(__name__)

MAX_OUTPUT: Final = 1 << 20  # per stream; the rest is read, counted and dropped
_CHUNK: Final = 1 << 16
# Never bound into a command's tree, whatever a capability says: the whole host, the
# command's own /proc, /dev and /tmp, and the kernel's files.
_NEVER: Final = ("/", "/proc", "/dev", "/sys", SHELL_TMP)


# ------------------------------------------------------------------ deciding (pure)


def cap_root(resource: str) -> str | None:
    """The host path an absolute path glob lies within: the glob itself when it has no
    wildcard, else the directory holding its first wildcard (``/p/src/**`` ->
    ``/p/src``, ``/p/*.md`` -> ``/p``). None for a relative or anywhere glob. Pure."""
    if not resource.startswith("/"):
        return None
    out: list[str] = []
    i = 0
    while i < len(resource):
        c = resource[i]
        if c == "\\" and i + 1 < len(resource):  # an escaped character is literal
            out.append(resource[i + 1])
            i += 2
            continue
        if c in "*?":
            return os.path.normpath("".join(out).rsplit("/", 1)[0] or "/")
        out.append(c)
        i += 1
    return os.path.normpath("".join(out))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _permitted(policy: Policy, approved: Sequence[CapPattern], right: str, path: str,
               cwd: str) -> bool:
    """Would the operator's policy let the caller ``right`` the whole of ``path`` now?
    An ``ask`` counts only with a standing approval: a mount is not a call to approve."""
    held = [parse_cap(f"fs:{right}:{escape(path)}")]
    d = authorize(held, policy, Request("fs", right, path), cwd)
    if d.verdict == "ask":
        return any(a.allows("fs", right, path) for a in approved)
    return d.verdict == "allow"


def _minimal(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(_inside(p, q) for q in out):
            out.append(p)
    return out


def shell_paths(caps: Sequence[CapPattern], approved: Sequence[CapPattern],
                policy: Policy, cwd: str, hidden: Sequence[str] = ()
                ) -> tuple[list[str], list[str]]:
    """(read-only, read-write) host paths a command of this caller sees. Pure.

    Each absolute ``fs`` capability contributes its :func:`cap_root`: read-write when it
    holds write or delete and the policy allows writing there, read-only when it holds
    read and the policy allows reading. ``hidden`` (the runtime's own state) and the
    paths in ``_NEVER`` are never bound, nor anything that contains them. A read-only
    path inside a read-write one is dropped (the outer bind covers it).
    """
    ro: list[str] = []
    rw: list[str] = []
    for c in (*caps, *approved):
        root = cap_root(c.resource) if c.kind == "fs" else None
        if root is None or any(_inside(h, root) for h in (*hidden, *_NEVER)) or any(
                _inside(root, n) for n in ("/proc", "/dev", "/sys", *hidden)):
            continue
        if c.rights & {"write", "delete"} and _permitted(policy, approved, "write", root, cwd):
            rw.append(root)
        elif "read" in c.rights and _permitted(policy, approved, "read", root, cwd):
            ro.append(root)
    rw = _minimal(rw)
    ro = [p for p in _minimal(ro) if not any(_inside(p, w) for w in rw)]
    return ro, rw


def output_text(data: bytes, total: int) -> str:
    """A stream as the agent gets it: UTF-8 (invalid bytes replaced), and a marker when
    more than :data:`MAX_OUTPUT` bytes were written."""
    text = data.decode("utf-8", "replace")
    if total > len(data):
        text += (f"\n[agentlibos: output truncated: {total} bytes written, the first "
                 f"{len(data)} kept]")
    return text


# ----------------------------------------------------------------------- running


@dataclass
class _Stream:
    fd: int | None = None
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


@dataclass
class Run:
    wid: int
    pid: int
    argv: list[str]
    exe: str
    cwd: str
    run_as: tuple[int, int]
    scratch: Path
    pending: Pending
    timeout_s: float
    stdin: bytes = b""
    started: float = field(default_factory=time.monotonic)
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


class ShellRunner:
    """The shell service ``shell.exec`` handlers receive (``ShellService``)."""

    def __init__(self, paths: Paths, store: Store, loop: Loop, sandbox: SandboxManager,
                 workers: Workers, waits: Waits, table: ProcessTable) -> None:
        self._paths = paths
        self._store = store
        self._loop = loop
        self._sandbox = sandbox
        self._workers = workers
        self._waits = waits
        self.runs: dict[int, Run] = {}
        self._fds: dict[int, Run] = {}
        table.ended.append(self.end_process)

    # ------------------------------------------------------------------ the call

    def resolve(self, argv0: str, cwd: str) -> str:
        """``argv0`` as the command's sandbox will find it: a path (against ``cwd``), or
        a name looked up on its PATH (read-only system directories)."""
        if "/" in argv0:
            return os.path.normpath(os.path.join(cwd, argv0))
        for folder in SHELL_PATH.split(":"):
            p = os.path.join(folder, argv0)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise NotFound(f"shell.exec: {argv0!r} is not a program on the sandbox's PATH "
                       f"({SHELL_PATH})", program=argv0)

    def run(self, caller: Caller, argv: list[str], exe: str, stdin: bytes | None,
            timeout_s: float, env: dict[str, str]) -> Pending:
        cwd = caller.cwd
        ro, rw = shell_paths(caller.caps, caller.approved, caller.policy, cwd,
                             hidden=(str(self._paths.home),))
        ro = [p for p in ro if _bindable(p)]
        rw = [p for p in rw if _bindable(p)]
        if not any(_inside(cwd, p) for p in (*ro, *rw)):
            raise PermissionDenied(
                f"shell.exec: the process's cwd {cwd} is not readable under its fs "
                "capabilities, so a command cannot run there", cwd=cwd)
        try:
            st = os.stat(cwd)
        except OSError as e:
            raise NotFound(f"shell.exec: the process's cwd {cwd}: {e.strerror}") from None
        wid = self._workers.new_id()
        scratch = self._paths.scratch / f"s{-wid}"
        scratch.mkdir(mode=0o700)
        run = Run(wid, caller.pid, argv, exe, cwd, (st.st_uid, st.st_gid), scratch,
                  Pending(caller.pid), timeout_s, stdin or b"")
        try:
            _mount_points(scratch, (*ro, *rw))
            prep = self._sandbox.prepare_shell(wid, read_only=tuple(ro), read_write=tuple(rw),
                                               scratch=scratch, run_as=run.run_as,
                                               owner_pid=caller.pid)
            self.runs[wid] = run
            run.cgroup = self._workers.start(wid, self, prep, {
                "command": True, "exe": exe, "argv": argv, "cwd": cwd,
                "scratch": str(scratch), "title": f"agentlibos: {caller.pid} shell {argv[0]}",
                "env": {"PATH": SHELL_PATH, "HOME": SHELL_TMP, "LANG": "C.UTF-8", **env},
            })
        except (LibOSError, OSError) as e:
            self.runs.pop(wid, None)
            discard_tree(scratch)
            if isinstance(e, LibOSError):
                raise
            raise Unavailable(f"shell.exec: cannot prepare the command's sandbox: {e}") from None
        run.timer = self._loop.call_later(timeout_s, lambda: self._timeout(run))
        return self._waits.suspend(caller.pid, run.pending, f"shell:{storable(argv[0], 80)}")

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
        assert run.report is not None
        try:
            data = os.read(run.report, 65536)
        except BlockingIOError:
            return
        self._close(run.report)
        run.report = None
        if not data:
            return
        report = parse_report(data)
        run.layers = list(report.get("layers") or [])
        run.missing = list(report.get("missing") or [])
        if not report.get("ok"):
            run.error = Unavailable(f"shell.exec: the command could not be sandboxed: "
                                    f"{report.get('error')}")

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
            room = MAX_OUTPUT - len(s.data)
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
        duration = round(time.monotonic() - run.started, 3)
        code: int | None = None
        if status is not None:
            code = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                    else -os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
        truncated = run.out.total > MAX_OUTPUT or run.err.total > MAX_OUTPUT
        self._store.append_audit(
            run.pid, "shell.exec", f"shell:exec:{run.argv[0]}",
            "error" if run.error else "info",
            {"argv": [storable(a, 1024) for a in run.argv[:64]], "argc": len(run.argv),
             "exe": run.exe, "cwd": run.cwd, "uid": run.run_as[0],
             "exit_code": code, "duration_s": duration, "timed_out": run.timed_out,
             "truncated": truncated, "stdout_bytes": run.out.total,
             "stderr_bytes": run.err.total, "stdout_sha256": run.out.digest.hexdigest(),
             "stderr_sha256": run.err.digest.hexdigest(), "layers": run.layers,
             "missing": run.missing, "memory_killed": oom, "pids_limit_hit": pids_hit,
             **({"error": run.error.message} if run.error else {})})
        if run.error is not None:
            run.pending.reject(run.error)
            return
        run.pending.resolve({
            "exit_code": code,
            "stdout": output_text(bytes(run.out.data), run.out.total),
            "stderr": output_text(bytes(run.err.data), run.err.total),
            "truncated": truncated,
            "timed_out": run.timed_out,
        })

    def end_process(self, pid: int) -> None:
        """The calling process ended: so do its commands."""
        for run in [r for r in self.runs.values() if r.pid == pid]:
            self._kill(run)


def _bindable(path: str) -> bool:
    """Exists, and names itself: a symlink as a bind root would show what it points to
    (anywhere on the host) under a name the capability was granted for."""
    return os.path.lexists(path) and os.path.realpath(path) == path


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
