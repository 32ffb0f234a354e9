"""The syscall client: one DEALER socket to the broker, one call at a time.

Every SDK method is exactly one :meth:`Client.call`. A refused call raises the typed
error the broker raised (:func:`agentlibos.errors.from_wire`).
"""

from __future__ import annotations

import itertools
from typing import Any

import zmq

from agentlibos.errors import ProtocolError, Timeout, from_wire
from agentlibos.kernel.journal import UNJOURNALED
from agentlibos.protocol.wire import decode_reply, encode_request


class Client:
    def __init__(self, endpoint: str, pid: int, token: bytes,
                 *, ctx: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.endpoint = endpoint
        self.pid = pid
        self._token = token
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = ctx or zmq.Context(io_threads=1)
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        # The broker checks that calls arrive numbered 1, 2, 3...: the journal's order.
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        blobs: list[bytes] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[Any, list[bytes]]:
        """Make one syscall; return ``(result, blobs)`` or raise its typed error."""
        req_id = next(self._ids)
        self._sock.send_multipart(
            encode_request(req_id, self.pid, name, args or {}, self._token, blobs,
                           seq=None if name in UNJOURNALED else next(self._seq)), copy=False
        )
        deadline_ms = None if timeout_s is None else int(timeout_s * 1000)
        while True:
            if not self._sock.poll(deadline_ms):
                raise Timeout(f"{name}: no answer from the broker within {timeout_s} s")
            frames = self._sock.recv_multipart()
            reply = decode_reply(frames)
            if reply.id is not None and reply.id != req_id:
                continue  # a late answer to an earlier call that timed out
            if reply.ok:
                return reply.result, reply.blobs
            if reply.id is None and reply.error is None:
                raise ProtocolError(f"{name}: malformed error reply")
            raise from_wire(reply.error)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
