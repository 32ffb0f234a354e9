"""Work that must not block the loop: HTTP requests, model calls.

The loop is the one thread every agent's syscalls share; a model call that takes 10 s
must delay no other agent's call by even a millisecond. Such work runs on a small
thread pool; its outcome is queued and the loop woken through a socket it polls, and
the ``done`` callback runs on the loop thread, inside a turn (its store writes join the
turn's batch; its replies go out after the commit), like every other callback.

Workers touch no runtime state: they get plain arguments and return plain values.
They are daemon threads, not a ``ThreadPoolExecutor``'s: that pool's threads are joined
at interpreter exit, so a stopping daemon would wait out a model call in flight (minutes)
for an answer nobody gets -- the call is cut off as a crash would cut it.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agentlibos.supervisor.loop import Loop

T = TypeVar("T")


class OffLoop:
    def __init__(self, loop: Loop, *, max_workers: int = 8) -> None:
        self._loop = loop
        self._max_workers = max_workers
        self._workers = 0
        self._closed = False
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Callable[[Any], None], Any]] = queue.SimpleQueue()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        loop.add_reader(self._r.fileno(), self._deliver)
        self.in_flight = 0

    def submit(self, fn: Callable[[], T], done: Callable[[T | BaseException], None]) -> None:
        """Run ``fn()`` off the loop; ``done(result or exception)`` runs on the loop."""
        self.in_flight += 1

        def work() -> None:
            try:
                outcome: Any = fn()
            except BaseException as e:  # noqa: BLE001 - handed back to the loop, typed there
                outcome = e
            self._done.put((done, outcome))
            with contextlib.suppress(BlockingIOError, OSError):
                self._w.send(b"x")

        self._jobs.put(work)
        # A worker per call in flight, up to the limit (in_flight counts this one).
        if self._workers < min(self.in_flight, self._max_workers):
            self._workers += 1
            threading.Thread(target=self._work, name=f"agentlibos-offloop-{self._workers}",
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._closed:
                return
            job()

    def _deliver(self, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._r.recv(4096):
                pass
        while True:
            try:
                done, outcome = self._done.get_nowait()
            except queue.Empty:
                return
            self.in_flight -= 1
            done(outcome)

    def close(self) -> None:
        """Stop taking work; calls not started are dropped, those running are not
        waited for (their outcome goes nowhere)."""
        self._closed = True
        for _ in range(self._workers):
            self._jobs.put(None)
        self._loop.remove_reader(self._r.fileno())
        self._r.close()
        self._w.close()
