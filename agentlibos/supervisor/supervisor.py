"""The supervisor: process table, lifecycle, and the services behind every syscall.

One thread, one loop (:meth:`Supervisor.step`): it polls the broker socket, the control
socket, the zygote socket and each new child's report pipe; handles everything ready
inside one store batch; commits; then sends the replies. All state changes happen on
this thread, so there are no locks, and the SQLite connection has a single writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from agentlibos.broker.server import Broker, dispatch
from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.broker.syscalls.base import Result
from agentlibos.config import Paths, SupervisorConfig
from agentlibos.errors import (
    AuthenticationFailed,
    Conflict,
    ImageError,
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    NoSuchProcess,
    NotFound,
    PermissionDenied,
    PolicyError,
    SandboxError,
    Timeout,
    Unavailable,
)
from agentlibos.kernel.caps import CapPattern, attenuate, parse_cap, within
from agentlibos.kernel.image import NAME_RE, AgentImage, ToolSpec, load_image
from agentlibos.kernel.policy import (
    BUILTIN_POLICY,
    Decision,
    Policy,
    Request,
    authorize,
    parse_policy,
)
from agentlibos.kernel.process import ProcessRecord, state_for_reason
from agentlibos.providers.fs import LocalFs
from agentlibos.sandbox.profile import SandboxConfig, effective_limits, load_config
from agentlibos.store.sqlite import SQLiteStore
from agentlibos.supervisor.control import ControlServer, Responder
from agentlibos.supervisor.exits import describe_status, log_tail
from agentlibos.supervisor.jit import JitManager, ToolDef
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.zygote_client import ZygoteEvent, ZygoteHandle
from agentlibos.zygote.child import START_FAILED_STATUS, parse_report

log = logging.getLogger(__name__)


@dataclass
class LiveProcess:
    """The supervisor's in-memory view of a process that has not ended yet."""

    caller: Caller
    token: bytes
    scratch: Path
    log_path: Path
    limits: dict[str, Any]
    host_pid: int | None = None
    pidfd: int | None = None
    report_fd: int | None = None
    ready: bool = False
    exit_status: str | None = None  # what the agent said in proc.exit
    exit_result: Any = None
    exit_error: str | None = None
    kill_reason: str | None = None  # why the supervisor stopped it
    kill_detail: str | None = None
    start_error: str | None = None
    waiters: list[Pending] = field(default_factory=list)
    blocked: int = 0  # pending replies the process is waiting on
    timers: list[int] = field(default_factory=list)
    cgroup: Any = None  # agentlibos.sandbox.cgroups.ProcessCgroup, when that layer is on
    jit_tools: dict[str, ToolDef] = field(default_factory=dict)  # registered at run time


