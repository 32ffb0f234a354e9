"""A ZeroMQ DEALER in the calling thread: ZMTP 3.0, NULL mechanism, one AF_UNIX socket.

An AgentProcess talks to the broker's ROUTER one call at a time. libzmq would give it a
context, an I/O thread and a mailbox for that: each call crossed two threads each way
(the agent's thread -> the I/O thread -> the socket, and back), the connection was made
after containment on the spawn's critical path, and the thread cost the agent memory.
Here the agent's own thread writes and reads the stream socket, and a pooled process
connects while it waits for its assignment (docs/benchmarks.md, issue 14).

What it speaks is the wire protocol of ZeroMQ (ZMTP/3.0, rfc.zeromq.org/spec/23, with
the NULL security mechanism of spec 37): the broker's side is still libzmq's ROUTER,
which treats this peer like any other DEALER and, as for any peer, trusts nothing in
it -- every request carries its pid and token. The broker never sets heartbeats, so no
PING comes; one that does is answered with a PONG all the same.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Final

from agentlibos.errors import ProtocolError, Timeout

_SIGNATURE_HEAD: Final = b"\xff" + b"\x00" * 8 + b"\x7f"
# Signature, version 3.0, mechanism "NULL" padded to 20 bytes, as-server 0, filler.
GREETING: Final = _SIGNATURE_HEAD + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
# A frame's flags (ZMTP 3.0 section 2.5), and the sizes in its header.
MORE: Final = 0x01
LONG: Final = 0x02
COMMAND: Final = 0x04
U64: Final = struct.Struct(">Q")
U32: Final = struct.Struct(">I")
# Read at least this much at a time: a reply usually arrives whole in one read.
CHUNK: Final = 1 << 16


def prop(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + U32.pack(len(value)) + value


def command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    if len(data) < 256:
        return bytes([COMMAND, len(data)]) + data
    return bytes([COMMAND | LONG]) + U64.pack(len(data)) + data


# What libzmq's DEALER says: its type and an empty identity (the ROUTER picks one).
READY: Final = command(b"READY", prop(b"Socket-Type", b"DEALER")
                        + prop(b"Identity", b""))


def ipc_address(endpoint: str) -> str:
    """The AF_UNIX address of ``ipc://PATH`` (``ipc://@NAME``: the abstract NAME);
    ValueError for another transport."""
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"the broker's endpoint must be ipc://, not {endpoint!r}")
    path = endpoint[len("ipc://"):]
    return "\0" + path[1:] if path.startswith("@") else path


def frame_header(buf: bytearray, pos: int) -> tuple[int, int, int] | None:
    """(flags, start, size) of the frame whose header begins at ``pos`` of ``buf``;
    None while the header is not whole; ValueError for flags ZMTP does not define."""
    n = len(buf) - pos
    if n < 2:
        return None
    flags = buf[pos]
    if flags & ~(MORE | LONG | COMMAND):
        raise ValueError(f"a frame with flags {flags:#x}")
    if not flags & LONG:
        return flags, pos + 2, buf[pos + 1]
    if n < 9:
        return None
    return flags, pos + 9, U64.unpack_from(buf, pos + 1)[0]


def encode(frames: list[bytes]) -> list[bytes]:
    """``frames`` as one message on the wire: each frame's flags and size, then it."""
    out: list[bytes] = []
    last = len(frames) - 1
    for i, f in enumerate(frames):
        more = MORE if i < last else 0
        n = len(f)
        out.append(bytes((more, n)) if n < 256 else bytes((more | LONG,)) + U64.pack(n))
        out.append(f)
    return out


