"""The operator's control channel: the CLI talking to a running supervisor.

The server and client ends. A ROUTER socket at ``run/control.sock`` (inside the
operator-only ``run/`` directory) takes one JSON object per request and answers one JSON
object, possibly later (``run`` with ``wait``). The operations are in ``ops.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any, Final

import zmq

from agentlibos.errors import LibOSError, ProtocolError, Timeout, Unavailable, from_wire, to_wire

MAX_CONTROL_BYTES: Final = 16 << 20

Responder = Callable[[dict[str, Any]], None]


class ControlServer:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self.sock.bind(endpoint)
        self.outbox: list[list[bytes]] = []

    def close(self) -> None:
        self.sock.close(0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.endpoint[len("ipc://"):])

    def drain(
        self, handle: Callable[[dict[str, Any], Responder], None], max_messages: int = 64
    ) -> None:
        for _ in range(max_messages):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3 or frames[1] != b"":
                continue  # not a REQ peer; nothing sensible to answer
            rid = frames[0]
            responder = self._responder(rid)
            try:
                req = json.loads(frames[2])
                if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                    raise ProtocolError("a control request is a JSON object with an 'op'")
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                responder({"ok": False, "error": to_wire(ProtocolError(f"bad JSON: {e}"))})
                continue
            except ProtocolError as e:
                responder({"ok": False, "error": to_wire(e)})
                continue
            try:
                handle(req, responder)
            except LibOSError as e:
                responder({"ok": False, "error": to_wire(e)})

    def _responder(self, rid: bytes) -> Responder:
        done = False

        def respond(payload: dict[str, Any]) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.outbox.append([rid, b"", json.dumps(payload, default=str).encode()])

        return respond

    def flush(self) -> None:
        out, self.outbox = self.outbox, []
        for frames in out:
            with contextlib.suppress(zmq.Again):  # the CLI went away or is not reading
                self.sock.send_multipart(frames, zmq.NOBLOCK)


def control_call(
    endpoint: str, request: dict[str, Any], *, timeout_s: float | None = 5.0
) -> dict[str, Any]:
    """One request to a running supervisor; raises the typed error it answered with."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        if not sock.poll(None if timeout_s is None else int(timeout_s * 1000)):
            raise Timeout(f"the supervisor did not answer {request.get('op')!r} in {timeout_s} s")
        reply = json.loads(sock.recv())
    finally:
        sock.close(0)
    if not isinstance(reply, dict):
        raise ProtocolError("malformed reply from the supervisor")
    if not reply.get("ok"):
        raise from_wire(reply.get("error"))
    return reply


def ping(endpoint: str, timeout_s: float = 0.5) -> dict[str, Any] | None:
    """The supervisor's identity if one answers at ``endpoint``, else None."""
    path = endpoint[len("ipc://"):]
    if not os.path.exists(path):
        return None
    try:
        return control_call(endpoint, {"op": "ping"}, timeout_s=timeout_s)
    except (Timeout, Unavailable, ProtocolError):
        return None
