"""The broker's wire protocol, version 1. Pure encode/decode; no sockets here.

A request is a ZeroMQ multipart message sent from a DEALER socket::

    [b"ALOS/1", header, token, blob...]

``header`` is a UTF-8 JSON object ``{"id": int, "pid": int, "call": str, "args": {...}}``;
``token`` is the 32-byte secret the supervisor handed the process at fork (never in env
or argv); each ``blob`` is raw bytes referenced by the call (file contents), so binary
data is never base64'd. The broker's ROUTER socket sees a routing-id frame in front.

A reply is ``[b"ALOS/1", header, blob...]`` with header
``{"id": int, "ok": true, "result": ...}`` or
``{"id": int|null, "ok": false, "error": {"type", "code", "message", "details"}}``.

Every malformed, truncated, oversized or wrong-version request is answered with a typed
:class:`~agentlibos.errors.ProtocolError` reply; decoding never raises anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from agentlibos.errors import LibOSError, LimitExceeded, ProtocolError, to_wire

MAGIC: Final[bytes] = b"ALOS/1"
TOKEN_BYTES: Final[int] = 32


@dataclass(frozen=True)
class WireLimits:
    max_header_bytes: int = 1 << 20
    max_blob_bytes: int = 32 << 20
    max_total_bytes: int = 48 << 20
    max_blobs: int = 4
    # libzmq drops a peer that sends a frame larger than this before buffering it; it
    # is the hard memory guard, the limits above give the typed error below it.
    zmq_maxmsgsize: int = 64 << 20


DEFAULT_LIMITS: Final = WireLimits()


@dataclass
class WireRequest:
    id: int
    pid: int
    call: str
    args: dict[str, Any]
    token: bytes = field(repr=False)
    blobs: list[bytes] = field(default_factory=list, repr=False)


class WireError(Exception):
    """A request that cannot be decoded; carries the typed error and the id if known."""

    def __init__(self, error: LibOSError, req_id: int | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.req_id = req_id


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode_request(frames: list[bytes], limits: WireLimits = DEFAULT_LIMITS) -> WireRequest:
    """Decode the frames after the routing id; raise :class:`WireError` if bad."""
    if not frames:
        raise WireError(ProtocolError("empty message"), None)
    if frames[0] != MAGIC:
        raise WireError(
            ProtocolError(
                f"unsupported protocol {frames[0][:16]!r}; this broker speaks {MAGIC!r}"
            ),
            None,
        )
    if len(frames) < 3:
        raise WireError(ProtocolError("truncated message: need header and token frames"), None)
    total = sum(len(f) for f in frames)
    header_raw, token, blobs = frames[1], frames[2], frames[3:]
    if len(header_raw) > limits.max_header_bytes:
        raise WireError(
            LimitExceeded(f"header of {len(header_raw)} bytes exceeds {limits.max_header_bytes}"),
            None,
        )
    try:
        header = json.loads(header_raw)
    # ValueError, not just JSONDecodeError: an integer literal past the interpreter's
    # int/str digit limit (4300) raises a plain ValueError, and one escaping here would
    # stop the supervisor's loop for every process. UnicodeDecodeError is a ValueError.
    except (ValueError, RecursionError) as e:
        raise WireError(ProtocolError(f"header is not valid JSON: {e}"), None) from None
    if not isinstance(header, dict):
        raise WireError(ProtocolError("header must be a JSON object"), None)
    req_id = header.get("id")
    rid = req_id if _is_int(req_id) else None
    if rid is None:
        raise WireError(ProtocolError("header 'id' must be an integer"), None)
    if total > limits.max_total_bytes:
        raise WireError(
            LimitExceeded(f"message of {total} bytes exceeds {limits.max_total_bytes}"), rid
        )
    if len(blobs) > limits.max_blobs:
        raise WireError(ProtocolError(f"too many blob frames ({len(blobs)})"), rid)
    for b in blobs:
        if len(b) > limits.max_blob_bytes:
            raise WireError(
                LimitExceeded(f"blob of {len(b)} bytes exceeds {limits.max_blob_bytes}"), rid
            )
    pid, call, args = header.get("pid"), header.get("call"), header.get("args", {})
    if not _is_int(pid):
        raise WireError(ProtocolError("header 'pid' must be an integer"), rid)
    if not isinstance(call, str) or not call or len(call) > 64:
        raise WireError(ProtocolError("header 'call' must be a short non-empty string"), rid)
    if not isinstance(args, dict):
        raise WireError(ProtocolError("header 'args' must be a JSON object"), rid)
    extra = set(header) - {"id", "pid", "call", "args"}
    if extra:
        raise WireError(ProtocolError(f"unknown header field(s): {sorted(extra)}"), rid)
    if len(token) != TOKEN_BYTES:
        raise WireError(ProtocolError("credential frame has the wrong length"), rid)
    assert isinstance(pid, int)  # checked above; narrows for the type checker
    return WireRequest(rid, pid, call, args, token, list(blobs))


def encode_request(
    req_id: int, pid: int, call: str, args: dict[str, Any], token: bytes,
    blobs: list[bytes] | None = None,
) -> list[bytes]:
    header = json.dumps({"id": req_id, "pid": pid, "call": call, "args": args},
                        separators=(",", ":")).encode()
    return [MAGIC, header, token, *(blobs or [])]


def encode_ok(req_id: int, result: Any, blobs: list[bytes] | None = None) -> list[bytes]:
    header = json.dumps({"id": req_id, "ok": True, "result": result},
                        separators=(",", ":")).encode()
    return [MAGIC, header, *(blobs or [])]


def encode_error(req_id: int | None, error: LibOSError) -> list[bytes]:
    header = json.dumps({"id": req_id, "ok": False, "error": to_wire(error)},
                        separators=(",", ":"), default=str).encode()
    return [MAGIC, header]


@dataclass
class WireReply:
    id: int | None
    ok: bool
    result: Any
    error: Any
    blobs: list[bytes]


def decode_reply(frames: list[bytes]) -> WireReply:
    """Client side; raises :class:`ProtocolError` on a malformed reply."""
    if len(frames) < 2 or frames[0] != MAGIC:
        raise ProtocolError("malformed reply from the broker")
    try:
        header = json.loads(frames[1])
    except (ValueError, RecursionError) as e:  # see decode_request
        raise ProtocolError(f"reply header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("ok"), bool):
        raise ProtocolError("reply header must be an object with a boolean 'ok'")
    rid = header.get("id")
    return WireReply(
        rid if _is_int(rid) else None,
        header["ok"],
        header.get("result"),
        header.get("error"),
        list(frames[2:]),
    )
