"""Moving one multipart message on a libzmq socket: the broker's one way (its loop
uses the flags too; agents do not load libzmq, their DEALER is protocol/zmtp.py).

Plain ints, not pyzmq's enums: an enum's ``&``/``|`` builds a new member, and the
broker's hot path did that about fourteen times per request (a profile: 13 us of 150).
``send_multipart``/``recv_multipart`` do the same inside pyzmq, so the broker uses these.
"""

from __future__ import annotations

from typing import Final

import zmq

RCVMORE: Final = int(zmq.RCVMORE)
SNDMORE: Final = int(zmq.SNDMORE)
NOBLOCK: Final = int(zmq.NOBLOCK)
POLLIN: Final = int(zmq.POLLIN)
EVENTS: Final = int(zmq.EVENTS)
# A frame this large goes to libzmq without a copy; a smaller one is copied, which is
# cheaper than the zero-copy Frame object and its release hook.
ZERO_COPY_BYTES: Final = 64 << 10


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes], flags: int = 0) -> None:
    """Send ``frames`` as one message (``flags``: NOBLOCK, or 0 to block). On a ROUTER
    the first frame (the peer's routing id) decides: once it is accepted the rest of the
    message is, whole (libzmq queues messages atomically); zmq.Again or another
    ZMQError is raised at that frame."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, flags if i == last else flags | SNDMORE, copy=len(f) < ZERO_COPY_BYTES)


def recv_frames(sock: zmq.Socket[bytes], flags: int = 0) -> list[bytes]:
    """Receive one whole message (``flags``: NOBLOCK raises zmq.Again if none is
    ready). A message's frames arrive together, so only the first can be missing."""
    frames = [sock.recv(flags)]
    while sock.getsockopt(RCVMORE):
        frames.append(sock.recv(flags))
    return frames
