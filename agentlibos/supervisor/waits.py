"""Suspending a call: the one mechanism behind every syscall that waits.

A handler that cannot answer now returns a :class:`Pending` and asks :meth:`Waits.suspend`
to bind it to what it waits on (``proc:7`` today; ``approval:12``, ``event:NAME``,
``sleep:ISO-TIME`` are the same mechanism). While any call of a process is suspended
the process is ``waiting`` and ``ps`` shows the wait; when the last one resolves it is
``running`` again. An optional timeout (a finite number, checked by the loop) rejects
the call with whatever error the caller gives.
"""

from __future__ import annotations

from collections.abc import Callable

from agentlibos.broker.syscalls import Pending
from agentlibos.errors import LibOSError
from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.processes import ProcessTable


class Waits:
    def __init__(self, table: ProcessTable, loop: Loop) -> None:
        self._table = table
        self._loop = loop

    def suspend(self, pid: int, pending: Pending, wait: str, *,
                timeout_s: float | None = None,
                on_timeout: Callable[[], LibOSError] | None = None) -> Pending:
        live = self._table.live[pid]
        store = self._table.store
        timer = None
        if timeout_s is not None and on_timeout is not None:
            def expire() -> None:
                if not pending.done:
                    pending.reject(on_timeout())
            timer = self._loop.call_later(timeout_s, expire)
            live.timers.append(timer)
        live.waits.append(wait)
        if len(live.waits) == 1:
            store.update_process(pid, state="waiting", wait=wait)

        def resume() -> None:
            if timer is not None:
                timer.cancel()
            lv = self._table.live.get(pid)
            if lv is not None and wait in lv.waits:
                lv.waits.remove(wait)
                if not lv.waits:
                    store.update_process(pid, state="running", wait=None)
                else:
                    store.update_process(pid, wait=lv.waits[0])

        pending.on_done = resume
        return pending

    def current(self, pid: int) -> str | None:
        """What ``pid`` waits on (its oldest suspended call), or None."""
        live = self._table.live.get(pid)
        return live.waits[0] if live is not None and live.waits else None
