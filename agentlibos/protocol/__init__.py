"""The ALOS wire format, shared by the SDK (in the sandbox) and the broker."""

from agentlibos.protocol.wire import (
    DEFAULT_LIMITS,
    MAGIC,
    TOKEN_BYTES,
    WireError,
    WireLimits,
    WireReply,
    WireRequest,
    decode_reply,
    decode_request,
    encode_error,
    encode_ok,
    encode_request,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAGIC",
    "TOKEN_BYTES",
    "WireError",
    "WireLimits",
    "WireReply",
    "WireRequest",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_ok",
    "encode_request",
]
