"""A SOCK_SEQPACKET socket the zygote writes to without ever blocking."""

from __future__ import annotations

import collections
import json
import os
import socket
from typing import Any


class Channel:
    """JSON packets (with fds) to a peer that may be busy: never block.

    The supervisor's own send to the zygote blocks while the zygote is busy, and a burst
    of spawns in one of its turns fills both directions: if the zygote blocked too, each
    would wait for the other for ever (the forker's sends block, so the zygote must not
    block on it either). What does not fit waits in ``outbox`` (with its own copies of
    the fds; the caller closes its own), in order, and goes out as the socket drains
    (``flush``, from the zygote's loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: collections.deque[tuple[bytes, list[int]]] = collections.deque()

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(msg).encode()
        if not self.outbox and self._try_send(data, fds or []):
            return
        self.outbox.append((data, [os.dup(fd) for fd in fds or []]))

    def _try_send(self, data: bytes, fds: list[int]) -> bool:
        try:
            send_packet(self.sock, data, fds)
        except BlockingIOError:
            return False
        except OSError:
            # The peer is gone: the supervisor (PDEATHSIG will end us), or the forker
            # (the zygote hears of its exit). Nothing to deliver to.
            pass
        return True

    def flush(self) -> None:
        while self.outbox:
            data, fds = self.outbox[0]
            if not self._try_send(data, fds):
                return
            self.outbox.popleft()
            for fd in fds:
                os.close(fd)

    def drop(self) -> None:
        """Forget what has not gone out (the peer is being stopped), closing its fds."""
        for _data, fds in self.outbox:
            for fd in fds:
                os.close(fd)
        self.outbox.clear()


def send_packet(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """One packet, with ``fds`` attached when there are any (raises as send does)."""
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)
