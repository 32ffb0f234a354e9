"""Work that must not block the loop: HTTP requests, model calls.

The loop is the one thread every agent's syscalls share; a model call that takes 10 s
must delay no other agent's call by even a millisecond. Such work runs on a small
thread pool; its outcome is queued and the loop woken through a socket it polls, and
the ``done`` callback runs on the loop thread, inside a turn (its store writes join the
turn's batch; its replies go out after the commit), like every other callback.

Workers touch no runtime state: they get plain arguments and return plain values.
"""

from __future__ import annotations

import contextlib
import queue
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agentlibos.supervisor.loop import Loop

T = TypeVar("T")


class OffLoop:
    def __init__(self, loop: Loop, *, max_workers: int = 8) -> None:
        self._loop = loop
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="agentlibos-offloop")
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

        self._pool.submit(work)

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
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop.remove_reader(self._r.fileno())
        self._r.close()
        self._w.close()
