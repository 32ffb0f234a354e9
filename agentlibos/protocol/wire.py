"""The broker's wire protocol, version 1. Pure encode/decode; no sockets here.

A request is a ZeroMQ multipart message sent from a DEALER socket::

    [b"ALOS/1", header, token, blob...]

``header`` is a UTF-8 JSON object ``{"id": int, "pid": int, "call": str, "args": {...}}``
with an optional ``"seq": int`` (the client's per-process call sequence number, >= 1);
``token`` is the 32-byte secret the supervisor handed the process at fork (never in env
or argv); each ``blob`` is raw bytes referenced by the call (file contents), so binary
data is never base64'd. The broker's ROUTER socket sees a routing-id frame in front.

A reply is ``[b"ALOS/1", header, blob...]`` with header
``{"id": int, "ok": true, "result": ...}`` or
``{"id": int|null, "ok": false, "error": {"type", "code", "message", "details"}}``.

Every malformed, truncated, oversized or wrong-version request is answered with a typed
:class:`~agentlibos.errors.ProtocolError` reply; decoding never raises anything else.

Arguments are held to what every handler may assume, whatever the call, at any depth:
no non-finite number (``NaN``, ``Infinity``, or ``1e999``, which parses to infinity:
one ``timeout=NaN`` once stopped every timer in the supervisor), no string or key that
is not valid text (a lone surrogate from a ``\\udc80`` escape cannot be encoded to
store or log), and no nesting deeper than :attr:`WireLimits.max_depth`. Such a request
gets an :class:`~agentlibos.errors.InvalidArgument` reply carrying its id and naming
the call and the argument; the check walks iteratively and never recurses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agentlibos.errors import (
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    ProtocolError,
    to_wire,
)
from agentlibos.kernel.text import is_text

MAGIC: Final[bytes] = b"ALOS/1"
TOKEN_BYTES: Final[int] = 32


@dataclass(frozen=True)
class WireLimits:
    # 1 MiB (the most args, a result or an object may take) and room for the call's
    # envelope around it, so a value of exactly the documented size fits in one message.
    max_header_bytes: int = (1 << 20) + (64 << 10)
    max_blob_bytes: int = 32 << 20
    max_total_bytes: int = 48 << 20
    max_blobs: int = 4
    # Containers nested in the header, the header object itself counting as one.
    max_depth: int = 64
    # libzmq drops a peer that sends a frame larger than this before buffering it; it
    # is the hard memory guard, the limits above give the typed error below it.
    zmq_maxmsgsize: int = 64 << 20


DEFAULT_LIMITS: Final = WireLimits()
# The journal stores seq in an SQLite INTEGER (signed 64-bit).
MAX_SEQ: Final[int] = 2**63 - 1
_HEADER_FIELDS: Final = frozenset({"id", "pid", "call", "args", "seq"})
# Numbers of this many digits may not fit a float's range (an exponent does that too).
_EXPONENT_OR_LONG: Final = re.compile(r"\d[eE]|\d{300}")


@dataclass
class WireRequest:
    id: int
    pid: int
    call: str
    args: dict[str, Any]
    token: bytes = field(repr=False)
    blobs: list[bytes] = field(default_factory=list, repr=False)
    seq: int | None = None  # the client's call sequence number, when it sent one
    # Set when an argument value is refused (non-finite, not text, too deep): the
    # broker answers it with this error once the sender is authenticated.
    args_error: InvalidArgument | None = field(default=None, repr=False)


class WireError(Exception):
    """A request that cannot be decoded; carries the typed error and the id if known."""

    def __init__(self, error: LibOSError, req_id: int | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.req_id = req_id


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _loc(path: list[str | int]) -> str:
    # json.dumps escapes what is not text, so a bad key can be named safely.
    return "args" + "".join(f"[{json.dumps(k)}]" if isinstance(k, str) else f"[{k}]"
                            for k in path)


def check_args(call: str, args: Any, max_depth: int = DEFAULT_LIMITS.max_depth) -> None:
    """Refuse non-finite numbers, non-text strings and keys, and deep nesting in ``args``.

    Raises :class:`InvalidArgument` naming the call, the argument and where in it. Public
    so that every other way arguments reach a handler (a JIT tool's syscalls over its
    pipe) holds them to the same rules. Iterative: a stack of (value, path, depth);
    ``args`` itself is at depth 2, under the header.
    """
    stack: list[tuple[Any, list[str | int], int]] = [(args, [], 2)]
    while stack:
        value, path, depth = stack.pop()
        problem = None
        if isinstance(value, str):
            if not is_text(value):
                problem = "a string that is not valid text (a lone surrogate)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                problem = f"a non-finite number ({value})"
        elif isinstance(value, dict | list):
            if depth > max_depth:
                problem = f"nesting deeper than {max_depth}"
            elif isinstance(value, dict):
                for k, v in value.items():
                    if not is_text(k):
                        path = [*path, k]
                        problem = "a key that is not valid text (a lone surrogate)"
                        break
                    stack.append((v, [*path, k], depth + 1))
            else:
                stack.extend((v, [*path, i], depth + 1) for i, v in enumerate(value))
        if problem is not None:
            arg = json.dumps(path[0]) if path else "args"
            safe_call = call if is_text(call) else json.dumps(call)
            raise InvalidArgument(
                f"{safe_call}: argument {arg} is invalid: {problem} at {_loc(path)}",
                call=safe_call, where=_loc(path),
            )


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _salvage_id(text: str) -> int | None:
    """The id of a header too deep to parse whole: read its top-level members one by
    one until the one that is too deep (``id`` comes first from our own clients)."""
    dec = json.JSONDecoder()
    try:
        i = _skip_ws(text, 0)
        if text[i:i + 1] != "{":
            return None
        i += 1
        while True:
            i = _skip_ws(text, i)
            if text[i:i + 1] != '"':
                return None
            key, i = dec.raw_decode(text, i)  # a string: it cannot be deep
            i = _skip_ws(text, i)
            if text[i:i + 1] != ":":
                return None
            value, i = dec.raw_decode(text, _skip_ws(text, i + 1))
            if key == "id":
                return value if _is_int(value) else None
            i = _skip_ws(text, i)
            if text[i:i + 1] != ",":
                return None
            i += 1
    except (ValueError, RecursionError):
        return None


def _header_size_error(header: bytes, limits: WireLimits) -> LibOSError | None:
    if len(header) > limits.max_header_bytes:
        return LimitExceeded(f"header of {len(header)} bytes exceeds {limits.max_header_bytes}")
    return None


def _frames_size_error(total: int, blobs: Sequence[bytes],
                       limits: WireLimits) -> LibOSError | None:
    if total > limits.max_total_bytes:
        return LimitExceeded(f"message of {total} bytes exceeds {limits.max_total_bytes}")
    if len(blobs) > limits.max_blobs:
        return ProtocolError(f"too many blob frames ({len(blobs)})")
    for b in blobs:
        if len(b) > limits.max_blob_bytes:
            return LimitExceeded(f"blob of {len(b)} bytes exceeds {limits.max_blob_bytes}")
    return None


def size_error(frames: Sequence[bytes], limits: WireLimits = DEFAULT_LIMITS) -> LibOSError | None:
    """Why the broker would refuse an encoded request (magic, header, token, blobs) for
    its sizes alone, or None. The SDK asks before it sends: the broker refuses such a
    request before it reads its sequence number, so a client that numbered it anyway
    would be out of step with the journal for every call after it."""
    return (_header_size_error(frames[1], limits)
            or _frames_size_error(sum(len(f) for f in frames), frames[3:], limits))


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
    too_big = _header_size_error(header_raw, limits)
    if too_big is not None:
        raise WireError(too_big, None)
    try:
        # As json.loads(bytes) decodes; 'surrogatepass' lets an encoded surrogate through
        # to be refused below with the request's id, not here without it.
        # Our clients send UTF-8 starting with "{": skip the detection (a second
        # byte of 0 would be UTF-16, which detect_encoding still decides).
        enc = ("utf-8" if header_raw[:1] == b"{" and header_raw[1:2] != b"\x00"
               else json.detect_encoding(header_raw))
        text = header_raw.decode(enc, "surrogatepass")
    except (UnicodeDecodeError, LookupError) as e:
        raise WireError(ProtocolError(f"header is not valid JSON: {e}"), None) from None
    try:
        header = json.loads(text)
    # ValueError, not just JSONDecodeError: an integer literal past the interpreter's
    # int/str digit limit (4300) raises a plain ValueError, and one escaping here would
    # stop the supervisor's loop for every process.
    except ValueError as e:
        raise WireError(ProtocolError(f"header is not valid JSON: {e}"), None) from None
    except RecursionError:
        raise WireError(
            ProtocolError(f"header nested deeper than {limits.max_depth}"), _salvage_id(text)
        ) from None
    if not isinstance(header, dict):
        raise WireError(ProtocolError("header must be a JSON object"), None)
    req_id = header.get("id")
    rid = req_id if _is_int(req_id) else None
    if rid is None:
        raise WireError(ProtocolError("header 'id' must be an integer"), None)
    too_big = _frames_size_error(total, blobs, limits)
    if too_big is not None:
        raise WireError(too_big, rid)
    pid, call, args = header.get("pid"), header.get("call"), header.get("args", {})
    if not _is_int(pid):
        raise WireError(ProtocolError("header 'pid' must be an integer"), rid)
    if not isinstance(call, str) or not call or len(call) > 64 or not is_text(call):
        raise WireError(ProtocolError("header 'call' must be a short non-empty string"), rid)
    if not isinstance(args, dict):
        raise WireError(ProtocolError("header 'args' must be a JSON object"), rid)
    extra = set(header) - _HEADER_FIELDS
    if extra:
        raise WireError(ProtocolError(f"unknown header field(s): {sorted(extra)}"), rid)
    seq = header.get("seq")
    if seq is not None and not _is_int(seq):
        seq = 0  # refused just below, like any other value out of range
    if "seq" in header and not (isinstance(seq, int) and 1 <= seq <= MAX_SEQ):
        raise WireError(ProtocolError(
            f"header 'seq' must be an integer from 1 to {MAX_SEQ}"), rid)
    if len(token) != TOKEN_BYTES:
        raise WireError(ProtocolError("credential frame has the wrong length"), rid)
    args_error: InvalidArgument | None = None
    # The walk costs Python time per value, so skip it when the raw text shows that
    # nothing it looks for can be there: no '\\u' escape or raw surrogate (no bad text),
    # no exponent, long number or NaN/Infinity (no non-finite float), and too few
    # brackets to nest deeply.
    if ("\\u" in text or not is_text(text) or "NaN" in text or "Infinity" in text
            or _EXPONENT_OR_LONG.search(text) is not None
            or text.count("[") + text.count("{") >= limits.max_depth):
        try:
            check_args(call, args, limits.max_depth)
        except InvalidArgument as e:
            # Not raised here: a bad argument value is judged after the sender is
            # authenticated and its call numbered, so the refusal is the process's own
            # (journaled and audited as its call), and a forged frame cannot make it.
            args_error = e
    assert isinstance(pid, int)  # checked above; narrows for the type checker
    return WireRequest(rid, pid, call, args, token, list(blobs), seq, args_error)


# One encoder for every header: json.dumps with any option builds a new JSONEncoder per
# call (~1 us of a round trip, on both ends); encode() keeps no state between calls.
# UTF-8, not \u escapes: a value's size limit is its size (CJK text took 6 bytes a
# character, an emoji 12). A lone surrogate, which UTF-8 cannot hold, goes as its JSON
# escape (backslashreplace writes exactly that), for the receiver to refuse as not text.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def encode_request(
    req_id: int, pid: int, call: str, args: dict[str, Any], token: bytes,
    blobs: list[bytes] | None = None, seq: int | None = None,
) -> list[bytes]:
    fields: dict[str, Any] = {"id": req_id, "pid": pid, "call": call, "args": args}
    if seq is not None:
        fields["seq"] = seq
    header = _utf8(_COMPACT.encode(fields))
    return [MAGIC, header, token, *(blobs or [])]


def encode_ok(req_id: int, result: Any, blobs: list[bytes] | None = None) -> list[bytes]:
    header = _utf8(_COMPACT.encode({"id": req_id, "ok": True, "result": result}))
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
