"""Events and sleeps: the waits an agent sets itself.

``event.wait(name)`` returns the payload of the next post of ``name`` after the call
began; ``event.post`` (an agent) or ``agentlibos event post`` (the operator) wakes every
waiter at once. ``clock.sleep(s)`` ends at its deadline (kept with the wait, so ``ps``
shows ``sleep:ISO-TIME``). Every post is a row in the store, kept while a waiter armed
again from its journal may still be given it; every wait is a suspended call, the same
mechanism as ``proc.wait`` and approvals.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any, Final

from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.errors import Timeout
from agentlibos.kernel.approvals import EventRecord, check_event_name, check_sleep, iso_time
from agentlibos.providers.base import ClockProvider, SystemClock
from agentlibos.store import Store
from agentlibos.supervisor.loop import Loop, check_delay
from agentlibos.supervisor.waits import Waits

# Posts between two prunes of the table (store.events_prune): its size stays bounded
# by what live waiters may still be given, at one indexed query per this many posts.
PRUNE_EVERY: Final = 1024


class Events:
    def __init__(self, store: Store, waits: Waits, loop: Loop) -> None:
        self._store = store
        self._waits = waits
        self._loop = loop
        self._waiters: defaultdict[str, list[Pending]] = defaultdict(list)
        self._posts = 0  # since the last prune

    def wait(self, caller: Caller, name: str, timeout_s: float | None) -> Pending | Any:
        check_event_name(name, "event.wait")
        if timeout_s is not None:
            check_delay(timeout_s, "event.wait timeout")
        # The cursor: posts after this one are "after the call began". Kept in the wait
        # intent, so a resumed process gets a post made while it was gone.
        after = self._store.event_last_id()
        deadline = None if timeout_s is None else time.time() + timeout_s
        asked = timeout_s  # what the call asked for, however much of it a resume has left
        if caller.resume is not None:
            after = int(caller.resume.get("after", after))
            deadline = caller.resume.get("deadline")
            missed = self._store.event_after(name, after)
            if missed is not None:
                return missed.public()
            timeout_s = None if deadline is None else max(0.0, float(deadline) - time.time())
        pending = Pending(caller.pid)
        self._waiters[name].append(pending)

        def expired() -> Timeout:
            self._drop(name, pending)
            return Timeout(f"event.wait: no post of {name!r} within {asked or 0:g} s")

        return self._waits.suspend(caller.pid, pending, f"event:{name}", timeout_s=timeout_s,
                                   on_timeout=expired,
                                   durable={"after": after, "deadline": deadline})

    def post(self, name: str, payload: Any, by: int | None) -> tuple[EventRecord, int]:
        """Record the post and wake every waiter of ``name``; returns it and how many."""
        check_event_name(name, "event.post")
        rec = self._store.event_append(name, payload, by)
        self._posts += 1
        if self._posts >= PRUNE_EVERY:
            self._posts = 0
            self._store.events_prune()
        waiters = self._waiters.pop(name, [])
        for pending in waiters:
            pending.resolve(rec.public())
        return rec, len(waiters)

    def _drop(self, name: str, pending: Pending) -> None:
        waiters = self._waiters.get(name)
        if waiters is not None and pending in waiters:
            waiters.remove(pending)
            if not waiters:
                del self._waiters[name]

    def process_ended(self, pid: int) -> None:
        for name in list(self._waiters):
            for pending in [p for p in self._waiters[name] if p.pid == pid]:
                self._drop(name, pending)


class Clock:
    def __init__(self, waits: Waits, loop: Loop, source: ClockProvider | None = None) -> None:
        self._waits = waits
        self._loop = loop
        self._source: ClockProvider = source or SystemClock()

    def now(self) -> dict[str, Any]:
        t = self._source.time()
        return {"time": t, "iso": iso_time(t)}

    def random(self, nbytes: int | None) -> dict[str, Any]:
        """``clock.random``: journaled like ``now``, so replay hands back the same draw."""
        if nbytes is not None:
            return {"hex": os.urandom(nbytes).hex()}
        # 53 random bits, as random.random() uses: every float in [0, 1) it can return.
        return {"random": (int.from_bytes(os.urandom(7), "big") >> 3) / (1 << 53)}

    def sleep(self, caller: Caller, seconds: float) -> Pending:
        s = check_sleep(seconds)
        until = self._source.time() + s
        if caller.resume is not None and "until" in caller.resume:
            # Resumed: the deadline is the one first set (a 3-day sleep ends on time).
            until = float(caller.resume["until"])
        left = max(0.0, until - self._source.time())
        pending = Pending(caller.pid)
        self._loop.call_later(left, lambda: pending.resolve({"slept": s,
                                                             "until": iso_time(until)}))
        return self._waits.suspend(caller.pid, pending, f"sleep:{iso_time(until)}",
                                   durable={"until": until})
