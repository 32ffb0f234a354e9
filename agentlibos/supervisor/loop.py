"""The supervisor's event loop: polling, timers and wake-ups, knowing none of its clients.

Owners (the broker, the control server, the zygote client, the process table, the
workers) register what they need: a readable fd or ZeroMQ socket with a callback, a
timer, a hook run around each turn. One thread runs everything, so clients need no
locks; :meth:`Loop.wake` and :meth:`Loop.call_soon_threadsafe` are the only methods
safe from another thread (``wake`` from a signal handler too).

A turn: poll -> inside the turn context (the store's group-commit batch) run every
ready callback, then every due timer -> after-turn hooks (send the replies the batch
made durable). A callback that raises is a bug in the runtime: it is logged, handed to
the ``on_error`` hook (which audits it) and the loop goes on -- one bad event never
takes the supervisor down for every agent.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import queue
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from agentlibos.errors import InvalidArgument

log = logging.getLogger(__name__)
POLLIN: Final = int(zmq.POLLIN)  # a plain int: an enum's | builds a new member each time
# While the busy spin keeps finding the hot source ready, the ZeroMQ sockets (the CLI's
# control socket) are polled this often; the plain fds (a JIT tool's pipe, the zygote)
# are polled every turn, with one poll(2) of 0.
FULL_POLL_EVERY_S: Final = 0.001


def _to_select(events: int) -> int:
    return ((select.POLLIN if events & zmq.POLLIN else 0)
            | (select.POLLOUT if events & zmq.POLLOUT else 0))


def _from_select(revents: int) -> int:
    """As zmq_poll reports a plain fd: anything but IN and OUT (HUP, ERR, NVAL) is ERR."""
    out = POLLIN if revents & select.POLLIN else 0
    if revents & select.POLLOUT:
        out |= int(zmq.POLLOUT)
    if revents & ~(select.POLLIN | select.POLLOUT):
        out |= int(zmq.POLLERR)
    return out

Reader = Callable[[int], None]  # called with the poll events (zmq.POLLIN | POLLOUT ...)
PollTarget = int | zmq.Socket[bytes]


@dataclass(order=True)
class Timer:
    when: float
    tid: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


def check_delay(delay_s: float, what: str = "a timer") -> float:
    """A finite, non-negative delay, else InvalidArgument.

    NaN compares false with everything: a NaN deadline at the top of the timer heap
    would never be due and would stop every timer behind it (wall limits, SIGKILL
    escalation). So nothing that is not a finite number reaches the heap.
    """
    if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
        raise InvalidArgument(f"{what}: the delay must be a number")
    if not math.isfinite(delay_s) or delay_s < 0:
        raise InvalidArgument(f"{what}: the delay must be a finite number >= 0, "
                              f"not {delay_s!r}")
    return float(delay_s)


class Loop:
    def __init__(self, *, busy_poll_us: int = 0) -> None:
        self._poller = zmq.Poller()
        # The plain fds alone, for the busy spin: poll(2) over them costs a fraction of
        # zmq_poll over them and a ZeroMQ socket.
        self._plain = select.poll()
        self._readers: dict[PollTarget, Reader] = {}
        self._timers: list[Timer] = []
        self._ids = itertools.count(1)
        self._busy_poll_us = busy_poll_us
        self._busy = False
        self._hot: Callable[[], bool] | None = None
        self._full_poll_at = 0.0  # perf_counter of the busy spin's last poll of every fd
        # Readers whose source buffers input the fd no longer shows (the broker's
        # router parses ahead): asked before each poll, run when they have some.
        self._pending: dict[PollTarget, Callable[[], bool]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self._plain.register(self._wake_r.fileno(), select.POLLIN)
        self._readers[self._wake_r.fileno()] = self._drain_wake
        self._soon: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._turn: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self._after: list[Callable[[], None]] = []
        self.on_error: Callable[[str, BaseException], None] | None = None
        self._on_idle: Callable[[bool], float | None] | None = None  # set_turn_context
        self.stopping = False

    # ---------------------------------------------------------------- registration

    def add_reader(self, target: PollTarget, fn: Reader, events: int = zmq.POLLIN, *,
                   pending: Callable[[], bool] | None = None) -> None:
        self._readers[target] = fn
        self._poller.register(target, events)
        if isinstance(target, int):
            self._plain.register(target, _to_select(events))
        if pending is not None:
            self._pending[target] = pending

    def modify(self, target: PollTarget, events: int) -> None:
        self._poller.modify(target, events)
        if isinstance(target, int):
            self._plain.modify(target, _to_select(events))

    def remove_reader(self, target: PollTarget) -> None:
        self._pending.pop(target, None)
        if self._readers.pop(target, None) is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(target)
            if isinstance(target, int):
                with contextlib.suppress(KeyError):
                    self._plain.unregister(target)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        delay = check_delay(delay_s)
        t = Timer(time.monotonic() + delay, next(self._ids), fn)
        heapq.heappush(self._timers, t)
        return t

    def set_turn_context(self, ctx: Callable[[], AbstractContextManager[Any]], *,
                         idle: Callable[[bool], float | None] | None = None) -> None:
        """Every turn's callbacks and timers run inside ``ctx()`` (the store batch);
        ``idle(force)`` before the loop sleeps in poll(), which sleeps no longer than
        the seconds it returns, and ``idle(True)`` before run_until returns (the commit
        of what turns of reads deferred: StoreJournal.commit_deferred)."""
        self._turn = ctx
        self._on_idle = idle

    def after_turn(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def mark_busy(self, hot: Callable[[], bool] | None = None) -> None:
        """A client served a request: poll without sleeping for a moment next turn,
        asking ``hot`` (does the source it came from have more?) for the next one."""
        self._busy = True
        self._hot = hot

    # --------------------------------------------------------------------- running

    def wake(self) -> None:
        """Interrupt a blocking poll (safe from other threads and signal handlers)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, inside its next turn (from any thread)."""
        self._soon.put(fn)  # queued before the wake byte, so the drain that reads the
        self.wake()  # byte always finds it

    def _drain_wake(self, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                fn = self._soon.get_nowait()
            except queue.Empty:
                return
            self._guard("call-soon", fn)

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def run_once(self, timeout_s: float = 1.0, *, settle: bool = False) -> None:
        """One turn; ``settle``: run the idle hook after it, as before a return to a
        caller that may look at the store from elsewhere."""
        deadline = self.next_deadline()
        if deadline is not None:
            timeout_s = max(0.0, min(timeout_s, deadline - time.monotonic()))
        ready = self._busy_poll() if self._busy else {}
        self._busy = False
        for target, has in self._pending.items():
            if has():
                ready.setdefault(target, POLLIN)
        if not ready:
            if timeout_s > 0:
                again = self._idle(False)
                if again is not None:
                    timeout_s = min(timeout_s, again)
            ready = dict(self._poller.poll(math.ceil(timeout_s * 1000)))
            self._full_poll_at = time.perf_counter()
        with self._turn():
            for target, events in ready.items():
                fn = self._readers.get(target)
                if fn is not None:
                    self._guard("fd", fn, events)
            self._run_timers()
        for hook in self._after:
            self._guard("after-turn", hook)
        if settle:
            self._idle(True)

    def _idle(self, force: bool) -> float | None:
        if self._on_idle is None:
            return None
        again: float | None = self._guard("idle", self._on_idle, force)
        return again

    def _busy_poll(self) -> dict[Any, int]:
        """Right after serving a request, spin briefly before sleeping in poll().

        An agent making a run of syscalls sends the next one tens of microseconds after
        its reply; waking from a blocking poll costs about as much again on a VM. The
        spin asks only the hot source (the broker's router: its parsed queue, then one
        epoll_wait of 0 -- no poll over every fd the loop watches) and yields the core between
        asks: on a small host the agent whose request we wait for may need this very
        core (a profile showed 490,000 zmq polls for 35,000 syscalls). One ask in eight
        polls every fd, so an answer on another (a JIT tool's pipe) is not kept waiting.
        """
        hot = self._hot
        if hot is None:
            return dict(self._poller.poll(0))
        end = time.perf_counter() + self._busy_poll_us / 1e6
        spins = 0
        while not hot():
            spins += 1
            if spins % 8 == 0 or time.perf_counter() >= end:
                # Now and then every fd: a reply may come on another (a tool's pipe).
                ready = self._poller.poll(0)
                self._full_poll_at = time.perf_counter()
                if ready or self._full_poll_at >= end:
                    return dict(ready)
            os.sched_yield()
        # Back to the hot source (its pending hook names it ready) with the plain fds
        # that are ready too: zmq_poll over every target would cost ~5 us of each round
        # trip. The ZeroMQ sockets are looked at once a millisecond, so a flood on the
        # hot source cannot starve them either.
        now = time.perf_counter()
        if now - self._full_poll_at < FULL_POLL_EVERY_S:
            return {fd: _from_select(ev) for fd, ev in self._plain.poll(0)}
        self._full_poll_at = now
        return dict(self._poller.poll(0))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            t = heapq.heappop(self._timers)
            if not t.cancelled:
                self._guard("timer", t.fn)

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        # The last-resort guard: a runtime bug in one callback fails that callback only
        # (its result is then None).
        try:
            return fn(*args)
        except Exception as e:
            log.exception("unexpected error in a loop %s callback", what)
            if self.on_error is not None:
                with contextlib.suppress(Exception):
                    self.on_error(what, e)

    def run_until(self, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Turn until ``done()`` or a stop is requested; False on timeout or stop."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while not done():
                if self.stopping:
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self.run_once(0.5 if deadline is None else min(0.5, deadline - time.monotonic()))
            return True
        finally:
            self._idle(True)  # the caller may look at the store from another connection

    def fds(self) -> Iterator[PollTarget]:
        return iter(list(self._readers))

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
