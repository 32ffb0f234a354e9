"""Slow work runs off the loop: the loop keeps turning while it runs, and the outcome
comes back on the loop thread."""

from __future__ import annotations

import threading
import time

from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.offloop import OffLoop


def test_slow_work_does_not_hold_the_loop_and_its_outcome_comes_back_on_it() -> None:
    loop = Loop()
    off = OffLoop(loop)
    release = threading.Event()
    got: list[object] = []
    threads: list[str] = []
    try:
        def done(r: object) -> None:
            got.append(r)
            threads.append(threading.current_thread().name)

        off.submit(lambda: (release.wait(10), "slow")[1], done)
        ticks: list[float] = []
        for _ in range(5):  # the loop turns while the work blocks
            loop.call_later(0, lambda: ticks.append(time.monotonic()))
            loop.run_once(0.1)
        assert len(ticks) == 5 and not got
        release.set()
        assert loop.run_until(lambda: bool(got), 5)
        assert got == ["slow"] and threads == [threading.current_thread().name]

        def boom() -> str:
            raise ValueError("bad")

        off.submit(boom, got.append)
        assert loop.run_until(lambda: len(got) == 2, 5)
        assert isinstance(got[1], ValueError) and off.in_flight == 0
    finally:
        release.set()
        off.close()
        loop.close()