class Supervisor:
    def __init__(
        self,
        paths: Paths,
        config: SupervisorConfig | None = None,
        *,
        mode: str = "embedded",
        sandbox: SandboxConfig | None = None,
    ) -> None:
        self.paths = paths
        self.config = config or SupervisorConfig()
        # The operator's sandbox config: given, else $AGENTLIBOS_HOME/config.toml if it
        # exists, else the defaults (every layer required).
        if sandbox is None:
            cfg = paths.home / "config.toml"
            sandbox = load_config(cfg if cfg.exists() else None)
        self.sandbox = SandboxManager(paths, sandbox)
        self.jit = JitManager(self)
        self.mode = mode
        self.fs = LocalFs()
        self.object_quota = self.config.object_quota
        self.live: dict[int, LiveProcess] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._timer_ids = itertools.count(1)
        self._report_fds: dict[int, int] = {}  # fd -> pid
        self._unreleased: dict[int, Any] = {}  # pid -> cgroup whose removal is retried
        self._control_waiters: dict[int, list[Responder]] = {}
        self._stop_requested = False
        self._started = False
        self._active = False  # the last turn served a request: busy-poll the next
        self._lock_fd: int | None = None
        self.store: SQLiteStore
        self.zygote: ZygoteHandle
        self.broker: Broker
        self.control: ControlServer
        self._ctx: zmq.Context[zmq.Socket[bytes]]
        self._poller: zmq.Poller
        self._wake_r: socket.socket
        self._wake_w: socket.socket

    # ---------------------------------------------------------------- start and stop

    def start(self) -> None:
        self.paths.ensure()
        self._lock()
        try:
            self.store = SQLiteStore(self.paths.db)
            self._recover()
            self.sandbox.start()
            # The zygote is a fresh interpreter, started before this process creates its
            # ZeroMQ context, so nothing it forks has ever seen an I/O thread.
            self.zygote = ZygoteHandle(self.paths.logs / "zygote.log")
            self._ctx = zmq.Context(io_threads=1)
            self.broker = Broker(self._ctx, self.paths.broker_endpoint, self)
            # Agents may run as an unprivileged uid; the socket file is reachable only
            # through run/ (0700) or the bind mount into each agent's own tree.
            os.chmod(self.paths.broker_endpoint[len("ipc://"):], 0o666)  # noqa: S103
            self.control = ControlServer(self._ctx, self.paths.control_endpoint)
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            # One poller for the supervisor's life; report pipes come and go on it.
            self._poller = zmq.Poller()
            for s in (self.broker.sock, self.control.sock):
                self._poller.register(s, zmq.POLLIN)
            for fd in (self.zygote.fileno(), self._wake_r.fileno()):
                self._poller.register(fd, zmq.POLLIN)
        except BaseException:
            self._unlock()
            raise
        self._started = True
        self._at(30.0, self._housekeeping)

    def _housekeeping(self) -> None:
        """Every 30 s: end JIT tool processes idle longer than the operator allows."""
        self.jit.reap_idle()
        self._at(30.0, self._housekeeping)

    def _lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Conflict(
                f"another supervisor (pid {holder}) is using {self.paths.home}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> None:
        """Clean up after a supervisor that died without stopping (kill -9, power loss)."""
        now = time.time()
        with self.store.batch():
            for pid in self.store.mark_orphans("supervisor-lost", now):
                self.store.append_audit(pid, "proc.exit", f"proc:{pid}", "info",
                                        {"reason": "supervisor-lost"})
        for sock_name in ("broker.sock", "control.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.paths.run / sock_name).unlink()
        for entry in self.paths.scratch.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        # Tools registered by processes of a supervisor that died went with them.
        shutil.rmtree(self.paths.home / "jit", ignore_errors=True)

    def stop(self) -> None:
        """Kill every live process, wait for their ends to be recorded, release all."""
        if not self._started:
            return
        self._started = False
        for pid in list(self.live):
            self.terminate(pid, "killed", "the supervisor is stopping", grace_s=0)
        events = self.zygote.close()
        with self.store.batch():
            for ev in events:
                self._on_zygote_event(ev)
            for pid in list(self.live):  # never reported: the zygote was gone
                self._finalize(pid, None)
        self.broker.flush()
        self.control.flush()
        for fd in list(self._report_fds):
            self._close_report(fd)
        # The retry timers will not run again: finish removing cgroups now, blocking.
        for pid, cgroup in list(self._unreleased.items()):
            try:
                cgroup.kill()
                cgroup.remove(timeout_s=2.0)
            except (SandboxError, OSError) as e:
                log.error("cannot remove the cgroup of process %d: %s", pid, e)
        self.broker.close()
        self.control.close()
        self._wake_r.close()
        self._wake_w.close()
        self._ctx.term()
        self.sandbox.stop()
        self.store.close()
        self._unlock()

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    # -------------------------------------------------------------------------- loop

    def step(self, timeout_s: float = 1.0) -> None:
        """One turn: wait for anything ready, handle it in one batch, commit, reply."""
        if self._timers:
            timeout_s = max(0.0, min(timeout_s, self._timers[0][0] - time.monotonic()))
        ready = self._busy_poll() if self._active else {}
        if not ready:
            ready = dict(self._poller.poll(int(timeout_s * 1000)))
        self._active = self.broker.sock in ready
        with self.store.batch():
            if self.zygote.fileno() in ready:
                for ev in self.zygote.receive():
                    self._on_zygote_event(ev)
            for fd in [fd for fd in self._report_fds if fd in ready]:
                self._on_report(fd)
            for fd in [fd for fd in self.jit.fds if fd in ready]:
                self.jit.on_ready(fd, ready[fd])
            if self.broker.sock in ready:
                self.broker.drain()
            if self.control.sock in ready:
                self.control.drain(self._on_control)
            self._run_timers()
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        self.broker.flush()
        self.control.flush()

    def _busy_poll(self) -> dict[Any, int]:
        """Right after serving a request, spin briefly before sleeping in poll().

        An agent making a run of syscalls sends the next one tens of microseconds after
        its reply; waking from a blocking poll costs about as much again on a VM. So for
        ``busy_poll_us`` after activity the loop polls without sleeping. Idle, it sleeps.
        """
        end = time.perf_counter() + self.config.busy_poll_us / 1e6
        while True:
            ready = self._poller.poll(0)
            if ready or time.perf_counter() >= end:
                return dict(ready)

    def run_until(self, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Step until ``done()`` or a stop is requested; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if self._stop_requested:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.step(0.5 if deadline is None else min(0.5, deadline - time.monotonic()))
        return True

    def settle(self, timeout_s: float) -> bool:
        """Step until no process is live, even after a stop request (to record kills)."""
        deadline = time.monotonic() + timeout_s
        while self.live and time.monotonic() < deadline:
            self.step(min(0.5, max(0.0, deadline - time.monotonic())))
        return not self.live

    # ------------------------------------------------------------------------ timers

    def _at(self, delay_s: float, fn: Callable[[], None]) -> int:
        tid = next(self._timer_ids)
        heapq.heappush(self._timers, (time.monotonic() + delay_s, tid, fn))
        return tid

    def _cancel(self, tid: int) -> None:
        self._cancelled.add(tid)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, tid, fn = heapq.heappop(self._timers)
            if tid in self._cancelled:
                self._cancelled.discard(tid)
                continue
            fn()

    # ------------------------------------------------------------------ zygote events

    def _on_zygote_event(self, ev: ZygoteEvent) -> None:
        wid = ev.msg.get("pid")
        if isinstance(wid, int) and wid < 0:  # a JIT tool's Deno process
            if ev.op == "spawned":
                self.jit.on_spawned(wid, int(ev.msg["host_pid"]), ev.fds)
            elif ev.op == "exited":
                self.jit.on_exited(wid, int(ev.msg["status"]))
            elif ev.op == "spawn-failed":
                self.jit.spawn_failed(wid, str(ev.msg.get("error")))
            if ev.op != "spawned":
                for fd in ev.fds:
                    os.close(fd)
            return
        if ev.op == "spawned":
            pid = int(ev.msg["pid"])
            pidfd, report_fd = ev.fds
            live = self.live.get(pid)
            if live is None:  # ended while the fork was in flight
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
                os.close(report_fd)
                return
            live.host_pid = int(ev.msg["host_pid"])
            live.pidfd = pidfd
            live.report_fd = report_fd
            os.set_blocking(report_fd, False)
            self._report_fds[report_fd] = pid
            self._poller.register(report_fd, zmq.POLLIN)
            self.store.update_process(pid, host_pid=live.host_pid, started_at=time.time())
            if live.kill_reason is not None:  # killed before it existed
                self._signal(live, signal.SIGKILL)
        elif ev.op == "spawn-failed":
            pid = int(ev.msg["pid"])
            if pid in self.live:
                self.live[pid].start_error = str(ev.msg.get("error"))
                self._finalize(pid, None)
        elif ev.op == "exited":
            exited = ev.msg.get("pid")
            if isinstance(exited, int) and exited in self.live:
                self._finalize(exited, int(ev.msg["status"]))
        elif ev.op == "eof":
            self._on_zygote_lost()
        for fd in ev.fds if ev.op != "spawned" else ():
            os.close(fd)

    def _on_zygote_lost(self) -> None:
        log.error("the zygote died; restarting it")
        for pid in list(self.live):
            live = self.live[pid]
            live.kill_reason = live.kill_reason or "crashed"
            live.kill_detail = "the zygote died (every agent it forked dies with it)"
            self._finalize(pid, None)
        self._poller.unregister(self.zygote.fileno())
        with contextlib.suppress(OSError):
            self.zygote.close(timeout_s=1)
        self.zygote = ZygoteHandle(self.paths.logs / "zygote.log")
        self._poller.register(self.zygote.fileno(), zmq.POLLIN)

    def _on_report(self, fd: int) -> None:
        pid = self._report_fds[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        self._close_report(fd)
        live = self.live.get(pid)
        if live is None or not data:
            return
        report = parse_report(data)
        if report.get("ok"):
            self.store.update_process(pid, layers=list(report.get("layers", [])),
                                      missing_layers=list(report.get("missing", [])))
            self.store.append_audit(pid, "proc.contain", f"proc:{pid}", "info",
                                    {"layers": report.get("layers", []),
                                     "missing": report.get("missing", []),
                                     "timings_ms": report.get("timings_ms", {})})
        else:
            live.start_error = str(report.get("error"))

    def _close_report(self, fd: int) -> None:
        pid = self._report_fds.pop(fd, None)
        if pid is not None:
            self._poller.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        if pid is not None and pid in self.live:
            self.live[pid].report_fd = None

    # --------------------------------------------------------------------- lifecycle

    def _signal(self, live: LiveProcess, sig: int) -> None:
        if sig == signal.SIGKILL and live.cgroup is not None:
            # Everything in the cgroup, including what escaped the process group with
            # setsid() or a double fork.
            with contextlib.suppress(SandboxError, OSError):
                live.cgroup.kill()
        if live.pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(live.pidfd, sig)
        if live.host_pid is not None:
            # The agent's own forks share its process group (set in the child). The pid
            # cannot have been reused: it is unreaped until the zygote reports the exit.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(live.host_pid, sig)

    def terminate(self, pid: int, reason: str, detail: str, *,
                  grace_s: float | None = None) -> None:
        """Stop ``pid`` and its live descendants: SIGTERM, then SIGKILL after the grace."""
        live = self.live.get(pid)
        if live is None:
            return
        if live.kill_reason is None:
            live.kill_reason, live.kill_detail = reason, detail
        grace = self.config.kill_grace_s if grace_s is None else grace_s
        for child in self._live_children(pid):
            self.terminate(child, "killed", f"its ancestor {pid} was stopped", grace_s=grace)
        if live.host_pid is None:
            return  # the spawned event will kill it
        if grace > 0:
            self._signal(live, signal.SIGTERM)
            live.timers.append(self._at(grace, lambda: self._escalate(pid)))
        else:
            self._signal(live, signal.SIGKILL)

    def _escalate(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is not None:
            self._signal(live, signal.SIGKILL)

    def _live_children(self, pid: int) -> list[int]:
        return [p for p, lv in self.live.items() if lv.caller.ppid == pid]

    def _finalize(self, pid: int, status: int | None) -> None:
        """Record how ``pid`` ended, wake its waiters, stop its children, clean up."""
        live = self.live.pop(pid)
        for tid in live.timers:
            self._cancel(tid)
        if live.report_fd is not None and live.report_fd in self._report_fds:
            self._on_report(live.report_fd)  # a last report may still be in the pipe
        if live.pidfd is not None:
            os.close(live.pidfd)
            live.pidfd = None
        error: str | None = None
        if live.kill_reason is not None:
            reason, error = live.kill_reason, live.kill_detail
        elif live.start_error is not None or (
            status is not None and os.WIFEXITED(status)
            and os.WEXITSTATUS(status) == START_FAILED_STATUS and not live.ready
        ):
            reason, error = "start-failed", live.start_error or _last_line(live.log_path)
        elif live.exit_status == "returned":
            reason = "returned"
        elif live.exit_status == "error":
            reason, error = "error", live.exit_error
        else:
            reason, error = "crashed", _describe_status(status)
        oom, pids_hit, usage = self.sandbox.verdict(live.cgroup)
        if reason in ("crashed", "error", "killed") and oom:
            reason, error = "memory", (
                f"killed by the kernel for exceeding its memory limit of "
                f"{live.limits.get('memory_max_bytes')} bytes")
        elif reason in ("crashed", "error") and pids_hit:
            reason, error = "pids", (f"stopped at its limit of {live.limits.get('pids_max')} "
                                     f"processes ({error})")
        state = state_for_reason(reason)
        result = live.exit_result if reason == "returned" else None
        now = time.time()
        self.store.update_process(pid, state=state, exit_reason=reason, result=result,
                                  error=error, ended_at=now)
        self.store.append_audit(pid, "proc.exit", f"proc:{pid}", "info",
                                {"state": state, "exit_reason": reason, "error": error,
                                 "status": status, "usage": usage,
                                 "pids_limit_hit": pids_hit})
        self._release_cgroup(pid, live.cgroup)
        self.jit.end_process(pid)
        shutil.rmtree(live.scratch, ignore_errors=True)
        rec = self.store.get_process(pid)
        for w in live.waiters:
            w.resolve(rec.public())
        for child in self._live_children(pid):
            self.terminate(child, "killed", f"its parent {pid} ended")
        for responder in self._control_waiters.pop(pid, []):
            responder({"ok": True, "record": rec.public()})

    def _release_cgroup(self, pid: int, cgroup: Any, attempt: int = 0) -> None:
        """Kill what is left in the cgroup and remove it, retrying without blocking the
        loop while the kernel finishes tearing exited tasks down."""
        if cgroup is None:
            return
        try:
            cgroup.kill()
            cgroup.remove(timeout_s=0)
            self._unreleased.pop(pid, None)
        except (SandboxError, OSError) as e:
            self._unreleased[pid] = cgroup
            if attempt < 50:
                self._at(0.05 * (attempt + 1), lambda: self._release_cgroup(pid, cgroup,
                                                                            attempt + 1))
            else:
                log.error("cannot remove the cgroup of process %d: %s", pid, e)
                self.store.append_audit(pid, "proc.cleanup", f"proc:{pid}", "error",
                                        {"reason": f"cgroup not removed: {e}"})

    def tree_live(self, root_pid: int) -> bool:
        return any(lv.caller.root_pid == root_pid for lv in self.live.values())

    # ----------------------------------------------------------------------- spawning

    def resolve_image(self, ref: str, near: AgentImage | None = None) -> AgentImage:
        """An image by directory path, registered name, or sibling of ``near``'s directory."""
        if "/" in ref or ref.startswith("."):
            return load_image(ref)
        if not NAME_RE.match(ref):
            raise ImageError(f"{ref!r} is neither an image directory nor a valid image name")
        reg = self.store.get_image(ref)
        if reg is not None:
            return load_image(reg.path)
        if near is not None and near.name == ref:
            return load_image(near.path)  # a process may spawn copies of its own image
        if near is not None:
            sibling = near.path.parent / ref
            if (sibling / "image.toml").is_file():
                img = load_image(sibling)
                if img.name != ref:
                    raise ImageError(
                        f"directory {str(sibling)!r} holds image {img.name!r}, not {ref!r}"
                    )
                return img
        raise NotFound(f"no image named {ref!r}: not registered (agentlibos image add DIR)"
                       + (f" and not a sibling of {near.path}" if near else ""))

    def _new_process(
        self,
        image: AgentImage,
        args: dict[str, Any],
        *,
        parent: Caller | None,
        policy: Policy,
        cwd: str | None,
        held: Callable[[str], list[CapPattern]],
    ) -> int:
        args_json = json.dumps(args)
        if len(args_json) > self.config.max_args_bytes:
            raise LimitExceeded(f"args of {len(args_json)} bytes exceed "
                                f"{self.config.max_args_bytes}")
        policy_id = self.store.policy_id(policy.source, policy.text)
        eff_limits = effective_limits(image.limits, self.sandbox.config)
        limits = eff_limits.to_json()
        with self.store.transaction():
            rec = self.store.create_process(ProcessRecord(
                pid=0, ppid=parent.pid if parent else None,
                root_pid=parent.root_pid if parent else 0, image=image.name,
                image_path=str(image.path), state="created", cwd=cwd or "",
                args=args, limits=limits, policy_id=policy_id, created_at=time.time(),
            ))
            pid = rec.pid
            if cwd is None:
                work = self.paths.work / str(pid)
                work.mkdir(parents=True, exist_ok=True)
                cwd = str(work)
                self.store.update_process(pid, cwd=cwd)
            caps = held(cwd)
            self.store.set_caps(pid, [str(c) for c in caps])
            self.store.append_audit(
                pid, "proc.spawn" if parent else "proc.run", f"image:{image.name}", "info",
                {"parent": parent.pid if parent else None, "image": image.name,
                 "image_path": str(image.path), "cwd": cwd, "caps": [str(c) for c in caps],
                 "policy": policy.source},
            )
        caller = Caller(pid=pid, ppid=parent.pid if parent else None,
                        root_pid=rec.root_pid, cwd=cwd, image=image, caps=caps,
                        policy=policy)
        scratch = self.paths.scratch / str(pid)
        scratch.mkdir(mode=0o700)
        live = LiveProcess(caller=caller, token=secrets.token_bytes(32), scratch=scratch,
                           log_path=self.paths.logs / f"{pid}.log", limits=limits)
        self.live[pid] = live
        try:
            # Decided here, before fork: the child only applies it (fail closed: a
            # required layer this host cannot give stops the spawn with its reason).
            prepared = self.sandbox.prepare(pid, eff_limits, str(image.path), scratch)
            live.cgroup = prepared.cgroup
            self.zygote.spawn(pid, {
                "pid": pid,
                "token": live.token.hex(),
                "endpoint": self.paths.broker_endpoint,
                "scratch": str(scratch),
                "log": str(live.log_path),
                "profile": prepared.profile,
            })
        except (Unavailable, SandboxError) as e:
            live.start_error = str(e)
            self._finalize(pid, None)
            return pid
        wall = eff_limits.wall_limit_s
        if wall is not None:
            live.timers.append(self._at(wall, lambda: self.terminate(
                pid, "wall", f"ran longer than its wall-clock limit of {wall:g} s")))
        live.timers.append(self._at(self.config.start_timeout_s, lambda: self._start_timeout(
            pid)))
        return pid

    def _start_timeout(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is not None and not live.ready:
            live.start_error = f"no first syscall within {self.config.start_timeout_s:g} s"
            self.terminate(pid, "crashed", live.start_error, grace_s=0)

    def submit_run(
        self,
        image_ref: str,
        args: dict[str, Any],
        *,
        cwd: str | None = None,
        policy: Policy | None = None,
    ) -> int:
        """Start a root process (``agentlibos run``): held = image request, policy decides."""
        image = self.resolve_image(image_ref)
        pol = policy or BUILTIN_POLICY
        if cwd is not None:
            real = os.path.realpath(cwd)
            if not os.path.isdir(real):
                raise InvalidArgument(f"--cwd {cwd!r} is not a directory")
            cwd = real

        def held(c: str) -> list[CapPattern]:
            return [r.resolved(c) for r in image.requested]

        return self._new_process(image, args, parent=None, policy=pol, cwd=cwd, held=held)

    # -------------------------------------------------------------- Host: identity

    def authenticate(self, pid: int, token: bytes) -> Caller:
        live = self.live.get(pid)
        # compare_digest: no timing hint about how much of a guessed token was right.
        if live is None or not hmac.compare_digest(token, live.token):
            raise AuthenticationFailed(
                f"the credentials sent do not belong to pid {pid}; a process can only "
                "act as itself"
            )
        return live.caller

    def savepoint(self) -> Any:
        return self.store.savepoint()

    def on_protocol_error(self, error: LibOSError, routing_id: bytes) -> None:
        if isinstance(error, AuthenticationFailed):
            self.store.append_audit(None, "auth", "broker", "deny",
                                    {"reason": error.message, "peer": routing_id.hex()})

    def on_internal_error(self, caller: Caller, call: str, exc: BaseException) -> None:
        self.store.append_audit(caller.pid, call, call, "error",
                                {"exception": f"{type(exc).__name__}: {exc}"})

    # -------------------------------------------------------- Host: authorisation

    def decide(self, caller: Caller, request: Request) -> Decision:
        return authorize(caller.caps, caller.policy, request, caller.cwd)

    def authorize(self, caller: Caller, call: str, request: Request) -> None:
        d = self.decide(caller, request)
        detail: dict[str, Any] = {"reason": d.reason}
        if d.rule:
            detail["rule"] = d.rule
        if caller.via_tool:
            detail["tool"] = caller.via_tool
        if d.verdict == "ask":
            # The human approval queue is the next step on the roadmap; until then an
            # `ask` has no one to ask and fails closed.
            detail["outcome"] = "refused: no human channel is available"
            self.store.append_audit(caller.pid, call, str(request), "ask", detail)
            raise PermissionDenied(
                f"{call}: {request} needs a human's approval ({d.reason}), but no human "
                "channel is available to this process",
                request=str(request), rule=d.rule,
            )
        self.store.append_audit(caller.pid, call, str(request), d.verdict, detail)
        if d.verdict == "deny":
            raise PermissionDenied(f"{call}: {d.reason}", request=str(request), rule=d.rule)

    def audit(self, caller: Caller, call: str, request: str, verdict: str,
              detail: dict[str, Any]) -> None:
        if caller.via_tool:
            detail = {**detail, "tool": caller.via_tool}
        self.store.append_audit(caller.pid, call, request, verdict, detail)

    def dispatch(self, caller: Caller, call: str, args: dict[str, Any],
                 blobs: list[bytes]) -> Result:
        return dispatch(self, caller, call, args, blobs)

    # ------------------------------------------------------------ Host: processes

    def start_info(self, caller: Caller) -> dict[str, Any]:
        live = self.live[caller.pid]
        if not live.ready:
            live.ready = True
            self.store.update_process(caller.pid, state="running", ready_at=time.time())
        rec = self.store.get_process(caller.pid)
        img = caller.image
        return {
            "pid": caller.pid, "ppid": caller.ppid, "image": img.name,
            "image_path": str(img.path), "entry_module": img.entry_module,
            "entry_function": img.entry_function, "args": rec.args, "cwd": caller.cwd,
            "tools": [t.name for t in img.tools],
        }

    def spawn(self, caller: Caller, image: str, args: dict[str, Any],
              caps: list[str] | None, cwd: str | None) -> int:
        self.authorize(caller, "proc.spawn", Request("proc", "spawn", image))
        img = self.resolve_image(image, near=caller.image) if "/" not in image else None
        if img is None:
            raise InvalidArgument("proc.spawn: name a registered image or a sibling image, "
                                  "not a path")
        self._check_tree_limits(caller)
        child_cwd = caller.cwd
        if cwd is not None:
            r = self.fs.resolve(caller.cwd, cwd)
            self.authorize(caller, "proc.spawn", Request("fs", "read", r.real, r.aliases))
            if not os.path.isdir(r.real):
                raise InvalidArgument(f"proc.spawn: cwd {cwd!r} is not a directory")
            child_cwd = r.real
        if caps is None:
            handed = list(caller.caps)
        else:
            handed = []
            for text in caps:
                try:
                    c = parse_cap(text).resolved(caller.cwd)
                except PolicyError as e:
                    raise InvalidArgument(f"proc.spawn: {e.message}") from None
                if not within(c, caller.caps):
                    self.audit(caller, "proc.spawn", str(c), "deny",
                               {"reason": "not within the parent's capabilities"})
                    raise PermissionDenied(
                        f"proc.spawn: cannot hand on '{c}': it is not within the "
                        "capabilities this process holds (a child can only get less)",
                        capability=str(c),
                    )
                handed.append(c)

        def held(c: str) -> list[CapPattern]:
            return attenuate([r.resolved(c) for r in img.requested], handed)

        return self._new_process(img, args, parent=caller, policy=caller.policy,
                                 cwd=child_cwd, held=held)

    def _check_tree_limits(self, caller: Caller) -> None:
        tree = sum(1 for lv in self.live.values() if lv.caller.root_pid == caller.root_pid)
        if tree >= self.config.max_live_per_tree:
            raise LimitExceeded(f"proc.spawn: the process tree already has {tree} live "
                                f"processes (limit {self.config.max_live_per_tree})")
        kids = len(self._live_children(caller.pid))
        if kids >= self.config.max_children:
            raise LimitExceeded(f"proc.spawn: {kids} live children already "
                                f"(limit {self.config.max_children})")
        depth, p = 0, caller.ppid
        while p is not None and depth <= self.config.max_depth:
            depth += 1
            lv = self.live.get(p)
            p = lv.caller.ppid if lv else self.store.get_process(p).ppid
        if depth >= self.config.max_depth:
            raise LimitExceeded(f"proc.spawn: tree depth limit {self.config.max_depth}")

    def _target(self, caller: Caller, pid: int, right: str, call: str) -> ProcessRecord:
        """The process ``caller`` names, if it may ``right`` it (wait or signal)."""
        try:
            rec = self.store.get_process(pid)
        except NoSuchProcess:
            rec = None
        if rec is None or rec.root_pid != caller.root_pid:
            # Other trees are invisible: not even their existence leaks.
            raise NoSuchProcess(f"{call}: no process {pid} in this process tree")
        if rec.ppid == caller.pid or (pid == caller.pid and right == "signal"):
            self.audit(caller, call, f"proc:{right}:{pid}", "allow",
                       {"reason": "own child" if rec.ppid == caller.pid else "itself"})
            return rec
        if self._is_descendant(pid, caller.pid):
            self.authorize(caller, call, Request("proc", right, "children"))
        else:
            self.authorize(caller, call, Request("proc", right, rec.image))
        return rec

    def _is_descendant(self, pid: int, ancestor: int) -> bool:
        p: int | None = pid
        for _ in range(self.config.max_depth + 2):
            if p is None:
                return False
            rec = self.store.get_process(p)
            if rec.ppid == ancestor:
                return True
            p = rec.ppid
        return False

    def wait(self, caller: Caller, pid: int, timeout_s: float | None) -> Result:
        if pid == caller.pid:
            raise InvalidArgument("proc.wait: a process cannot wait for itself")
        rec = self._target(caller, pid, "wait", "proc.wait")
        target = self.live.get(pid)
        if target is None:
            return rec.public()
        if timeout_s == 0:
            raise Timeout(f"proc.wait: process {pid} is still {rec.state}")
        pending = Pending(caller.pid)
        target.waiters.append(pending)
        self._block(caller.pid, pending)
        if timeout_s is not None:
            def expire() -> None:
                if not pending.done:
                    if pending in target.waiters:
                        target.waiters.remove(pending)
                    pending.reject(Timeout(f"proc.wait: process {pid} still running after "
                                           f"{timeout_s:g} s"))
            tid = self._at(timeout_s, expire)
            self.live[caller.pid].timers.append(tid)
        return pending

    def _block(self, pid: int, pending: Pending) -> None:
        """Mark ``pid`` waiting until ``pending`` is answered."""
        live = self.live[pid]
        live.blocked += 1
        if live.blocked == 1:
            self.store.update_process(pid, state="waiting")

        def unblock() -> None:
            lv = self.live.get(pid)
            if lv is not None:
                lv.blocked -= 1
                if lv.blocked == 0:
                    self.store.update_process(pid, state="running")

        pending.on_done = unblock

    def kill(self, caller: Caller, pid: int) -> None:
        self._target(caller, pid, "signal", "proc.kill")
        self.terminate(pid, "killed", f"killed by process {caller.pid}")

    def exit(self, caller: Caller, status: str, result: Any, error: str | None) -> None:
        encoded = json.dumps(result)
        if len(encoded) > self.config.max_result_bytes:
            raise LimitExceeded(f"proc.exit: result of {len(encoded)} bytes exceeds "
                                f"{self.config.max_result_bytes}")
        live = self.live[caller.pid]
        live.exit_status, live.exit_result, live.exit_error = status, result, error

    def children(self, caller: Caller) -> list[dict[str, Any]]:
        return [
            {"pid": r.pid, "image": r.image, "state": r.state, "exit_reason": r.exit_reason}
            for r in self.store.children(caller.pid)
        ]

    def drop_caps(self, caller: Caller, cap: str) -> list[str]:
        try:
            c = parse_cap(cap).resolved(caller.cwd)
        except PolicyError as e:
            raise InvalidArgument(f"cap.drop: {e.message}") from None
        kept: list[CapPattern] = []
        changed = False
        for h in caller.caps:
            if h.kind != c.kind or not (h.rights & c.rights):
                kept.append(h)
            elif c.glob.covers(h.glob):
                rest = h.rights - c.rights
                if rest:
                    kept.append(h.narrowed(rest))
                changed = True
            elif h.glob.covers(c.glob):
                raise InvalidArgument(
                    f"cap.drop: '{c}' is only part of the held '{h}'; drop the whole "
                    "capability (and re-request what you need from a narrower child)"
                )
            else:
                kept.append(h)
        if not changed:
            raise NotFound(f"cap.drop: this process holds nothing within '{c}'")
        caller.caps[:] = kept
        self.live[caller.pid].caller.caps = caller.caps
        self.store.set_caps(caller.pid, [str(k) for k in kept])
        self.audit(caller, "cap.drop", str(c), "info", {"held": [str(k) for k in kept]})
        return [str(k) for k in kept]

    # --------------------------------------------------------------- Host: tools

    def find_tool(self, caller: Caller, name: str) -> ToolSpec | ToolDef:
        """A registered JIT tool, else the image's tool of that name (builtin or JIT)."""
        live = self.live[caller.pid]
        if name in live.jit_tools:
            return live.jit_tools[name]
        spec = caller.image.tool(name)
        if spec is None:
            known = [t.name for t in caller.image.tools] + list(live.jit_tools)
            raise NotFound(f"tool.call: no tool named {name!r} "
                           f"(this process has: {', '.join(known) or 'none'})")
        if spec.kind == "builtin":
            return spec
        return ToolDef(name=name, path=str(caller.image.path / spec.ref), caps=spec.caps,
                       schema=spec.schema, timeout_s=spec.timeout_s, version="image")

    def jit_call(self, caller: Caller, tool: ToolDef, args: dict[str, Any]) -> Result:
        pending = self.jit.call(caller, tool, args)
        self._block(caller.pid, pending)
        return pending

    def jit_register(self, caller: Caller, name: str, source: str,
                     schema: dict[str, Any] | None, caps: tuple[str, ...],
                     timeout_s: float | None) -> Result:
        version = hashlib.sha256(source.encode()).hexdigest()[:16]
        path = self.jit.tool_dir(caller.pid, name) / f"tool-{version}.ts"
        path.write_text(source, encoding="utf-8")
        os.chmod(path, 0o644)
        tool = ToolDef(name=name, path=str(path), caps=caps, schema=schema,
                       timeout_s=timeout_s, version=version)
        pending = Pending(caller.pid)
        pid = caller.pid

        def done(ok: bool, output: str) -> None:
            live = self.live.get(pid)
            with self.store.transaction():
                self.store.append_audit(pid, "jit.register", f"jit:register:{name}",
                                        "info" if ok else "deny",
                                        {"tool": name, "version": version, "checked": ok,
                                         "caps": list(caps), "compiler": output[:2000]})
            if not ok:
                pending.reject(InvalidArgument(
                    f"jit.register: {name!r} does not pass `deno check`:\n{output}"))
            elif live is not None:
                live.jit_tools[name] = tool
                pending.resolve({"name": name, "version": version})

        self.jit.check(pid, tool, done)
        self._block(pid, pending)
        return pending

    # ------------------------------------------------------------------- control

    def _on_control(self, req: dict[str, Any], respond: Responder) -> None:
        op = req["op"]
        if op == "ping":
            respond({"ok": True, "pid": os.getpid(), "mode": self.mode,
                     "home": str(self.paths.home)})
        elif op == "run":
            policy = None
            if req.get("policy_text") is not None:
                policy = parse_policy(str(req["policy_text"]),
                                      str(req.get("policy_source", "<control>")))
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise InvalidArgument("run: args must be an object")
            pid = self.submit_run(str(req["image"]), args, cwd=req.get("cwd"), policy=policy)
            if req.get("wait"):
                self._control_wait(pid, respond)
            else:
                respond({"ok": True, "pid": pid})
        elif op == "wait":
            self._control_wait(int(req["pid"]), respond)
        elif op == "kill":
            pid = int(req["pid"])
            if pid not in self.live:
                rec = self.store.get_process(pid)
                raise Conflict(f"process {pid} is not running (it is {rec.state})")
            self.terminate(pid, "killed", "killed by the operator")
            respond({"ok": True, "pid": pid})
        elif op == "shutdown":
            respond({"ok": True})
            self._stop_requested = True
        else:
            raise InvalidArgument(f"unknown control operation {op!r}")

    def _control_wait(self, pid: int, respond: Responder) -> None:
        if pid in self.live:
            self._control_waiters.setdefault(pid, []).append(respond)
        else:
            respond({"ok": True, "record": self.store.get_process(pid).public()})


def _last_line(log_path: Path) -> str:
    """Why a process that sent no start report could not start: its log's last line."""
    tail = log_tail(log_path, 1)
    return (f"the process could not start: {tail[-1]}" if tail
            else "the process could not start (no report, empty log)")


def _describe_status(status: int | None) -> str:
    if status is None:
        return "the process ended without a status"
    return f"{describe_status(status)} before reporting a result"

