"""The process table: every live AgentProcess and its lifecycle.

created -> (forked by the zygote, reports its layers) -> running -> waiting <-> running
-> exited | failed | killed. The store's process and capability tables are the truth;
:class:`LiveProcess` is the in-memory cache of what a running process needs on the hot
path (its token, its capabilities, its timers and pidfd).

The table knows the loop only through timers and readers it registers, the zygote only
through :meth:`spawn`, and tells others about an ending through ``ended`` hooks (the
dispatcher forgets the sequence, JIT ends the process's tools).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import resource
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.config import Paths, SupervisorConfig
from agentlibos.errors import (
    AuthenticationFailed,
    LibOSError,
    LimitExceeded,
    SandboxError,
)
from agentlibos.kernel.caps import CapPattern, within
from agentlibos.kernel.image import AgentImage, Limits
from agentlibos.kernel.policy import Policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.text import json_size
from agentlibos.providers.fs import discard_tree
from agentlibos.sandbox.profile import ParentBudget, effective_limits
from agentlibos.store import Store
from agentlibos.supervisor.exits import record_end, why_ended
from agentlibos.supervisor.logs import LogSink
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.zygote_client import ZygoteEvent, ZygoteHandle
from agentlibos.zygote.child import parse_report

log = logging.getLogger(__name__)

# File descriptors the supervisor holds for each process with a host process: its pidfd,
# start report and log pipes, and its ZeroMQ connection. Past RLIMIT_NOFILE, libzmq
# aborts the whole supervisor (EMFILE in its listener): spawns are refused first.
FDS_PER_HOST_PROCESS = 4
FDS_RESERVED = 512  # the store, sockets, workers, JIT helpers, the CLI's connections


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else 1 << 20, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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
    waits: list[str] = field(default_factory=list)  # what its pending calls wait on
    timers: list[Timer] = field(default_factory=list)
    deadline: float | None = None  # monotonic end of its wall-clock budget
    # `[limits] wall` counts every host stretch (images.md): seconds used, this one's start
    wall_used: float = 0.0
    stretch_start: float | None = None
    started: bool = False  # it had a host process before (`started_at` stays the first)
    log: LogSink | None = None  # its stdout/stderr pipe, drained into log_path
    cgroup: Any = None  # agentlibos.sandbox.cgroups.ProcessCgroup, when that layer is on
    # The cgroup its pooled process made before it moved into ``cgroup`` (a nested
    # agent's): removed when it ends (sandboxing.Prepared.pool_leftover).
    pool_leftover: Any = None
    jit_tools: dict[str, Any] = field(default_factory=dict)  # name -> ToolDef, at run time
    durable_waits: int = 0  # how many of `waits` survive an eviction (docs/durability.md)
    waiting_since: float | None = None  # monotonic, while it waits on anything
    # No host process: stopped while it waits (evicted), or not started again yet after
    # a supervisor restart. Its waits live on here; when they end it is resumed.
    evicted: bool = False
    evicting: bool = False  # its host process is being stopped for an eviction
    accident: bool = False  # its end was no one's decision (the zygote died under it)
    wait_timers: list[Timer] = field(default_factory=list)  # its waits' timeouts


class ProcessTable:
    def __init__(self, paths: Paths, config: SupervisorConfig, store: Store, loop: Loop,
                 sandbox: SandboxManager, zygote: Callable[[], ZygoteHandle]) -> None:
        self.paths = paths
        self.config = config
        self.store = store
        self.loop = loop
        self.sandbox = sandbox
        self._zygote = zygote
        self.live: dict[int, LiveProcess] = {}
        # How many processes may hold a host process at once (see FDS_PER_HOST_PROCESS).
        self.host_slots = max(16, (raise_fd_limit() - FDS_RESERVED) // FDS_PER_HOST_PROCESS)
        self.evicted_count = 0  # entries of `live` with no host process (set_evicted)
        # (pid, cgroup name) -> cgroup whose removal is retried
        self._unreleased: dict[tuple[int, str], Any] = {}
        # Called with the pid after a process's end is recorded.
        self.ended: list[Callable[[int], None]] = []
        # Called with (pid, record) to answer those waiting for it outside the broker.
        self.ended_record: list[Callable[[int, dict[str, Any]], None]] = []
        # Asked (pid, live, error) when a process dies by accident; True: it will be
        # resumed (supervisor/durable.py), so its end is not recorded.
        self.on_accident: Callable[[int, LiveProcess, str | None], bool] | None = None

    # ---------------------------------------------------------------- identity

    def authenticate(self, pid: int, token: bytes) -> Caller:
        live = self.live.get(pid)
        # compare_digest: no timing hint about how much of a guessed token was right.
        if live is None or not hmac.compare_digest(token, live.token):
            raise AuthenticationFailed(
                f"the credentials sent do not belong to pid {pid}; a process can only "
                "act as itself"
            )
        return live.caller

    def on_protocol_error(self, error: LibOSError, peer: bytes) -> None:
        pid, detail = self._sender(peer)
        self.store.append_audit(pid, "auth" if isinstance(error, AuthenticationFailed)
                                else "wire", "broker", "deny",
                                {"reason": error.message, **detail})

    def on_refusals_suppressed(self, peer: bytes, count: int, cut: bool) -> None:
        pid, detail = self._sender(peer)
        self.store.append_audit(pid, "wire", "broker", "deny", {
            "reason": f"{count} more refused frames from this sender were not audited one "
            f"by one{'; it is cut off: its frames are now dropped' if cut else ''}",
            **detail, "suppressed": count, "cut": cut})

    def _sender(self, peer: bytes) -> tuple[int | None, dict[str, Any]]:
        """The libOS pid of the host process that sent it (if one), and the audit detail."""
        if not peer.startswith(b"pid:"):
            return None, {"peer": peer.hex()}
        host = int(peer[4:])
        return next((p for p, lv in self.live.items() if lv.host_pid == host), None), {
            "host_pid": host}

    # ---------------------------------------------------------------- queries

    def tree_live(self, root_pid: int) -> bool:
        return any(lv.caller.root_pid == root_pid for lv in self.live.values())

    def live_children(self, pid: int) -> list[int]:
        return [p for p, lv in self.live.items() if lv.caller.ppid == pid]

    def has_host_slot(self) -> bool:
        """Whether one more host process fits in the supervisor's file descriptors
        (evicted processes hold none)."""
        return len(self.live) - self.evicted_count < self.host_slots

    def set_evicted(self, live: LiveProcess, evicted: bool) -> None:
        """The one place ``evicted`` changes for a process in the table (it is counted)."""
        if live.evicted != evicted:
            live.evicted = evicted
            self.evicted_count += 1 if evicted else -1

    def check_tree_limits(self, caller: Caller) -> None:
        tree = sum(1 for lv in self.live.values() if lv.caller.root_pid == caller.root_pid)
        if tree >= self.config.max_live_per_tree:
            raise LimitExceeded(f"proc.spawn: the process tree already has {tree} live "
                                f"processes (limit {self.config.max_live_per_tree})")
        kids = len(self.live_children(caller.pid))
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

    # ---------------------------------------------------------------- creating

    def create(
        self,
        image: AgentImage,
        args: dict[str, Any],
        *,
        parent: Caller | None,
        policy: Policy,
        cwd: str | None,
        held: Callable[[str], list[CapPattern]],
        ask_mode: str = "queue",
        before_launch: Callable[[int], None] | None = None,
    ) -> int:
        """Record a new process, decide its sandbox, and ask the zygote to fork it.

        A child inherits its tree's ask mode, and those of its parent's standing
        approvals that lie within what it holds."""
        if not self.has_host_slot():
            raise LimitExceeded(
                f"the supervisor runs {self.host_slots} host processes, as many as its file "
                "descriptor limit (RLIMIT_NOFILE) allows; try again when some have ended "
                "or been evicted")
        size = json_size(args)
        if size > self.config.max_args_bytes:
            raise LimitExceeded(f"args of {size} bytes exceed {self.config.max_args_bytes}")
        # Limits compose: a child's lie within its parent's (and its wall within what the
        # parent has left); an image above the operator's ceiling is refused here.
        eff_limits = effective_limits(image.limits, self.sandbox.config,
                                      parent=self._budget(parent))
        policy_id = self.store.policy_id(policy.source, policy.text)
        limits = {**eff_limits.to_json(), "log_max_bytes": self.config.log_max_bytes}
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
                        policy=policy, ask_mode=parent.ask_mode if parent else ask_mode,
                        approved=[a for a in (parent.approved if parent else [])
                                  if within(a, caps)])
        if caller.ask_mode != "queue" or caller.approved:
            self.store.update_process(pid, ask_mode=caller.ask_mode,
                                      approved=[str(a) for a in caller.approved])
        live = LiveProcess(caller=caller, token=b"", scratch=self.paths.scratch / str(pid),
                           log_path=self.paths.logs / f"{pid}.log", limits=limits)
        self.live[pid] = live
        if before_launch is not None:
            before_launch(pid)
        self.launch(pid, live, eff_limits)
        return pid

    def launch(self, pid: int, live: LiveProcess, eff_limits: Limits) -> None:
        """Fork ``pid``'s host process (a new one, or one resumed) in a fresh sandbox."""
        image, parent_pid = live.caller.image, live.caller.ppid
        live.token = secrets.token_bytes(32)
        live.scratch.mkdir(mode=0o700, exist_ok=True)
        try:
            # Decided here, before fork: the child only applies it (fail closed: a
            # required layer this host cannot give stops the spawn with its reason).
            prepared = self.sandbox.prepare(
                pid, eff_limits, str(image.path), live.scratch,
                parent_pid=parent_pid if parent_pid in self.live else None)
            live.cgroup = prepared.cgroup
            live.pool_leftover = prepared.pool_leftover
            with contextlib.closing(prepared):  # the binds' descriptors, once sent
                self._zygote().spawn(pid, {
                    "pid": pid,
                    "token": live.token.hex(),
                    "endpoint": self.paths.broker_endpoint,
                    "scratch": str(live.scratch),
                    "log": str(live.log_path),
                    "title": f"agentlibos: {pid} {image.name}",
                    "profile": prepared.profile,
                    "pool": prepared.pool,  # a pooled process may take it (docs/sandbox.md)
                    "pool_cgroup": prepared.pool_cgroup,  # which one, when the pool has cgroups
                    **prepared.assignment(),  # what the descriptors sent with it are
                }, fds=prepared.fds)
        except Exception as e:  # noqa: BLE001 - whatever it was, the process ends (no row
            # left `created` for good); an unexpected kind is named in its start error
            live.start_error = str(e) if isinstance(e, LibOSError) else f"{type(e).__name__}: {e}"
            self.finalize(pid, None)
            return
        wall = eff_limits.wall_limit_s
        live.stretch_start = time.monotonic()
        if wall is not None:  # what its earlier stretches left of it (a resume's)
            left = max(0.0, wall - live.wall_used)
            live.deadline = live.stretch_start + left
            live.timers.append(self.loop.call_later(left, lambda: self.terminate(
                pid, "wall", f"ran longer than its wall-clock limit of {wall:g} s")))
        live.timers.append(self.loop.call_later(self.config.start_timeout_s,
                                                lambda: self._start_timeout(pid)))

    def _budget(self, parent: Caller | None) -> ParentBudget | None:
        if parent is None or parent.pid not in self.live:
            return None
        lv = self.live[parent.pid]
        left = None if lv.deadline is None else max(0.0, lv.deadline - time.monotonic())
        return ParentBudget(Limits.from_json(lv.limits), wall_left_s=left)

    def _start_timeout(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is not None and not live.ready:
            live.start_error = f"no first syscall within {self.config.start_timeout_s:g} s"
            self.terminate(pid, "crashed", live.start_error, grace_s=0)

    def mark_ready(self, pid: int) -> None:
        live = self.live[pid]
        if not live.ready:
            live.ready = True
            # A pooled one may answer before the zygote's "spawned" is read: its start too.
            now = time.time()
            first = {} if live.started else {"started_at": now}
            live.started = True
            self.store.update_process(pid, state="running", ready_at=now, **first)
            self.sandbox.on_ready(pid, self.loop.call_later)  # its parent's spare cgroup

    # ---------------------------------------------------------------- the zygote's news

    def on_zygote_event(self, ev: ZygoteEvent) -> None:
        """``spawned`` / ``spawn-failed`` / ``exited`` for an AgentProcess; ``pool-ready``
        and ``pool-gone`` for the warm pool's cgroups."""
        if ev.op in ("pool-ready", "pool-gone"):
            name = str(ev.msg.get("cgroup"))
            if ev.op == "pool-ready":
                self.sandbox.on_pool_ready(name)
            else:
                self.sandbox.on_pool_gone(name)
        elif ev.op == "spawned":
            pid = int(ev.msg["pid"])
            pidfd, report_fd, log_fd = ev.fds
            live = self.live.get(pid)
            if live is None:  # ended while the fork was in flight
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                for fd in ev.fds:
                    os.close(fd)
                return
            live.host_pid = int(ev.msg["host_pid"])
            live.pidfd = pidfd
            live.report_fd = report_fd
            os.set_blocking(report_fd, False)
            self.loop.add_reader(report_fd, lambda _ev: self._on_report(pid))
            live.log = LogSink(log_fd, live.log_path, self.config.log_max_bytes)
            self.loop.add_reader(log_fd, lambda _ev: self._on_log(pid))
            now = time.time()
            first = {} if live.started else {"started_at": now}
            live.started = True
            self.store.update_process(pid, host_pid=live.host_pid, stretch_at=now,
                                      wall_used=live.wall_used, **first)
            if live.kill_reason is not None:  # killed before it existed
                self._signal(live, signal.SIGKILL)
            return
        if ev.op == "spawn-failed":
            pid = int(ev.msg["pid"])
            if pid in self.live:
                self.live[pid].start_error = str(ev.msg.get("error"))
                self.finalize(pid, None)
        elif ev.op == "exited":
            exited = ev.msg.get("pid")
            if isinstance(exited, int) and exited in self.live:
                self.finalize(exited, int(ev.msg["status"]))
        for fd in ev.fds:
            os.close(fd)

    def on_zygote_lost(self) -> None:
        for pid in list(self.live):
            live = self.live[pid]
            live.kill_reason = live.kill_reason or "crashed"
            live.kill_detail = "the zygote died (every agent it forked dies with it)"
            live.accident = live.kill_reason == "crashed"
            self.finalize(pid, None)

    def _on_report(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is None or live.report_fd is None:
            return
        try:
            data = os.read(live.report_fd, 65536)
        except BlockingIOError:
            return
        self._close_report(live)
        if not data:
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

    def _on_log(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is not None and live.log is not None and not live.log.on_readable():
            self._close_log(live)

    def _close_log(self, live: LiveProcess) -> None:
        if live.log is not None:
            if live.log.fd is not None:
                self.loop.remove_reader(live.log.fd)
            live.log.drain()
            live.log.close()

    def _close_report(self, live: LiveProcess) -> None:
        fd, live.report_fd = live.report_fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---------------------------------------------------------------- stopping

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
        for child in self.live_children(pid):
            self.terminate(child, "killed", f"its ancestor {pid} was stopped", grace_s=grace)
        if live.evicted:  # no host process to stop: it ends now
            self.finalize(pid, None)
            return
        if live.host_pid is None:
            return  # the spawned event will kill it
        if grace > 0:
            self._signal(live, signal.SIGTERM)
            live.timers.append(self.loop.call_later(grace, lambda: self._escalate(pid)))
        else:
            self._signal(live, signal.SIGKILL)

    def kill_host(self, live: LiveProcess) -> None:
        """SIGKILL the host process (and everything in its cgroup); its table entry stays
        until the zygote reports the exit."""
        self._signal(live, signal.SIGKILL)

    def _escalate(self, pid: int) -> None:
        live = self.live.get(pid)
        if live is not None:
            self._signal(live, signal.SIGKILL)

    def _release_host(self, pid: int, live: LiveProcess) -> None:
        """Its host process is gone: close what belonged to it (not its waits)."""
        for t in live.timers:
            t.cancel()
        live.timers.clear()
        if live.report_fd is not None:
            self.live[pid] = live  # a last report may still be in the pipe
            self._on_report(pid)
            self.live.pop(pid, None)
        if live.pidfd is not None:
            os.close(live.pidfd)
            live.pidfd = None
        self._close_log(live)
        live.log = None

    def _host_gone(self, pid: int, live: LiveProcess) -> None:
        """After an eviction or an accident it will be resumed from: keep it in the
        table with its waits, without a host process."""
        self.release_cgroup(pid, live.cgroup)
        self.release_cgroup(pid, live.pool_leftover)
        live.cgroup = live.pool_leftover = None
        self.sandbox.forget(pid)
        discard_tree(live.scratch)
        live.host_pid, live.ready, live.evicting = None, False, False
        self.set_evicted(live, True)
        live.exit_status = live.kill_reason = live.kill_detail = live.start_error = None
        live.accident = False
        self.live[pid] = live
        if live.stretch_start is not None:
            live.wall_used += time.monotonic() - live.stretch_start
            live.stretch_start = None
        self.store.update_process(pid, host_pid=None, evicted=1, wall_used=live.wall_used,
                                  stretch_at=None)

    def finalize(self, pid: int, status: int | None) -> None:
        """Record how ``pid`` ended, wake its waiters, stop its children, clean up.

        Two exceptions (docs/durability.md): an eviction's end keeps the process, waiting
        with no host process; an accident (a crash nobody asked for) is handed to
        ``on_accident``, which may resume it instead of recording an end."""
        live = self.live.pop(pid)
        if live.evicted:
            self.evicted_count -= 1  # leaves the table (set again if it stays)
            live.evicted = False
        self._release_host(pid, live)
        if live.evicting and live.kill_reason is None:
            self._host_gone(pid, live)
            return
        for t in live.wait_timers:
            t.cancel()
        accident = (live.kill_reason is None and live.exit_status is None
                    and live.start_error is None and live.ready) or live.accident
        reason, error = why_ended(live, status)
        oom, pids_hit, usage = self.sandbox.verdict(live.cgroup)
        if reason in ("crashed", "error", "killed") and oom:
            mib = (live.limits.get("memory_max_bytes") or 0) / (1 << 20)
            reason, error = "memory", (
                f"killed by the kernel for exceeding its memory limit of {mib:g} MiB")
        elif reason in ("crashed", "error") and pids_hit:
            reason, error = "pids", (f"stopped at its limit of {live.limits.get('pids_max')} "
                                     f"processes ({error})")
        if reason == "crashed" and accident and self.on_accident is not None \
                and self.on_accident(pid, live, error):
            self._host_gone(pid, live)
            return
        record_end(self.store, pid, reason, error, status=status, usage=usage,
                   pids_limit_hit=pids_hit,
                   result=live.exit_result if reason == "returned" else None)
        self.release_cgroup(pid, live.cgroup)
        self.release_cgroup(pid, live.pool_leftover)
        self.sandbox.forget(pid)
        discard_tree(live.scratch)
        for hook in self.ended:
            hook(pid)
        record = self.store.get_process(pid).public()
        for w in live.waiters:
            w.resolve(record)
        for child in self.live_children(pid):
            self.terminate(child, "killed", f"its parent {pid} ended")
        for hook2 in self.ended_record:
            hook2(pid, record)

    def release_cgroup(self, pid: int, cgroup: Any, attempt: int = 0) -> None:
        """Kill what is left in the cgroup and remove it, retrying without blocking the
        loop while the kernel finishes tearing exited tasks down."""
        if cgroup is None:
            return
        try:
            cgroup.kill()
            cgroup.remove(timeout_s=0)
            self._unreleased.pop((pid, cgroup.name), None)
        except (SandboxError, OSError) as e:
            self._unreleased[(pid, cgroup.name)] = cgroup
            if attempt < 50:
                self.loop.call_later(0.05 * (attempt + 1),
                                     lambda: self.release_cgroup(pid, cgroup, attempt + 1))
            else:
                log.error("cannot remove the cgroup of process %d: %s", pid, e)
                self.store.append_audit(pid, "proc.cleanup", f"proc:{pid}", "error",
                                        {"reason": f"cgroup not removed: {e}"})

    def release_all_cgroups(self) -> None:
        """At stop, when retry timers will not run again: remove what is left, blocking."""
        for (pid, _name), cgroup in list(self._unreleased.items()):
            try:
                cgroup.kill()
                cgroup.remove(timeout_s=2.0)
            except (SandboxError, OSError) as e:
                log.error("cannot remove the cgroup of process %d: %s", pid, e)

    def close_reports(self) -> None:
        for live in self.live.values():
            self._close_report(live)
            self._close_log(live)

