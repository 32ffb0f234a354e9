"""Flow control at the broker's door: no process can starve the others or grow the
supervisor, and refusals cannot flood the audit.

Pure bookkeeping, no sockets, so each rule is unit-tested on its own:

* **In flight.** The SDK makes one call at a time; a process with ``max_in_flight``
  requests already being served (or suspended) gets ``LimitExceeded`` at once for the
  next, without any work done for it -- and its connection is then not read until one
  of its calls ends: what it sends meanwhile waits in its own socket. Pipelining
  hundreds of 16 MiB reads buys nothing, and costs the loop one refusal, not hundreds.
* **Work per turn.** A drain stops once its replies hold ``max_turn_reply_bytes``; the
  loop commits, sends, runs timers and comes straight back. The ROUTER fair-queues the
  peers it reads from, so another agent waits for at most about one turn's work.
* **Replies nobody reads** are bounded: the ROUTER holds at most
  ``reply_queue_messages`` replies, and ``reply_queue_bytes``, per peer that its socket
  has not taken; past that, replies wait in order in a backlog of at most
  ``max_backlog_bytes`` per peer (small refusals in a burst are all answered) and any
  reply that does not fit is dropped -- the peer that does not read pays, not the
  supervisor's memory.
* **Connections** are bounded per agent (``connections_per_agent``, counted by its
  cgroup, so a process and everything it forks share them; the SDK needs one), and so
  are the bytes its half-sent messages hold (protocol/router.py).
* **Refusals** (bad frames, wrong tokens) are audited ``audit_burst`` times per peer per
  ``window_s``; the rest are counted and summarised in one record. A peer that sends
  ``cut_after`` bad frames is cut: its frames are dropped unread, unanswered, unaudited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlowLimits:
    max_in_flight: int = 4
    max_turn_reply_bytes: int = 8 << 20
    reply_queue_messages: int = 4
    reply_queue_bytes: int = 1 << 20
    request_queue_messages: int = 16
    max_backlog_bytes: int = 1 << 20
    audit_burst: int = 5
    window_s: float = 60.0
    cut_after: int = 1000
    connections_per_agent: int = 4


@dataclass
class _Peer:
    window_start: float
    audited: int = 0
    suppressed: int = 0
    bad_frames: int = 0


@dataclass
class RefusalLimiter:
    """Which refusals from a peer are audited, summarised, or dropped outright."""

    limits: FlowLimits = field(default_factory=FlowLimits)
    clock: Callable[[], float] = time.monotonic
    _peers: dict[bytes, _Peer] = field(default_factory=dict)
    max_peers: int = 10_000  # forget the oldest beyond this: the table itself is bounded

    def is_cut(self, peer: bytes) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.bad_frames >= self.limits.cut_after

    def take_summaries(self) -> list[tuple[bytes, int, bool]]:
        """Every (peer, refusals not yet audited, cut?) with a count, reset to zero: the
        supervisor writes them out every few seconds, so the audit accounts for all."""
        out = []
        for peer, p in self._peers.items():
            if p.suppressed:
                out.append((peer, p.suppressed, p.bad_frames >= self.limits.cut_after))
                p.suppressed = 0
        return out

    def flush(self, peer: bytes) -> int:
        """The refusals of ``peer`` not yet audited, reset to zero (its last word)."""
        p = self._peers.get(peer)
        if p is None:
            return 0
        n, p.suppressed = p.suppressed, 0
        return n

    def refused(self, peer: bytes, *, cut: bool = True) -> tuple[bool, int]:
        """Count one refusal: (audit this one?, refusals suppressed to summarise now).

        ``cut``: the refusal counts towards cutting the peer off (a frame that is not
        the protocol, a wrong credential); a bad argument value does not."""
        now = self.clock()
        p = self._peers.get(peer)
        if p is None:
            if len(self._peers) >= self.max_peers:
                self._peers.pop(next(iter(self._peers)))
            p = self._peers[peer] = _Peer(window_start=now)
        if cut:
            p.bad_frames += 1
        summary = 0
        if now - p.window_start >= self.limits.window_s:
            summary, p.suppressed, p.audited, p.window_start = p.suppressed, 0, 0, now
        if p.audited < self.limits.audit_burst:
            p.audited += 1
            return True, summary
        p.suppressed += 1
        if p.bad_frames >= self.limits.cut_after:
            # The last word on a peer that is being cut: everything not yet summarised.
            summary, p.suppressed = summary + p.suppressed, 0
        return False, summary


@dataclass
class InFlight:
    """Requests of each process received and not yet answered."""

    limits: FlowLimits = field(default_factory=FlowLimits)
    _count: dict[int, int] = field(default_factory=dict)

    def admit(self, pid: int, *, force: bool = False) -> bool:
        """Count one more request of ``pid`` in flight, if it is under the bound (or
        ``force``: a refusal being answered is still a reply to be paired with done)."""
        n = self._count.get(pid, 0)
        if n >= self.limits.max_in_flight and not force:
            return False
        self._count[pid] = n + 1
        return True

    def done(self, pid: int) -> None:
        n = self._count.get(pid, 0) - 1
        if n <= 0:
            self._count.pop(pid, None)
        else:
            self._count[pid] = n

    def of(self, pid: int) -> int:
        return self._count.get(pid, 0)


@dataclass
class ByteRate:
    """A token bucket per process for bulk bytes the broker moves for it (large reads):
    a process may take ``rate`` bytes a second with bursts of ``burst``; past that its
    next large read waits. A flooding process is slowed, never refused, and the machine
    keeps room for everybody else's calls."""

    rate: float = 128 << 20
    burst: float = 64 << 20
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[int, tuple[float, float]] = field(default_factory=dict)

    def delay(self, pid: int, nbytes: int) -> float:
        """Take ``nbytes`` for ``pid``; the seconds to wait before moving them."""
        now = self.clock()
        level, at = self._buckets.get(pid, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate) - nbytes
        self._buckets[pid] = (level, now)
        return 0.0 if level >= 0 else -level / self.rate

    def forget(self, pid: int) -> None:
        self._buckets.pop(pid, None)
