"""The operator's control channel: the CLI talking to a running supervisor.

The server and client ends. A ROUTER socket at ``run/control.sock`` (inside the
operator-only ``run/`` directory) takes one JSON object per request and answers one JSON
object, possibly later (``run`` with ``wait``). The operations are in ``ops.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
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


# How often a call to a supervisor whose host pid is known looks whether it still runs.
HOLDER_CHECK_MS: Final = 200


def host_pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) host process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state is the first field after the command name, which may hold ')'.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def control_call(
    endpoint: str, request: dict[str, Any], *, timeout_s: float | None = 5.0,
    holder: int | None = None,
) -> dict[str, Any]:
    """One request to a running supervisor; raises the typed error it answered with.

    ``holder``: the supervisor's host pid (from a ping). If it ends before it answers,
    Unavailable at once rather than a Timeout: the request died with it unread."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not sock.poll(HOLDER_CHECK_MS if holder is not None or deadline is None
                            else max(0, int((deadline - time.monotonic()) * 1000))):
            if holder is not None and not host_pid_alive(holder):
                raise Unavailable(f"the supervisor (pid {holder}) ended before it "
                                  f"answered {request.get('op')!r}: whether it was done "
                                  "is not known (look again once one is serving)")
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"the supervisor did not answer {request.get('op')!r} "
                              f"in {timeout_s} s")
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