class Dealer:
    """One connection to a ROUTER at ``ipc://PATH``; blocking, not thread-safe (the SDK
    makes one call at a time, as with a libzmq socket)."""

    def __init__(self, endpoint: str, *, timeout_s: float = 30.0) -> None:
        try:
            address = ipc_address(endpoint)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._buf = bytearray()
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._greeted = False
        try:
            self._sock.connect(address)
            # Greetings first, then READY: as a libzmq peer does. libzmq reads a READY
            # (and a message after it) that arrives with the greeting in one read only
            # once more bytes come, so a message sent with both would wait unanswered.
            self._sock.sendall(GREETING)
            self._check_greeting(self._take(64, time.monotonic() + timeout_s))
            self._sock.sendall(READY)
        except BaseException:
            self._sock.close()
            raise

    @staticmethod
    def _check_greeting(greeting: bytes) -> None:
        try:
            check_greeting(greeting)
        except ValueError as e:
            raise ProtocolError(f"the broker's endpoint {e}") from None

    def _handshake(self, deadline: float | None) -> None:
        """The broker's READY, read with the first answer: no round trip of its own."""
        name, _body = self._read_command(deadline)
        if name != b"READY":
            raise ProtocolError(f"the broker's handshake sent {name!r}, not READY")
        self._greeted = True

    def close(self) -> None:
        self._sock.close()

    def send(self, frames: list[bytes]) -> None:
        """Send ``frames`` as one message. Small ones go out in one write."""
        parts = encode(frames)
        if sum(len(p) for p in parts) <= CHUNK:
            self._sock.sendall(b"".join(parts))
        else:  # no copy of a large blob into one buffer
            for p in parts:
                self._sock.sendall(p)

    def recv(self, timeout_s: float | None = None) -> list[bytes]:
        """The next message; Timeout if none is whole within ``timeout_s`` (what arrived
        of it stays buffered for the next call). PING is answered, other commands
        are skipped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._greeted:
            self._handshake(deadline)
        while True:
            frames: list[bytes] = []
            pos = 0
            while True:
                flags, start, end = self._frame_at(pos, deadline)
                if flags & COMMAND:
                    if frames:  # ZMTP sends a message's frames together
                        raise ProtocolError("the broker sent a command inside a message")
                    self._on_command(bytes(self._buf[start:end]))
                    del self._buf[:end]
                    break
                frames.append(bytes(self._buf[start:end]))
                pos = end
                if not flags & MORE:
                    del self._buf[:end]
                    return frames

    def _frame_at(self, pos: int, deadline: float | None) -> tuple[int, int, int]:
        """(flags, start, end) of the frame at ``pos`` of the buffer, reading until it
        is whole."""
        while True:
            try:
                header = frame_header(self._buf, pos)
            except ValueError as e:
                raise ProtocolError(f"malformed frame from the broker: {e}") from None
            if header is not None:
                break
            self._need(len(self._buf) + 1, deadline)
        flags, start, size = header
        self._need(start + size, deadline)
        return flags, start, start + size

    def _read_command(self, deadline: float | None) -> tuple[bytes, bytes]:
        flags, start, end = self._frame_at(0, deadline)
        if not flags & COMMAND:
            raise ProtocolError("the broker sent a message before its handshake")
        data = bytes(self._buf[start:end])
        del self._buf[:end]
        return _command_of(data)

    def _on_command(self, data: bytes) -> None:
        name, body = _command_of(data)
        if name == b"PING":
            # PONG echoes the ping's context (after its 2-byte TTL).
            self._sock.sendall(command(b"PONG", body[2:]))
        elif name == b"ERROR":
            reason = body[1:1 + body[0]].decode(errors="replace") if body else ""
            raise ProtocolError(f"the broker closed the connection: {reason}")

    def _need(self, n: int, deadline: float | None) -> None:
        while len(self._buf) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll.poll(max(1, int(left * 1000))):
                    raise Timeout("no answer from the broker in time")
            chunk = self._sock.recv(max(CHUNK, n - len(self._buf)))
            if not chunk:
                raise ProtocolError("the broker closed the connection")
            self._buf += chunk

    def _take(self, n: int, deadline: float | None) -> bytes:
        self._need(n, deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


def _command_of(data: bytes) -> tuple[bytes, bytes]:
    try:
        return split_command(data)
    except ValueError:
        raise ProtocolError("malformed command from the broker") from None


def check_greeting(greeting: bytes) -> None:
    """A peer's 64-byte greeting: ZMTP 3 or later, the NULL mechanism; else ValueError."""
    if greeting[:1] != b"\xff" or greeting[9:10] != b"\x7f" or greeting[10] < 3:
        raise ValueError("does not speak ZMTP 3")
    if greeting[12:32].rstrip(b"\x00") != b"NULL":
        raise ValueError("asks for a security mechanism other than NULL")


def split_command(data: bytes) -> tuple[bytes, bytes]:
    """(name, body) of a command frame's data; ValueError if malformed."""
    if not data or len(data) < 1 + data[0]:
        raise ValueError("a malformed command")
    return data[1:1 + data[0]], data[1 + data[0]:]
