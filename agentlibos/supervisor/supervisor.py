"""The supervisor: wires the loop, the store, the process table, the broker and the rest.

It holds no logic of its own. One thread, one loop (``loop.py``) where every owner
registers its fds and timers; each turn runs inside one store batch and the replies go
out after the commit, so no agent sees an answer that is not on disk.

The rooms, each family's service named in docs/architecture.md: loop.py, processes.py (the
table), a service per syscall family, waits.py, workers.py + jit.py, offloop.py, control/."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from agentlibos.broker.authz import Authz
from agentlibos.broker.dispatch import Dispatcher
from agentlibos.broker.flow import ByteRate
from agentlibos.broker.journal import StoreJournal
from agentlibos.broker.server import Broker
from agentlibos.config import Paths, SupervisorConfig, operator_config
from agentlibos.kernel.policy import BUILTIN_POLICY, Policy
from agentlibos.providers.base import Providers
from agentlibos.providers.registry import build_providers
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import Store, open_store
from agentlibos.supervisor import control
from agentlibos.supervisor.approvals import Approvals
from agentlibos.supervisor.durable import Durable
from agentlibos.supervisor.events import Clock, Events
from agentlibos.supervisor.image_calls import ImageCalls
from agentlibos.supervisor.images import Images
from agentlibos.supervisor.jit import JitManager
from agentlibos.supervisor.lock import lock_home
from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.models import Models
from agentlibos.supervisor.net import Net
from agentlibos.supervisor.offloop import OffLoop
from agentlibos.supervisor.process_calls import ProcessCalls
from agentlibos.supervisor.processes import LiveProcess, ProcessTable
from agentlibos.supervisor.recovery import clean_after
from agentlibos.supervisor.sandbox_shell import SandboxShell
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.services import wire_syscalls
from agentlibos.supervisor.shell import ShellRunner
from agentlibos.supervisor.tools import ToolCalls
from agentlibos.supervisor.waits import Waits
from agentlibos.supervisor.workers import Workers, is_worker_id
from agentlibos.supervisor.zygote_client import ZygoteEvent, ZygoteHandle, start_zygote

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 30.0
REFUSAL_SUMMARY_S = 5.0


class Supervisor:
    def __init__(self, paths: Paths, config: SupervisorConfig | None = None, *,
                 mode: str = "embedded", sandbox: SandboxConfig | None = None,
                 providers: Providers | None = None, policy: Policy | None = None) -> None:
        self.paths = paths
        # Not given: $AGENTLIBOS_HOME/config.toml if it exists, else defaults (all layers on).
        operator = operator_config(paths)
        self.config, sandbox = config or operator.supervisor, sandbox or operator.sandbox
        # Read by the supervisor only, never handed to a sandbox (docs/network.md, models.md).
        self.operator = operator
        self.default_policy = policy or operator.policy or BUILTIN_POLICY  # docs/policy.md
        self.sandbox, self.mode = SandboxManager(paths, sandbox), mode
        self.providers = providers or build_providers(operator.providers)  # docs/providers.md
        self.fs = self.providers.guarded_files(paths.home)  # never the runtime's files
        self._started = False
        self.resume_tree: int | None = None  # `agentlibos resume PID`: resume this tree
        self._stop_requested = False
        self._lock_fd: int | None = None
        self.loop: Loop
        self.store: Store
        self.zygote: ZygoteHandle
        self.table: ProcessTable
        self.broker: Broker
        self._ctx: zmq.Context[zmq.Socket[bytes]]

    # ---------------------------------------------------------------- start and stop
    def start(self) -> None:
        self.paths.ensure()
        self._lock_fd = lock_home(self.paths)
        self.loop = Loop(busy_poll_us=self.config.busy_poll_us)
        self.loop.stopping = self._stop_requested
        try:
            self.store = open_store(self.paths.db)
            clean_after(self.paths)
            self.sandbox.start()
            # The zygote is a fresh interpreter, started before this process creates its
            # ZeroMQ context, so nothing it forks has ever seen an I/O thread.
            self.zygote = start_zygote(self.paths, self.sandbox, self.config, pool=False)
            self._ctx = zmq.Context(io_threads=1)
            self._wire()  # binds the broker's socket, which the pool's template names
            self.zygote.send_pool(self.sandbox.pool_template(self.config.pool_size))
            with self.journal.turn():  # what the last supervisor left (docs/durability.md)
                self.durable.recover(self.mode != "embedded", self.resume_tree)
        except BaseException:
            self.loop.close()
            self._unlock()
            raise
        self._started = True
        self.loop.call_later(HOUSEKEEPING_S, self._housekeeping)
        self.loop.call_later(REFUSAL_SUMMARY_S, self._summarize_refusals)

    def _summarize_refusals(self) -> None:
        self.broker.summarize_refusals()
        self.loop.call_later(REFUSAL_SUMMARY_S, self._summarize_refusals)

    def _wire(self) -> None:
        store, loop = self.store, self.loop
        self.journal = journal = StoreJournal(store, self.sandbox.config.tree_quota.journal_bytes)
        loop.set_turn_context(journal.loop_turn, idle=journal.commit_deferred)  # store.md
        loop.on_error = self._on_loop_error
        self.table = table = ProcessTable(self.paths, self.config, store, loop, self.sandbox,
                                          lambda: self.zygote)
        authz = Authz(store)
        self.waits = waits = Waits(table, loop)
        self.processes = ProcessCalls(table, Images(store), authz, self.fs, waits,
                                      self.default_policy)
        self.dispatcher = dispatcher = Dispatcher(
            store.savepoint, journal=journal,
            on_internal_error=lambda c, call, e: self._on_loop_error(call, e, c.pid, call),
            on_refused=authz.refused)
        table.ended.append(dispatcher.forget)
        self.durable = Durable(table, store, loop, dispatcher, journal, waits,  # durability.md
                               evict_after_s=self.operator.evict_after_s,
                               tree_quota=self.sandbox.config.tree_quota)
        self.workers = workers = Workers(self.sandbox, lambda: self.zygote, table)
        self.jit = JitManager(self.paths, store, loop, self.sandbox, workers, dispatcher,
                              max_per_tree=self.config.max_helpers_per_tree,
                              pool_size=self.operator.jit_pool_size)
        table.ended.append(self.jit.end_process)
        self.approvals = Approvals(store, table, waits, loop, self.operator.approvals_timeout_s,
                                   self.providers.human)
        self.events, self.offloop, op = Events(store, waits, loop), OffLoop(loop), self.operator
        self.net = Net(authz, waits, loop, self.offloop, self.providers.http, op.secrets,
                       store=store)
        self.models = Models(op.models, store, self.offloop, waits, lambda root: (
            table.live[root].caller.image if root in table.live else None),
            default_limit=op.default_tokens, injected=self.providers.models)
        self.file_io, rate = OffLoop(loop, max_workers=2), ByteRate()  # large reads' own pool
        table.ended += [self.approvals.process_ended, self.events.process_ended, rate.forget]
        wire_syscalls(dispatcher, authz=authz, fs=self.fs, file_io=self.file_io, loop=loop,
                      rate=rate, store=store, object_quota=self.config.object_quota,
                      durable=self.durable,
                      tree_quota=self.sandbox.config.tree_quota, processes=self.processes,
                      tools=ToolCalls(table, self.jit, waits, store), approvals=self.approvals,
                      events=self.events, clock=Clock(waits, loop, self.providers.clock),
                      shell=ShellRunner(self.paths, store, waits, table, self.providers.shell
                                        or SandboxShell(self.paths, loop, self.sandbox, workers)),
                      net=self.net, models=self.models,
                      images=ImageCalls(store, self.offloop, waits, self.paths.images,
                                        self.sandbox.config, table.live.__contains__))
        self.broker = Broker(self.paths.broker_endpoint, table, dispatcher)
        journal.before_commit = self.broker.flush_reads  # docs/store.md: early replies
        os.chmod(self.paths.broker_socket, 0o666)  # noqa: S103 - reached only via run/ (0700) or a bind
        self.control = control.ControlServer(self._ctx, self.paths.control_endpoint)
        self.control_ctx = control.ControlContext(
            self.paths, self.mode, store, table, self.processes, self.request_stop,
            self.approvals, self.events, self.durable)
        table.ended_record.append(self.control_ctx.process_ended)
        journal.may_defer = lambda: not (self.broker.outbox or self.control.outbox)
        loop.add_reader(self.broker.fileno(), self._on_broker, pending=self.broker.pending)
        loop.add_reader(self.control.sock, lambda _ev: self.control.drain(self._on_control))
        loop.add_reader(self.zygote.fileno(), self._on_zygote)
        loop.after_turn(self._flush_broker)
        loop.after_turn(self.control.flush)

    def _on_broker(self, events: int) -> None:
        if self.broker.drain() and not self.offloop.in_flight:  # spinning would hold the
            self.loop.mark_busy(self.broker.has_input)  # GIL its workers need

    def _flush_broker(self) -> None:
        self.broker.flush()
        if self.broker.backlogged:  # come back soon to send what did not fit
            self.loop.call_later(0.002, lambda: None)

    def _on_control(self, req: dict[str, Any], respond: control.Responder) -> None:
        control.handle(self.control_ctx, req, respond)

    def _on_zygote(self, events: int) -> None:
        for ev in self.zygote.receive():
            self._on_zygote_event(ev)

    def _on_zygote_event(self, ev: ZygoteEvent) -> None:
        if ev.op == "eof":
            self._on_zygote_lost()
        elif is_worker_id(ev.msg.get("pid")):
            self.workers.on_zygote_event(ev)
        else:
            self.table.on_zygote_event(ev)

    def _on_zygote_lost(self) -> None:
        log.error("the zygote died; restarting it")
        self.table.on_zygote_lost()
        self.loop.remove_reader(self.zygote.fileno())
        with contextlib.suppress(OSError):
            self.zygote.close(timeout_s=1)
        self.zygote = start_zygote(self.paths, self.sandbox, self.config)
        self.loop.add_reader(self.zygote.fileno(), self._on_zygote)

    def _on_loop_error(self, what: str, exc: BaseException, pid: int | None = None,
                       call: str = "supervisor.error") -> None:
        self.store.append_audit(pid, call, what, "error",
                                {"exception": f"{type(exc).__name__}: {exc}"})

    def _housekeeping(self) -> None:
        """Every 30 s: end JIT tool processes idle longer than the operator allows."""
        self.jit.reap_idle()
        self.loop.call_later(HOUSEKEEPING_S, self._housekeeping)

    def stop(self) -> None:
        """Kill every live process, wait for their ends to be recorded, release all."""
        if not self._started:
            return
        self._started = False
        # A daemon's processes outlive it (evicted: the next `serve` resumes them); an
        # embedded supervisor's end with the run that started them.
        keep = self.mode != "embedded"
        self.durable.stop_all(keep)
        events = self.zygote.close()
        with self.journal.turn():
            self.broker.summarize_refusals()
            for ev in events:
                self._on_zygote_event(ev)
            for pid in [p for p, lv in self.table.live.items() if not (keep and lv.evicted)]:
                self.table.finalize(pid, None)  # never reported: the zygote was gone
        self.broker.flush()
        self.control.flush()
        self.table.close_reports()
        self.table.release_all_cgroups()
        for part in (self.broker, self.control, self.offloop, self.file_io, self.net,
                     self.models, self.loop):
            part.close()
        self._ctx.term()
        self.sandbox.stop()
        self.store.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- driving it
    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler, before start too)."""
        self._stop_requested = True
        if self._started:
            self.loop.stopping = True
            self.loop.wake()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def step(self, timeout_s: float = 1.0) -> None:
        self.loop.run_once(timeout_s, settle=True)

    def run_until(self, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Step until ``done()`` or a stop is requested; False on timeout."""
        return self.loop.run_until(done, timeout_s)

    def settle(self, timeout_s: float) -> bool:
        """Step until no process is live, even after a stop request (to record kills)."""
        deadline = time.monotonic() + timeout_s
        while self.table.live and time.monotonic() < deadline:
            self.step(min(0.5, max(0.0, deadline - time.monotonic())))
        return not self.table.live

    # ---------------------------------------------------------------- conveniences
    @property
    def live(self) -> dict[int, LiveProcess]:
        return self.table.live

    def submit_run(self, image_ref: str, args: dict[str, Any], *, cwd: str | None = None,
                   policy: Policy | None = None, ask: str = "queue") -> int:
        return self.processes.submit_run(image_ref, args, cwd=cwd, policy=policy, ask=ask)

    def tree_live(self, root_pid: int) -> bool:
        return self.table.tree_live(root_pid)

    def terminate(self, pid: int, reason: str, detail: str, *, grace_s: float | None = None
                  ) -> None:
        self.table.terminate(pid, reason, detail, grace_s=grace_s)
