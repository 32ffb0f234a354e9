"""Suspending a call: the one mechanism behind every syscall that waits.

A handler that cannot answer now returns a :class:`Pending` and asks :meth:`Waits.suspend`
to bind it to what it waits on (``proc:7`` today; ``approval:12``, ``event:NAME``,
``sleep:ISO-TIME`` are the same mechanism). While any call of a process is suspended
the process is ``waiting`` and ``ps`` shows the wait; when the last one resolves it is
``running`` again. An optional timeout (a finite number, checked by the loop) rejects
the call with whatever error the caller gives.

A wait on an effect running off the loop (a JIT tool, a shell command, a fetch, a model
call: no ``durable`` state) usually ends within milliseconds; the store hears of it only
once it has lasted :data:`SHOW_AFTER_S`, so a quick one costs no write at all (two
process-row updates were a fifth of a warm tool call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from agentlibos.broker.syscalls import Pending
from agentlibos.errors import LibOSError
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.processes import LiveProcess, ProcessTable

SHOW_AFTER_S: Final = 0.05


class Waits:
    def __init__(self, table: ProcessTable, loop: Loop) -> None:
        self._table = table
        self._loop = loop
        # Durable execution's hooks (supervisor/durable.py): told (pid) when every wait of
        # a process is durable (it may be evicted), and when an evicted one's waits end.
        self.all_durable: Callable[[int], None] | None = None
        self.ended_evicted: Callable[[int], None] | None = None
        # Told (pid) when an effect in flight was killed with its process's host process
        # (cut_off): durable execution decides what becomes of the process.
        self.effect_cut_off: Callable[[int], None] | None = None
        # Processes whose current wait the store does not show yet (SHOW_AFTER_S).
        self._unshown: dict[int, Timer] = {}

    def suspend(self, pid: int, pending: Pending, wait: str, *,
                timeout_s: float | None = None,
                on_timeout: Callable[[], LibOSError] | None = None,
                durable: dict[str, Any] | None = None) -> Pending:
        """``durable``: what arms this wait again without the process (a deadline, an
        ask id, an event cursor; journaled in its wait intent). Without it the wait holds
        the process (an effect running off the loop): it is never evicted meanwhile."""
        live = self._table.live[pid]
        pending.durable = durable
        store = self._table.store
        timer = None
        if timeout_s is not None and on_timeout is not None:
            def expire() -> None:
                if not pending.done:
                    pending.reject(on_timeout())
            timer = self._loop.call_later(timeout_s, expire)
            live.wait_timers.append(timer)
        live.waits.append(wait)
        if durable is not None:
            live.durable_waits += 1
        if len(live.waits) == 1:
            live.waiting_since = time.monotonic()
            if durable is None:
                self._unshown[pid] = self._loop.call_later(SHOW_AFTER_S,
                                                           lambda: self._show(pid))
            else:
                store.update_process(pid, state="waiting", wait=wait)
        elif durable is not None and pid in self._unshown:
            self._show(pid)  # a durable wait is shown (and may be evicted) at once
        if live.durable_waits == len(live.waits) and self.all_durable is not None:
            self.all_durable(pid)

        def resume() -> None:
            if timer is not None:
                timer.cancel()
            lv = self._end(pid, wait, durable=durable is not None)
            if lv is not None:
                store.update_process(pid, state="running", wait=None)
                if lv.evicted and self.ended_evicted is not None:
                    self.ended_evicted(pid)

        pending.on_done = resume
        return pending

    def _end(self, pid: int, wait: str, *, durable: bool) -> LiveProcess | None:
        """Take ``wait`` off ``pid``'s waits (the store shown the next one, if any). The
        process when that was its last wait and the store shows it waiting, else None."""
        lv = self._table.live.get(pid)
        if lv is None or wait not in lv.waits:
            return None
        lv.waits.remove(wait)
        if durable:
            lv.durable_waits -= 1
        if lv.waits:
            if pid not in self._unshown:
                self._table.store.update_process(pid, wait=lv.waits[0])
            return None
        lv.waiting_since = None
        unshown = self._unshown.pop(pid, None)
        if unshown is not None:
            unshown.cancel()  # over before anyone was told it began
            return None
        return lv

    def cut_off(self, pid: int, pending: Pending, wait: str) -> None:
        """The effect ``pending`` waits on was killed with the host process of ``pid``
        (its cgroup nests in the process's): whether it did its work is not known, so
        the call gets no answer -- none would be true, and a journaled one would be
        replayed -- and ``effect_cut_off`` settles the process instead (its state too)."""
        pending.on_done = None
        self._end(pid, wait, durable=False)  # the wait of an effect is never durable
        if self.effect_cut_off is not None:
            self.effect_cut_off(pid)

    def _show(self, pid: int) -> None:
        """The store shows ``pid`` waiting on its oldest suspended call (if it still
        waits)."""
        timer = self._unshown.pop(pid, None)
        if timer is not None:
            timer.cancel()
        lv = self._table.live.get(pid)
        if lv is not None and lv.waits:
            self._table.store.update_process(pid, state="waiting", wait=lv.waits[0])

    def current(self, pid: int) -> str | None:
        """What ``pid`` waits on (its oldest suspended call), or None."""
        live = self._table.live.get(pid)
        return live.waits[0] if live is not None and live.waits else None
