"""The syscall broker: one ROUTER socket (protocol/router.py), every AgentProcess's only door.

Single-threaded and non-blocking: the supervisor's loop calls :meth:`Broker.drain` when
the socket is readable; each request is decoded and authenticated here (the door), then
handed to the one dispatch (``dispatch.py``); replies wait in an outbox until the loop
has committed the turn's state (:meth:`Broker.flush`), so an agent never sees an answer
that is not on disk -- with one exception, :meth:`Broker.flush_reads`.
"""

from __future__ import annotations

import collections
import logging
import resource
from collections.abc import Callable
from typing import Protocol

from agentlibos.broker.dispatch import Dispatcher, Outcome
from agentlibos.broker.flow import FlowLimits, InFlight, RefusalLimiter
from agentlibos.broker.syscalls import Caller
from agentlibos.errors import AuthenticationFailed, LibOSError, LimitExceeded
from agentlibos.kernel.journal import EARLY_ANSWER, effect_kind
from agentlibos.protocol.router import Full, Router, pid_owner
from agentlibos.protocol.wire import (
    DEFAULT_LIMITS,
    WireError,
    WireLimits,
    decode_request,
    encode_error,
    encode_ok,
)

log = logging.getLogger(__name__)


def max_peers() -> int:
    """A quarter of the descriptors this process may hold (its hard limit: the
    supervisor raises its soft one to it), at least 64."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = 1 << 20
    return max(64, hard // 4)


def _cgroup2_of(pid: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            text = f.read(8192)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(b"0::"):
            return line[3:]
    return None


def own_cgroup() -> bytes | None:
    return _cgroup2_of("self")


def cgroup_owner(own: Callable[[], bytes | None] = own_cgroup) -> Callable[[int], bytes]:
    """The router's owner of a connection: the connecting process's cgroup v2 (an
    agent's, shared with all it forks), or its pid where that cgroup says nothing (the
    supervisor's own -- asked each time: it moves into a leaf of its group after it
    starts -- or none: agents without a cgroup of their own)."""
    def owner(pid: int) -> bytes:
        cg = _cgroup2_of(str(pid))
        if cg is None or cg in (b"/", own()):
            return pid_owner(pid)
        return b"cg:" + cg
    return owner


class Door(Protocol):
    """What the broker asks of the process table at the door."""

    def authenticate(self, pid: int, token: bytes) -> Caller: ...
    # ``peer``: the sender (Router.sender): b"pid:<host pid>", or a routing id.
    def on_protocol_error(self, error: LibOSError, peer: bytes) -> None: ...
    def on_refusals_suppressed(self, peer: bytes, count: int, cut: bool) -> None: ...


class Broker:
    def __init__(
        self,
        endpoint: str,
        door: Door,
        dispatcher: Dispatcher,
        limits: WireLimits = DEFAULT_LIMITS,
        flow: FlowLimits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.door = door
        self.dispatcher = dispatcher
        self.limits = limits
        self.flow = flow or FlowLimits()
        self.in_flight = InFlight(self.flow)
        # Bad frames are counted per connection (one is cut off after 1,000, while its
        # process's other connection goes on working) and audited per sender (five a
        # minute, then summarised, however many connections it opens).
        self.refusals = RefusalLimiter(self.flow)
        self.senders = RefusalLimiter(self.flow)
        self._held: dict[int, set[bytes]] = {}  # peers paused at their in-flight bound
        self._turn_bytes = 0
        # Small replies that did not fit a peer's queue, kept in order (bounded).
        self._backlog: dict[bytes, collections.deque[list[bytes]]] = {}
        self._backlog_bytes: dict[bytes, int] = {}
        self.dropped_replies = 0
        self.dropped_requests = 0
        # The ROUTER is the loop's own (protocol/router.py), never a blocking call:
        # - a frame above zmq_maxmsgsize ends its connection before it is buffered: the
        #   hard guard against a process exhausting the supervisor's memory;
        # - a send to a peer that is gone is dropped, one to a peer with
        #   reply_queue_messages replies or reply_queue_bytes not taken by its socket is
        #   refused (flush() decides what to do: small replies wait in a bounded
        #   backlog, large ones are dropped);
        # - at most request_queue_messages requests of a peer are read ahead, and none
        #   while its process is at its in-flight bound (_handle): a flooding process
        #   waits in its own socket (its memory, not ours) instead of being read and
        #   refused one by one on the loop every other agent shares.
        # - connections are counted and bounded per agent (its cgroup: an agent and all
        #   it forks share one), as are the bytes its half-sent messages hold; and in
        #   all to a quarter of the descriptors (the rest are the processes' pipes and
        #   pidfds, FDS_PER_HOST_PROCESS), so a process opening connections without end
        #   can never take the supervisor to EMFILE, where libzmq's control socket
        #   would abort it.
        self.router = Router(endpoint, max_frame=limits.zmq_maxmsgsize,
                             max_message=2 * limits.zmq_maxmsgsize,
                             max_queued=self.flow.reply_queue_messages,
                             max_queued_bytes=self.flow.reply_queue_bytes,
                             max_inbox=self.flow.request_queue_messages,
                             max_peers=max_peers(),
                             max_peers_per_owner=self.flow.connections_per_agent,
                             owner_of=cgroup_owner())
        self.outbox: list[list[bytes]] = []
        # The outbox's replies to pure reads and the handshake (EARLY_ANSWER), by id,
        # which may leave before the turn's COMMIT statement: see flush_reads().
        self._reads: set[int] = set()

    def close(self) -> None:
        self.router.close()  # (unlinks the socket file)

    # For the loop: the fd to poll, requests parsed ahead that it will not show, and
    # whether any request waits now (the busy poll's question).
    def fileno(self) -> int:
        return self.router.fileno()

    def pending(self) -> bool:
        return self.router.pending()

    def has_input(self) -> bool:
        return self.router.has_input()

    def drain(self, max_messages: int = 512) -> int:
        """Handle the requests that are ready, up to a turn's worth of work (so timers,
        exits and the commit get their turn, and one flooding peer cannot hold the loop).
        """
        n = 0
        self._turn_bytes = 0
        recv = self.router.recv
        while n < max_messages and self._turn_bytes < self.flow.max_turn_reply_bytes:
            frames = recv()
            if frames is None:
                break
            n += 1
            self._handle(frames)
        return n

    def summarize_refusals(self) -> None:
        """Audit one summary per peer for the refusals not audited one by one."""
        for peer, count, cut in self.senders.take_summaries():
            self.door.on_refusals_suppressed(peer, count, cut)

    @property
    def backlogged(self) -> bool:
        """Replies wait for room in a peer's queue: flush again soon."""
        return bool(self._backlog)

    def flush(self) -> None:
        for peer in list(self._backlog):
            queue = self._backlog[peer]
            while queue and self._send(queue[0]):
                self._backlog_bytes[peer] -= sum(len(f) for f in queue.popleft())
            if not queue:
                del self._backlog[peer], self._backlog_bytes[peer]
        out, self.outbox = self.outbox, []
        self._reads.clear()
        for frames in out:
            peer = frames[0]
            if peer not in self._backlog and self._send(frames):
                continue
            self._park(peer, frames)

    def flush_reads(self) -> None:
        """Send the turn's answers to pure reads now, before the turn's COMMIT (called
        after every row of the turn was written, before the statement that commits them).
        The handshake, ``proc.start``, goes with them (``EARLY_ANSWER``): its one write,
        the process's state, is nothing its agent can see or use.

        Why it is safe: a read acts on nothing; what its answer shows was written in this
        same transaction; and an agent can make use of an answer only through another
        call, which a later turn serves, after this commit. If the commit fails the
        supervisor stops and its agents die with it (PR_SET_PDEATHSIG); a resumed agent
        replays only what was committed and makes the lost reads again, live. What it
        buys: the commit (most of a read's cost on the loop) overlaps the agent's own
        work instead of adding to its wait. A peer's replies keep their order: one that
        has an earlier reply still waiting gets this one after the commit too.
        """
        if not self._reads:
            return
        held: set[bytes] = set(self._backlog)
        rest: list[list[bytes]] = []
        for frames in self.outbox:
            peer = frames[0]
            if peer not in held and id(frames) in self._reads:
                if self._send(frames):
                    continue
                self._park(peer, frames)
            else:
                rest.append(frames)
            held.add(peer)
        self.outbox = rest
        self._reads.clear()

    def _send(self, frames: list[bytes]) -> bool:
        try:
            self.router.send(frames)  # (a peer that is gone: nobody to answer)
        except Full:
            return False  # the peer's queue is full: it is not reading
        return True

    def _park(self, peer: bytes, frames: list[bytes]) -> None:
        size = sum(len(f) for f in frames)
        used = self._backlog_bytes.get(peer, 0)
        if size > self.flow.max_backlog_bytes - used:
            # A peer that does not read: its replies cost it, never the supervisor.
            self.dropped_replies += 1
            if self.dropped_replies in (1, 10, 100) or self.dropped_replies % 1000 == 0:
                log.warning("dropped a %d-byte reply (%d so far): a peer is not reading its "
                            "replies", size, self.dropped_replies)
            return
        self._backlog.setdefault(peer, collections.deque()).append(frames)
        self._backlog_bytes[peer] = used + size

    def _sink(self, routing_id: bytes, req_id: int, pid: int,
              read: bool) -> Callable[[Outcome], None]:
        def sink(outcome: Outcome) -> None:
            self.in_flight.done(pid)
            if pid in self._held and self.in_flight.of(pid) < self.flow.max_in_flight:
                for rid in self._held.pop(pid):
                    self.router.resume(rid)
            if isinstance(outcome, LibOSError):
                frames = [routing_id, *encode_error(req_id, outcome)]
            else:
                frames = [routing_id, *encode_ok(req_id, outcome.result, outcome.blobs)]
                self._turn_bytes += sum(len(f) for f in frames)
            self.outbox.append(frames)
            if read:
                self._reads.add(id(frames))

        return sink

    def _refuse(self, routing_id: bytes, req_id: int | None, error: LibOSError,
                *, cut: bool = True) -> None:
        """Answer a request refused at the door; audit it within the peer's allowance."""
        was_cut = self.refusals.is_cut(routing_id)
        self.refusals.refused(routing_id, cut=cut)
        now_cut = self.refusals.is_cut(routing_id)
        sender = self.router.sender(routing_id)
        audit, summary = self.senders.refused(sender, cut=False)
        if now_cut and not was_cut:  # the last word on a connection being cut off
            summary += self.senders.flush(sender)
        if summary:
            self.door.on_refusals_suppressed(sender, summary, now_cut)
        if audit:
            self.door.on_protocol_error(error, sender)
        self.outbox.append([routing_id, *encode_error(req_id, error)])

    def _handle(self, frames: list[bytes]) -> None:
        routing_id = frames[0]
        if self.refusals.is_cut(routing_id):
            return  # a peer that kept sending bad frames: no more work, no more audit
        try:
            req = decode_request(frames[1:], self.limits)
        except WireError as e:
            self._refuse(routing_id, e.req_id, e.error)
            return
        try:
            caller = self.door.authenticate(req.pid, req.token)
        except AuthenticationFailed as e:
            self._refuse(routing_id, req.id, e)
            return
        if routing_id in self._backlog:
            # It is not reading its replies: no new work for it until it does.
            self.dropped_requests += 1
            return
        try:
            seq = self.dispatcher.next_seq(caller.pid, req.seq)
        except LibOSError as e:
            self._refuse(routing_id, req.id, e)
            return
        refused: LibOSError | None = req.args_error
        if not self.in_flight.admit(caller.pid):
            # Numbered first, so the SDK's numbering and the broker's stay in step.
            self.in_flight.admit(caller.pid, force=True)
            # This one is refused at once; the next wait in the peer's own socket until
            # one of its calls ends, so a flood costs the flooder a wait, not the loop
            # a refusal per request.
            self.router.pause(routing_id)
            self._held.setdefault(caller.pid, set()).add(routing_id)
            refused = LimitExceeded(
                f"{req.call}: process {caller.pid} already has "
                f"{self.flow.max_in_flight} requests in flight; wait for their replies")
        read = refused is None and (effect_kind(req.call, req.args) == "read"
                                    or req.call in EARLY_ANSWER)
        self.dispatcher.submit(caller, req.call, req.args, req.blobs,
                               self._sink(routing_id, req.id, caller.pid, read), seq=seq,
                               refused=refused, audit_refusal=refused is req.args_error)
