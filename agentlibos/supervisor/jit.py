"""JIT tools: a warm Deno process per (AgentProcess, tool), spoken to over its stdio.

Long because it is one state machine -- starting, checking, calling, streaming,
killing a worker -- whose transitions must be read together to see that no call is
left unanswered and no process left running.

Each worker is a sandboxed helper process (``workers.py``) forked by the zygote with the
agents' sandbox (its own cgroup, namespaces,
Landlock, the "deno" seccomp variant) and execs Deno with no permissions. The supervisor
is the worker's only peer: it writes calls to its stdin and reads, from its stdout,
syscall requests (run as the calling AgentProcess, narrowed to the tool's capabilities,
audited with the tool's name), results and errors. Everything is non-blocking and runs
on the supervisor's one loop: a tool that stops reading or writes garbage cannot stall
anything but itself.

A few workers are started ahead of need, in the tool sandbox without any tool in it
(``jit_pool.py``, docs/jit.md "The pool"); a first call takes one, if its tool may be
pooled, and gives it the tool's checked text: one (process, tool), then it ends.

A worker serves one call at a time; calls queue. A call that runs past its time limit,
a worker that dies (an exception escaping the runner, the OOM killer), output that is
not the protocol -- each ends the worker (its whole cgroup is killed) and gives the
agent a typed error; the next call starts a fresh worker.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import zmq

from agentlibos.broker.dispatch import Dispatcher
from agentlibos.broker.syscalls import Caller, Pending, Reply, lookup
from agentlibos.config import DEFAULT_JIT_POOL_SIZE, Paths
from agentlibos.errors import (
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    SandboxError,
    Timeout,
    ToolError,
    Unavailable,
    from_wire,
    to_wire,
)
from agentlibos.jit import deno
from agentlibos.kernel.caps import attenuate, parse_cap
from agentlibos.kernel.schema import validate
from agentlibos.protocol.wire import check_args
from agentlibos.providers.fs import discard_tree
from agentlibos.store import Store
from agentlibos.supervisor import jit_pool
from agentlibos.supervisor.exits import describe_status, log_tail
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.supervisor.workers import Workers
from agentlibos.zygote.child import parse_report

log = logging.getLogger(__name__)

MAX_LINE: Final = 48 << 20  # one protocol message, base64 blobs included
MAX_RESULT_BYTES: Final = 1 << 20
READ_CHUNK: Final = 1 << 20
# A tool's own syscalls are flow-controlled as an agent's are (broker/flow.py): at most
# this many in flight, and none taken while this much of its replies waits unread in
# its stdin; meanwhile its stdout is not read, so a flood waits in its own pipe.
TOOL_IN_FLIGHT: Final = 4
TOOL_UNREAD_BYTES: Final = 1 << 20
START_TIMEOUT_S: Final = 30.0
# What V8 writes when a tool's heap reaches --max-old-space-size, before it traps.
V8_OUT_OF_MEMORY: Final = "Fatal JavaScript out of memory"


@dataclass(frozen=True)
class ToolDef:
    """A JIT tool as the manager runs it."""

    name: str
    path: str  # the .ts module (absolute)
    # Narrow the caller's capabilities to these (None: don't; empty: to nothing).
    caps: tuple[str, ...] | None = None
    schema: dict[str, Any] | None = None
    timeout_s: float | None = None
    version: str = ""  # changes when a registered tool is replaced


@dataclass
class Call:
    args: dict[str, Any]
    pending: Pending
    caller: Caller  # the calling process, narrowed to the tool's capabilities
    held: object = None  # the process's capabilities ``caller`` was narrowed from
    started: float = 0.0
    deadline: float = 0.0  # monotonic; past it, the worker is killed (_check_deadline)


@dataclass(eq=False)  # identity: a worker is one process, whatever its fields
class Worker:
    wid: int  # negative: the zygote's id space for non-agents
    pid: int  # the AgentProcess it belongs to
    tool: ToolDef
    scratch: Path
    log_path: Path
    cgroup: Any = None
    host_pid: int | None = None
    pidfd: int | None = None
    stdin: int | None = None
    stdout: int | None = None
    report: int | None = None
    state: str = "starting"  # starting | ready | busy | dead
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    current: Call | None = None
    queue: deque[Call] = field(default_factory=deque)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    start_timer: Timer | None = None
    # One timer per worker for its calls' time limits, re-armed when it fires rather than
    # made and cancelled for every call (a warm call is well under a millisecond).
    call_timer: Timer | None = None
    calls: int = 0
    error: LibOSError | None = None  # why it is being killed, for its queued calls
    # A type check ("check") rather than a tool runner ("run"): its stdout is ignored and
    # on_exit gets the exit status. "pooled": started ahead, no tool yet (pid 0).
    kind: str = "run"
    contain: dict[str, Any] | None = None  # a pooled worker's start report, until assigned
    from_pool: bool = False  # started ahead, then assigned (or still waiting)
    syscalls: int = 0  # its own syscalls in flight (TOOL_IN_FLIGHT)
    paused: bool = False  # stdout not read: at its bounds (_busy)
    # Its load was sent and its first call right behind it; its "ready" is still to come.
    loading: bool = False
    root: int = 0  # the process tree it counts against
    on_exit: Callable[[int], None] | None = None


class JitManager:
    def __init__(self, paths: Paths, store: Store, loop: Loop, sandbox: SandboxManager,
                 workers: Workers, dispatcher: Dispatcher, *, max_per_tree: int = 8,
                 pool_size: int = DEFAULT_JIT_POOL_SIZE) -> None:
        self.paths = paths
        self.max_per_tree = max_per_tree
        self.store = store
        self.loop = loop
        self.sandbox = sandbox
        self.helpers = workers
        self.dispatcher = dispatcher
        self.workers: dict[tuple[int, str], Worker] = {}
        self.by_wid: dict[int, Worker] = {}
        self.fds: dict[int, Worker] = {}
        self.dir = paths.home / "jit"
        # Image tools that passed `deno check`, by sha256, for this supervisor's life;
        # the checks in flight, by sha256, with the calls waiting on each.
        self.checked: set[str] = set()
        self.checking: dict[str, list[Callable[[str | None], None]]] = {}
        # The pool: workers started ahead, none assigned (each is also in by_wid). It is
        # filled from the first use of a tool and emptied after [jit] idle without one.
        self.pool_size = pool_size
        self.pool: list[Worker] = []
        self.pool_active = False
        self._pool_failures = 0
        # Pooled workers that could not be moved into their caller's cgroup, in a row (a
        # delegated, unprivileged host may refuse it): past MAX_FAILURES, no more pool.
        self._move_failures = 0
        self._refill: Timer | None = None
        self._last_use = time.monotonic()

    # ------------------------------------------------------------------ calling a tool

    def call(self, caller: Caller, tool: ToolDef, args: dict[str, Any]) -> Pending:
        if tool.schema is not None:
            validate(args, tool.schema, f"{tool.name}(args)")
        self._use_pool()
        key = (caller.pid, tool.name)
        w = self.workers.get(key)
        # A live worker of this tool loaded what was checked when it started; hashing
        # the file again on every warm call would change nothing it runs.
        if (tool.version == "image" and (w is None or w.state == "dead")
                and (first := self._check_first(caller, tool, args))):
            return first  # a tool of the image's [tools] (ToolCalls.find), not checked yet
        if w is not None and w.tool.version != tool.version:
            self.kill(w, ToolError(f"tool {tool.name} was replaced"))
            w = None
        if w is not None and w.state == "dead":  # being killed: the next call starts anew
            self.workers.pop(key, None)
            w = None
        if w is None:
            self._make_room(caller.root_pid)
            w = self._start_pooled(caller.pid, tool) or self._start(caller.pid, tool)
            w.root = caller.root_pid
        pending = Pending(caller.pid)
        w.queue.append(Call(args, pending, self._as_tool(w, caller), caller.caps))
        self._next(w)
        return pending

    def _make_room(self, root: int) -> None:
        """A tree holds at most ``max_helpers_per_tree`` live tool processes (each is a
        Deno of its own): the least recently used idle one goes; if none is idle, the
        call is refused rather than the tree growing past its bound."""
        mine = [w for w in self.by_wid.values()
                if w.root == root and w.kind == "run" and w.state != "dead"]
        if len(mine) < self.max_per_tree:
            return
        idle = [w for w in mine if w.state == "ready" and not w.queue]
        if not idle:
            raise LimitExceeded(f"tool.call: this process tree already runs {len(mine)} "
                                f"tool processes (limit {self.max_per_tree}), all busy")
        lru = min(idle, key=lambda w: w.last_used)
        self.kill(lru, ToolError(f"tool {lru.tool.name} was stopped to make room "
                                 f"(at most {self.max_per_tree} tool processes per tree)"))

    def _check_first(self, caller: Caller, tool: ToolDef,
                     args: dict[str, Any]) -> Pending | None:
        """An image tool's first call (per content) waits for the sandboxed check jit.register
        makes, run once for all callers as the supervisor's (pid 0), in no agent's cgroup: a
        128 MiB agent cannot hold `deno check`. A pass is kept; a failure fails the call."""
        try:
            digest = hashlib.sha256(Path(tool.path).read_bytes()).hexdigest()
        except OSError as e:
            raise ToolError(f"tool {tool.name}: cannot read it: {e.strerror}") from None
        if digest in self.checked:
            return None
        pending, mine = Pending(caller.pid), self.tool_dir(caller.pid, tool.name)
        as_checked = replace(tool, name=f"{tool.name}.{digest[:12]}")

        def proceed(failure: str | None) -> None:
            if failure is not None:
                pending.reject(InvalidArgument(
                    f"tool.call: {tool.name!r} does not pass `deno check`:\n{failure}"))
            elif not pending.done and mine.is_dir():  # gone: the caller ended meanwhile
                try:
                    self.call(caller, tool, args).bind(lambda out: pending.reject(out) if
                        isinstance(out, LibOSError) else pending.resolve(out.result, out.blobs))
                except LibOSError as e:
                    pending.reject(e)

        def done(ok: bool, output: str) -> None:
            self.checked.update([digest] if ok else [])  # a failure may be the checker's
            self.store.append_audit(caller.pid, "jit.check", f"jit:invoke:{tool.name}", "info"
                                    if ok else "deny", {"sha256": digest, "compiler": output})
            discard_tree(self.dir / "0" / as_checked.name)
            for then in self.checking.pop(digest, []):
                then(None if ok else output)

        if digest not in self.checking:
            self.check(0, as_checked, done)  # raises before anything waits on it
        self.checking.setdefault(digest, []).append(proceed)
        return pending

    def _next(self, w: Worker) -> None:
        if w.state != "ready" or w.current is not None or not w.queue:
            return
        call = w.queue.popleft()
        w.current = call
        w.state = "busy"
        w.calls += 1
        call.started = time.monotonic()
        call.deadline = call.started + self._call_limit(w)
        if w.call_timer is None:
            w.call_timer = self.loop.call_later(call.deadline - call.started,
                                                lambda: self._check_deadline(w))
        self._send(w, {"op": "call", "id": w.calls, "args": call.args})

    def _call_limit(self, w: Worker) -> float:
        return w.tool.timeout_s or self.sandbox.config.tool_timeout_s

    def _check_deadline(self, w: Worker) -> None:
        """The worker's call timer fired: kill it if its current call is past its time
        limit, else wait until that call's own deadline (it started after the timer)."""
        w.call_timer = None
        call = w.current
        if w.state == "dead" or call is None:
            return
        now = time.monotonic()
        if now >= call.deadline:
            self.kill(w, Timeout(f"tool {w.tool.name} did not return within "
                                 f"{self._call_limit(w):g} s; its process was killed"))
        else:
            w.call_timer = self.loop.call_later(call.deadline - now,
                                                lambda: self._check_deadline(w))

    # -------------------------------------------------------------- starting a worker

    def tool_dir(self, pid: int, name: str) -> Path:
        d = self.dir / str(pid) / name
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # noqa: S103 - read by the tool's uid through a read-only bind
        return d

    def _launch(self, w: Worker, argv_for: Callable[[str], list[str]],
                read_only: tuple[str, ...]) -> None:
        """Fork ``w`` through the zygote, sandboxed, exec'ing Deno."""
        self.by_wid[w.wid] = w
        try:
            w.cgroup = self.helpers.launch(
                w.wid, self, for_pid=w.pid, argv=argv_for(self.sandbox.deno.exe),
                env=self._env(w.scratch), scratch=w.scratch, log_path=w.log_path,
                read_only=read_only)
        except LibOSError as e:
            self._drop(w, e)
            raise
        w.start_timer = self.loop.call_later(START_TIMEOUT_S, lambda: self._start_timeout(w))

    def _new(self, pid: int, tool: ToolDef, log_path: Path | None) -> Worker:
        wid = self.helpers.new_id()
        scratch = self.paths.scratch / f"t{-wid}"
        scratch.mkdir(mode=0o700)
        return Worker(wid, pid, tool, scratch,
                      log_path or self.paths.logs / f"jit-pool.{-wid}.log")

    def _start(self, pid: int, tool: ToolDef) -> Worker:
        base = self.tool_dir(pid, tool.name)
        entry = base / "entry.js"
        entry.write_text(deno.entry_source(tool.path))
        os.chmod(entry, 0o644)
        w = self._new(pid, tool, self.paths.logs / f"{pid}.{tool.name}.log")
        self.workers[(pid, tool.name)] = w
        heap = self.sandbox.config.tool_heap_mb
        self._launch(w, lambda exe: deno.run_argv(exe, str(entry), heap_mb=heap),
                     (str(deno.JIT_DIR), str(base), str(Path(tool.path).parent)))
        self.store.append_audit(pid, "jit.start", f"jit:invoke:{tool.name}", "info",
                                    {"tool": tool.name, "worker": -w.wid, "path": tool.path})
        return w

    # --------------------------------------------------------------------- the pool

    def _use_pool(self) -> None:
        """A tool is in use: fill the pool if it is not filled yet."""
        self._last_use = time.monotonic()
        if not self.pool_active and self.pool_size > 0 and self.sandbox.deno is not None:
            self.pool_active = True
            self._pool_failures = 0
            self._fill_pool()

    def _schedule_refill(self, delay_s: float = jit_pool.REFILL_DELAY_S) -> None:
        if not self.pool_active:
            return
        if self._refill is not None:
            if self._refill.when <= time.monotonic() + delay_s:
                return
            self._refill.cancel()
        self._refill = self.loop.call_later(delay_s, self._fill_pool)

    def _fill_pool(self) -> None:
        self._refill = None
        heap = self.sandbox.config.tool_heap_mb
        while (self.pool_active and len(self.pool) < self.pool_size
               and self._pool_failures < jit_pool.MAX_FAILURES
               and self._move_failures < jit_pool.MAX_FAILURES):
            w = self._new(0, ToolDef(name="(pool)", path=""), None)
            w.kind, w.from_pool = "pooled", True
            try:
                # Its tree: Deno and this package's jit/ directory; no tool's directory.
                self._launch(w, lambda exe: deno.pool_argv(exe, heap_mb=heap),
                             (str(deno.JIT_DIR),))
            except LibOSError as e:
                self._pool_failures += 1
                log.warning("jit: cannot start a pooled worker: %s", e)
                return
            self.pool.append(w)

    def drain_pool(self) -> None:
        """End every pooled worker and stop refilling (until a tool is used again)."""
        self.pool_active = False
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        for w in list(self.pool):
            self.kill(w, ToolError("the pool was drained"))

    def _digest_ok(self, tool: ToolDef) -> Callable[[str], bool]:
        """What text of ``tool`` passed `deno check`: an image tool's, by content
        (``checked``); a registered tool's, the one its version names (its digest)."""
        if tool.version == "image":
            return self.checked.__contains__
        version = tool.version
        if len(version) != 16 or not all(c in "0123456789abcdef" for c in version):
            return lambda _digest: False
        return lambda digest: digest[:16] == version

    def _start_pooled(self, pid: int, tool: ToolDef) -> Worker | None:
        """Give ``tool`` of process ``pid`` a ready pooled worker, or None (cold path):
        none ready, the tool not poolable, or its cgroup cannot be moved."""
        w = next((p for p in self.pool if p.state == "ready" and p.host_pid is not None),
                 None)
        log_path = self.paths.logs / f"{pid}.{tool.name}.log"
        # An earlier worker's log: a cold worker appends to it, where a rename would not.
        if w is None or log_path.exists():
            return None
        source = jit_pool.read_checked(tool.path, self._digest_ok(tool))
        if source is None:
            return None
        assert w.host_pid is not None
        self.pool.remove(w)
        self._schedule_refill()
        w.pid, w.tool, w.kind, w.state = pid, tool, "run", "starting"
        w.created = w.last_used = time.monotonic()
        self.workers[(pid, tool.name)] = w
        # Loading the tool runs its top level: bounded like a cold worker's start.
        w.start_timer = self.loop.call_later(START_TIMEOUT_S, lambda: self._start_timeout(w))
        with contextlib.suppress(OSError):
            os.rename(w.log_path, log_path)  # its stderr (open) follows the inode
            w.log_path = log_path
        self.store.append_audit(pid, "jit.start", f"jit:invoke:{tool.name}", "info",
                                {"tool": tool.name, "worker": -w.wid, "path": tool.path,
                                 "pooled": True})
        if w.contain is not None:
            self._audit_contain(w, w.contain)
        if w.cgroup is None:  # no cgroups here: nothing to move
            self._load(w, source)
            return w
        host_pid, wid = w.host_pid, w.wid

        def move() -> None:
            # A thread: making the cgroup is a few mkdirs and writes, but the first move
            # after a quiet spell may wait ~10 ms for the kernel (jit_pool.move_into).
            cgroup, error = None, None
            try:
                cgroup = self.sandbox.tool_cgroup(wid, pid)
                if cgroup is not None:
                    jit_pool.check_pids_room(getattr(cgroup, "pids_dir", None), host_pid)
                    jit_pool.move_into(tuple(cgroup.procs_files), host_pid)
            except (LibOSError, OSError) as e:
                error = e
            self.loop.call_soon_threadsafe(lambda: self._adopted(w, cgroup, source, error))

        threading.Thread(target=move, name="agentlibos-jit-move", daemon=True).start()
        return w

    def _adopted(self, w: Worker, cgroup: Any, source: str,
                 error: LibOSError | OSError | None) -> None:
        """A pooled worker was moved into its caller's cgroup (or could not be): only now
        does it get its tool. What it uses from here on counts against the caller's tree,
        where its cgroup's kill reaches it."""
        if w.state == "dead":  # killed meanwhile (its process ended...)
            self.helpers.release(w.wid, cgroup)
            return
        if error is None and cgroup is None:
            error = SandboxError("cgroups: no cgroup for it")  # the pool had one: fail closed
        if error is not None:
            log.warning("jit: a pooled worker could not be moved: %s", error)
            self._move_failures += 1
            calls = list(w.queue)
            w.queue.clear()
            self.kill(w, ToolError(f"tool {w.tool.name}: {error}"))
            self.helpers.release(w.wid, cgroup)
            try:  # its calls go to a cold worker, as if there had been no pool
                cold = self._start(w.pid, w.tool)
            except LibOSError as e:
                for call in calls:
                    call.pending.reject(e)
                return
            cold.root = w.root
            cold.queue.extend(calls)
            return
        self._move_failures = 0
        if w.cgroup is not None:
            self.helpers.release(w.wid, w.cgroup)  # the pool's own, empty now
        w.cgroup = cgroup
        self._load(w, source)

    def _load(self, w: Worker, source: str) -> None:
        """Send a pooled worker its tool, and its first call right behind it: the runner
        reads them in order and serves the call once the tool is loaded (or says why
        not, which fails the call), so the call need not wait a round trip for "ready"."""
        self._send(w, {"op": "load", "source": source})
        w.state, w.loading = "ready", True
        self._next(w)

    def check(self, pid: int, tool: ToolDef, done: Callable[[bool, str], None]) -> None:
        """Type-check ``tool`` with `deno check`, sandboxed like a run (type checking
        resolves imports too); ``done(ok, compiler output)`` is called when it ends."""
        self._use_pool()  # a call usually follows: the pool fills while this runs
        base = self.tool_dir(pid, tool.name)
        entry = base / "check.ts"
        entry.write_text(deno.check_source(tool.path))
        os.chmod(entry, 0o644)
        log_path = base / "check.log"
        log_path.unlink(missing_ok=True)
        w = self._new(pid, tool, log_path)
        w.kind = "check"

        def on_exit(status: int) -> None:
            output = _clean(log_path.read_text(errors="replace") if log_path.exists() else "")
            done(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0,
                 output or describe_status(status))

        w.on_exit = on_exit
        self._launch(w, lambda exe: deno.check_argv(exe, str(entry)),
                     (str(deno.JIT_DIR), str(base), str(Path(tool.path).parent)))

    @staticmethod
    def _env(scratch: Path) -> dict[str, str]:
        return {"HOME": str(scratch), "DENO_DIR": str(scratch / "deno"), "NO_COLOR": "1",
                "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1", "TMPDIR": str(scratch)}

    def _start_timeout(self, w: Worker) -> None:
        if w.state == "starting":
            self.kill(w, ToolError(f"tool {w.tool.name} did not start within "
                                   f"{START_TIMEOUT_S:g} s"))

    def on_spawned(self, wid: int, host_pid: int, fds: list[int]) -> None:
        w = self.by_wid.get(wid)
        if w is None or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            return
        w.pidfd, w.report, w.stdin, w.stdout = fds
        w.host_pid = host_pid
        for fd in (w.report, w.stdin, w.stdout):
            os.set_blocking(fd, False)
        for fd in (w.report, w.stdout):
            self.fds[fd] = w
            self.loop.add_reader(fd, self._reader(fd))
        if w.state == "dead":
            self._signal_kill(w)

    def on_exited(self, wid: int, status: int) -> None:
        w = self.by_wid.get(wid)
        if w is None:
            return
        if w.kind == "check":
            self._drop(w, ToolError("type check finished"))
            if w.on_exit is not None:
                w.on_exit(status)
            return
        if w.stdout is not None and w.stdout in self.fds:
            self._on_stdout(w)  # whatever it said last
        oom, _, _ = self.sandbox.verdict(w.cgroup)
        if w.kind == "pooled" and w.error is None:
            self._pool_failures += 1  # it died by itself before anyone used it
        if w.error is None:
            tail = log_tail(w.log_path, 40)  # V8's message comes before its stack trace
            if oom:
                w.error = LimitExceeded(
                    f"tool {w.tool.name} ran out of memory (limit "
                    f"{(self.sandbox.config.tool_limits.memory_max_bytes or 0) / (1 << 20):g} MiB)")
            elif any(V8_OUT_OF_MEMORY in line for line in tail):
                # V8 stopped itself at its heap limit (a trap, not the kernel's OOM kill):
                # the same limit to the caller, not a crash with a C stack trace.
                w.error = LimitExceeded(
                    f"tool {w.tool.name} ran out of memory (its JavaScript heap reached "
                    f"V8's limit of {self.sandbox.config.tool_heap_mb} MiB)")
            else:
                w.error = ToolError(f"tool {w.tool.name} {describe_status(status)}: "
                                    f"{' | '.join(tail[-6:]) or '(empty log)'}")
        self._drop(w, w.error)

    def spawn_failed(self, wid: int, error: str) -> None:
        w = self.by_wid.get(wid)
        if w is not None:
            self._drop(w, Unavailable(f"tool {w.tool.name} could not start: {error}"))

    # --------------------------------------------------------------------- the pipes

    def _reader(self, fd: int) -> Callable[[int], None]:
        return lambda events: self.on_ready(fd, events)

    def on_ready(self, fd: int, events: int) -> None:
        w = self.fds.get(fd)
        if w is None:
            return
        if fd == w.report:
            self._on_report(w)
        elif fd == w.stdout and events & zmq.POLLIN:
            self._on_stdout(w)
        elif fd == w.stdin and events & zmq.POLLOUT:
            self._flush(w)

    def _on_report(self, w: Worker) -> None:
        assert w.report is not None
        try:
            data = os.read(w.report, 65536)
        except BlockingIOError:
            return
        self._close(w, "report")
        if not data:
            return
        report = parse_report(data)
        if w.kind == "pooled":
            w.contain = report  # audited for the process it is assigned to, if any
        else:
            self._audit_contain(w, report)
        if not report.get("ok"):
            w.error = Unavailable(f"tool {w.tool.name} could not be sandboxed: "
                                  f"{report.get('error')}")

    def _audit_contain(self, w: Worker, report: dict[str, Any]) -> None:
        self.store.append_audit(
            w.pid, "jit.contain", f"jit:invoke:{w.tool.name}", "info",
            {"tool": w.tool.name, "worker": -w.wid, "layers": report.get("layers"),
             "missing": report.get("missing"), "error": report.get("error"),
             "timings_ms": report.get("timings_ms"), "pooled": w.from_pool})

    def _busy(self, w: Worker) -> bool:
        return w.syscalls >= TOOL_IN_FLIGHT or len(w.outbuf) > TOOL_UNREAD_BYTES

    def _pace(self, w: Worker) -> None:
        """Read its stdout or not, as its bounds say; lines already read are handled
        first when it may go on."""
        if w.stdout is None or w.state == "dead":
            return
        if not self._busy(w) and w.paused:
            w.paused = False
            self.loop.add_reader(w.stdout, self._reader(w.stdout))
            self._lines(w)
        elif self._busy(w) and not w.paused:
            w.paused = True
            self.loop.remove_reader(w.stdout)

    def _on_stdout(self, w: Worker) -> None:
        assert w.stdout is not None
        while len(w.inbuf) <= MAX_LINE:  # a writer that never stops: lines first
            try:
                chunk = os.read(w.stdout, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._close(w, "stdout")
                break
            w.inbuf += chunk
            if len(w.inbuf) > MAX_LINE and b"\n" not in w.inbuf:
                self.kill(w, ToolError(f"tool {w.tool.name} wrote a message over "
                                       f"{MAX_LINE} bytes"))
                return
            if len(chunk) < READ_CHUNK:
                # A short read emptied the pipe: the read that would say so (EAGAIN) is
                # a syscall and an exception on every warm call. Whatever comes next
                # wakes the loop again (level-triggered poll); EOF comes as its own.
                break
        if w.kind == "check":
            w.inbuf.clear()  # `deno check` says nothing on stdout worth keeping
            return
        self._lines(w)

    def _lines(self, w: Worker) -> None:
        while w.state != "dead" and not self._busy(w):
            nl = w.inbuf.find(b"\n")
            if nl < 0:
                break
            line = bytes(w.inbuf[:nl])
            del w.inbuf[: nl + 1]
            if line.strip():
                self._message(w, line)
        self._pace(w)

    def _send(self, w: Worker, msg: dict[str, Any]) -> None:
        if w.state == "dead" or w.stdin is None:
            return
        w.outbuf += json.dumps(msg, separators=(",", ":"), default=str).encode() + b"\n"
        self._flush(w)

    def _flush(self, w: Worker) -> None:
        if w.stdin is None:
            return
        while w.outbuf:
            try:
                n = os.write(w.stdin, w.outbuf)
            except BlockingIOError:
                break
            except OSError:  # it closed its stdin: it is dying; its exit says why
                w.outbuf.clear()
                break
            del w.outbuf[:n]
        if w.paused:
            self._pace(w)
        # Wait for room only while something is waiting to be written.
        want = zmq.POLLOUT if w.outbuf else 0
        registered = w.stdin in self.fds
        if want and not registered:
            self.fds[w.stdin] = w
            self.loop.add_reader(w.stdin, self._reader(w.stdin), zmq.POLLOUT)
        elif not want and registered:
            del self.fds[w.stdin]
            self.loop.remove_reader(w.stdin)

    # --------------------------------------------------------------- the protocol

    def _message(self, w: Worker, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as e:
            self.kill(w, ToolError(f"tool {w.tool.name} wrote something that is not the "
                                   f"protocol ({e}); a tool must not write to stdout"))
            return
        op = msg.get("op")
        if op == "pooled" and w.kind == "pooled" and w.state == "starting":
            w.state = "ready"  # waiting in the pool for a tool
            self._pool_failures = 0
            if w.start_timer is not None:
                w.start_timer.cancel()
        elif op == "ready" and w.loading:
            w.loading = False  # its tool loaded; its first call may already be running
            if w.start_timer is not None:
                w.start_timer.cancel()
        elif op == "ready" and w.state == "starting" and w.kind == "run":
            w.state = "ready"
            if w.start_timer is not None:
                w.start_timer.cancel()
            self._next(w)
        elif op == "load-error":
            self.kill(w, ToolError(f"tool {w.tool.name} did not load: "
                                   f"{(msg.get('error') or {}).get('message')}"))
        elif op == "syscall" and w.current is not None:
            self._syscall(w, msg)
        elif op in ("return", "error") and w.current is not None and msg.get("id") == w.calls:
            call = w.current
            w.current = None
            w.state = "ready"
            w.last_used = time.monotonic()
            if op == "return":
                self._returned(w, call, msg.get("value"), len(line))
            else:
                call.pending.reject(self._tool_error(w, msg.get("error")))
            if w.from_pool and w.calls == 1:
                # The call that took it is answered (its reply goes out at the end of
                # this turn): replace it now, in a later turn, rather than at the delay.
                self._schedule_refill(jit_pool.REFILL_SOON_S)
            self._next(w)
        else:
            self.kill(w, ToolError(f"tool {w.tool.name} sent an unexpected {op!r} message"))

    def _returned(self, w: Worker, call: Call, value: Any, line_size: int) -> None:
        # The value is part of the line it came in: only a long line needs measuring.
        size = len(json.dumps(value)) if line_size > MAX_RESULT_BYTES else 0
        if size > MAX_RESULT_BYTES:
            call.pending.reject(LimitExceeded(
                f"tool {w.tool.name} returned {size} bytes; the limit is {MAX_RESULT_BYTES}"))
        else:
            call.pending.resolve(value)

    @staticmethod
    def _tool_error(w: Worker, err: Any) -> LibOSError:
        if not isinstance(err, dict):
            return ToolError(f"tool {w.tool.name} failed")
        if err.get("syscall"):
            # A refused syscall the tool did not catch: the agent gets the same typed
            # error the broker raised (PermissionDenied stays PermissionDenied).
            e = from_wire(err)
            e.details = {**e.details, "tool": w.tool.name}
            return e
        return ToolError(f"tool {w.tool.name} raised {err.get('type')}: {err.get('message')}",
                         tool=w.tool.name, type=err.get("type"))

    def _syscall(self, w: Worker, msg: dict[str, Any]) -> None:
        assert w.current is not None
        req_id = msg.get("id")
        name, params = msg.get("name"), msg.get("params") or {}

        w.syscalls += 1  # answered once, whichever way: answer() counts it back

        def answer(outcome: Reply | LibOSError) -> None:
            w.syscalls -= 1
            if isinstance(outcome, LibOSError):
                self._send(w, {"op": "result", "id": req_id, "ok": False,
                               "error": to_wire(outcome)})
            else:
                self._send(w, {"op": "result", "id": req_id, "ok": True,
                               "result": outcome.result,
                               "blobs": [base64.b64encode(b).decode() for b in outcome.blobs]})

        try:
            if not isinstance(name, str) or not isinstance(params, dict):
                raise InvalidArgument("a tool's syscall needs a name and an object of params")
            if not lookup(name).jit_ok:
                raise InvalidArgument(f"{name} cannot be called from a tool")
            # The tool's pipe is a door like the wire: the same refusals of non-finite
            # numbers, text that is not text and deep nesting.
            check_args(name, params)
            blobs = [base64.b64decode(b, validate=True) for b in msg.get("blobs") or []]
        except (LibOSError, ValueError, TypeError) as e:
            answer(e if isinstance(e, LibOSError) else InvalidArgument(f"bad blob: {e}"))
            return
        # The tool acts as its calling process narrowed to the tool's capabilities; its
        # calls are part of the journaled tool.call, so they carry no sequence number.
        self.dispatcher.submit(self._tool_caller(w), name, params, blobs, answer)

    def _tool_caller(self, w: Worker) -> Caller:
        """The tool's caller for its next syscall, from what its process holds *now*: a
        capability revoked while the tool runs (`caps revoke`) is gone from its next
        call, as from the process's own (a tool may run for an hour)."""
        call = w.current
        assert call is not None
        held = self.helpers.caps_of(call.caller.pid)
        if held is not None and held is not call.held:
            call.caller = self._as_tool(w, replace(call.caller, caps=held))
            call.held = held
        return call.caller

    def _as_tool(self, w: Worker, caller: Caller) -> Caller:
        """The calling process, marked as acting through this tool, with its capabilities
        narrowed to those the tool declares (never widened)."""
        caps = list(caller.caps)  # its own list: what the tool drops is never the caller's
        if w.tool.caps is None:
            return replace(caller, via_tool=w.tool.name, caps=caps)
        declared = [parse_cap(c).resolved(caller.cwd) for c in w.tool.caps]
        return replace(caller, via_tool=w.tool.name, caps=attenuate(declared, caller.caps),
                       tool_caps=tuple(str(c) for c in declared))

    # ------------------------------------------------------------------- ending them

    def kill(self, w: Worker, error: LibOSError) -> None:
        """End a worker and its whole process tree; its calls fail with ``error``."""
        if w.state == "dead":
            return
        w.error = w.error or error
        w.state = "dead"
        self._signal_kill(w)
        if w.host_pid is None:
            return  # not forked yet: on_spawned kills it, _drop fails its calls
        # The exit event finishes the job (_drop); until then no new call reaches it.
        self._unlist(w)
        self._fail_calls(w, error)

    def _unlist(self, w: Worker) -> None:
        if self.workers.get((w.pid, w.tool.name)) is w:
            del self.workers[(w.pid, w.tool.name)]

    def _fail_calls(self, w: Worker, error: LibOSError) -> None:
        if w.call_timer is not None:
            w.call_timer.cancel()
            w.call_timer = None
        for call in [c for c in (w.current, *w.queue) if c is not None]:
            call.pending.reject(error)
        w.current = None
        w.queue.clear()

    def _signal_kill(self, w: Worker) -> None:
        if w.cgroup is not None:
            with contextlib.suppress(LibOSError, OSError):
                w.cgroup.kill()
        if w.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)

    def _close(self, w: Worker, which: str) -> None:
        fd = getattr(w, which)
        if fd is None:
            return
        if fd in self.fds:
            del self.fds[fd]
            self.loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        setattr(w, which, None)

    def _drop(self, w: Worker, error: LibOSError) -> None:
        """Forget a worker that has exited (or never started): fail its calls, clean up."""
        self.kill(w, error)
        self._fail_calls(w, error)
        self._unlist(w)
        self.by_wid.pop(w.wid, None)
        if w.start_timer is not None:
            w.start_timer.cancel()
        for which in ("report", "stdout", "stdin", "pidfd"):
            self._close(w, which)
        self.helpers.forget(w.wid)
        self.helpers.release(w.wid, w.cgroup)
        discard_tree(w.scratch)
        if w.kind == "pooled":  # never assigned: its log is nobody's
            w.log_path.unlink(missing_ok=True)
        if w in self.pool:
            self.pool.remove(w)
            self._schedule_refill()

    def end_process(self, pid: int) -> None:
        """An AgentProcess ended: so do its tools."""
        for w in [w for w in self.by_wid.values() if w.pid == pid]:
            self.kill(w, ToolError(f"process {pid} ended"))
        discard_tree(self.dir / str(pid))

    def reap_idle(self) -> None:
        limit = self.sandbox.config.tool_idle_s
        now = time.monotonic()
        if self.pool_active and now - self._last_use > limit:
            self.drain_pool()  # no tool used for as long: the pool stops costing memory
        for w in list(self.by_wid.values()):
            if (w.kind == "run" and w.state == "ready" and not w.queue
                    and now - w.last_used > limit):
                self.kill(w, ToolError(f"tool {w.tool.name} was idle for {limit:g} s"))


_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clean(text: str, limit: int = 8000) -> str:
    """Compiler output for a human: no colour codes, bounded."""
    text = _ANSI.sub("", text).strip()
    return text if len(text) <= limit else text[:limit] + "\n..."
