"""The syscall broker: one ROUTER socket, every AgentProcess's only door.

Single-threaded and non-blocking: the supervisor's loop calls :meth:`Broker.drain` when
the socket is readable; each request is decoded, authenticated, validated and handed to
its handler; replies wait in an outbox until the supervisor has committed the batch's
state (:meth:`Broker.flush`), so an agent never sees an answer that is not on disk.
Handlers that must wait (``proc.wait``) return a :class:`Pending` and the reply is sent
whenever it resolves, so one slow call never blocks the others.

This is the only place where exceptions become replies.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from agentlibos.broker.syscalls import Caller, Pending, Reply, lookup
from agentlibos.broker.syscalls.base import Host, Result
from agentlibos.errors import InternalError, LibOSError
from agentlibos.protocol.wire import (
    DEFAULT_LIMITS,
    WireError,
    WireLimits,
    decode_request,
    encode_error,
    encode_ok,
)

log = logging.getLogger(__name__)


class BrokerHost(Host, Protocol):
    def authenticate(self, pid: int, token: bytes) -> Caller: ...
    def savepoint(self) -> Any: ...
    def on_protocol_error(self, error: LibOSError, routing_id: bytes) -> None: ...
    def on_internal_error(self, caller: Caller, call: str, exc: BaseException) -> None: ...


def dispatch(host: Host, caller: Caller, call: str, args: dict[str, Any],
             blobs: list[bytes]) -> Result:
    """Validate and run one syscall as ``caller``. Raises typed errors."""
    sc = lookup(call)
    return sc.handler(host, caller, sc.validate(args), blobs)


def run_syscall(
    host: BrokerHost,
    caller: Caller,
    call: str,
    args: dict[str, Any],
    blobs: list[bytes],
    sink: Callable[[Reply | LibOSError], None],
) -> None:
    """Run one syscall and hand its outcome -- now or, for a Pending, later -- to ``sink``.

    The one place an exception becomes a reply: typed errors pass as they are, anything
    else is a bug, logged and answered as InternalError with its writes rolled back.
    Used for agents' requests and for the syscalls their JIT tools make.
    """
    try:
        with host.savepoint():
            result = dispatch(host, caller, call, args, blobs)
    except LibOSError as e:
        sink(e)
        return
    except Exception as e:  # a handler bug must not take the broker down
        log.exception("syscall %s from pid %d failed", call, caller.pid)
        host.on_internal_error(caller, call, e)
        sink(InternalError(f"{call}: internal error ({type(e).__name__}); "
                           "the supervisor log has the details"))
        return
    if isinstance(result, Pending):
        result.bind(sink)
    elif isinstance(result, Reply):
        sink(result)
    else:
        sink(Reply(result))


class Broker:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        host: BrokerHost,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> None:
        self.endpoint = endpoint
        self.host = host
        self.limits = limits
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        # Frames above this are refused by libzmq before they are buffered: the hard
        # guard against a process exhausting the supervisor's memory.
        self.sock.setsockopt(zmq.MAXMSGSIZE, limits.zmq_maxmsgsize)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Replies to a peer that is gone, or whose queue is full, are dropped rather
        # than blocking the one loop that serves everybody.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.bind(endpoint)
        self.outbox: list[list[bytes]] = []

    def close(self) -> None:
        self.sock.close(0)
        if self.endpoint.startswith("ipc://"):
            # libzmq unlinks on unbind for most versions; make sure no socket file leaks.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint[len("ipc://"):])

    def drain(self, max_messages: int = 512) -> int:
        """Handle every request that is ready (bounded so timers and exits get a turn)."""
        n = 0
        # Asking ZMQ_EVENTS first is cheaper than ending every drain on a zmq.Again.
        while n < max_messages and int(self.sock.get(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            self._handle(frames)
        return n

    def flush(self) -> None:
        out, self.outbox = self.outbox, []
        for frames in out:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                log.warning("dropped a reply: the peer's queue is full")

    def _sink(self, routing_id: bytes, req_id: int) -> Callable[[Reply | LibOSError], None]:
        def sink(outcome: Reply | LibOSError) -> None:
            if isinstance(outcome, LibOSError):
                self.outbox.append([routing_id, *encode_error(req_id, outcome)])
            else:
                self.outbox.append([routing_id, *encode_ok(req_id, outcome.result,
                                                          outcome.blobs)])

        return sink

    def _handle(self, frames: list[bytes]) -> None:
        routing_id = frames[0]
        try:
            req = decode_request(frames[1:], self.limits)
        except WireError as e:
            self.host.on_protocol_error(e.error, routing_id)
            self.outbox.append([routing_id, *encode_error(e.req_id, e.error)])
            return
        try:
            caller = self.host.authenticate(req.pid, req.token)
        except LibOSError as e:
            self.host.on_protocol_error(e, routing_id)
            self.outbox.append([routing_id, *encode_error(req.id, e)])
            return
        run_syscall(self.host, caller, req.call, req.args, req.blobs,
                    self._sink(routing_id, req.id))
