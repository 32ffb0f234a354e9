"""A SOCK_SEQPACKET socket the zygote writes to without ever blocking."""

from __future__ import annotations

import collections
import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Final


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


# A spawn request: a small JSON head the zygote routes by, this byte, then the spec's
# JSON, which the zygote passes on undecoded -- to the pooled process it assigns, or to
# the child it forks, which decodes it itself. json.dumps escapes every control
# character, so the first NUL is always this one.
SPEC_SEP: Final = b"\0"


def encode_spawn(op: str, pid: int, spec: Mapping[str, Any]) -> bytes:
    """A spawn (or exec) request for the zygote: head, SPEC_SEP, the spec's JSON.

    Why not one JSON object: decoding the ~9 KB spec in the zygote, and freeing it
    after the fork, wrote pages each fork had just made copy-on-write: the zygote's
    page faults per cold spawn went from ~250 to ~200 without it (docs/benchmarks.md,
    issue 14's ninth pass). A pooled spawn also paid for a decode and an encode there.

    The head carries only what the zygote decides by: the pool and cgroup the
    supervisor chose, the cgroup.procs files a pooled process is moved into, the
    namespaces (whether the zygote makes the pid namespace), whether it is a shell
    command."""
    profile = spec.get("profile") or {}
    head = {"op": op, "pid": pid, "route": {
        "pool": spec.get("pool"), "pool_cgroup": spec.get("pool_cgroup"),
        "cgroup_procs": list(profile.get("cgroup_procs") or ()),
        "namespaces": list(profile.get("namespaces") or ()),
        "command": bool(spec.get("command"))}}
    return json.dumps(head).encode() + SPEC_SEP + json.dumps(spec).encode()


def decode_head(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A packet to the zygote: its JSON head, and the spec's JSON (b"" if none)."""
    head, _sep, spec = data.partition(SPEC_SEP)
    msg = json.loads(head)
    if not isinstance(msg, dict):
        raise ValueError("a zygote request is not a JSON object")
    return msg, spec


def send_packet(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """One packet, with ``fds`` attached when there are any (raises as send does)."""
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)
