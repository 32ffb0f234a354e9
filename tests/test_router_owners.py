"""The router's bounds per owner (an agent: the broker counts by cgroup) and its answer
to running out of descriptors, against real peers over a real socket."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agentlibos.broker.server import cgroup_owner, own_cgroup
from agentlibos.protocol import zmtp
from agentlibos.protocol.router import Router
from tests.test_router import (
    closed_by_router,
    handshaken,
    next_message,
    pump,
    raw_peer,
    take,
)


def make(endpoint: str, **kw: Any) -> Router:
    kw.setdefault("max_frame", 8 << 20)
    kw.setdefault("max_message", 16 << 20)
    return Router(endpoint, **kw)


def _one_owner(pid: int) -> bytes:
    return b"agent"


def test_an_owner_past_its_connections_is_hung_up_on_and_another_is_not(
    endpoint: str
) -> None:
    owners = iter([b"a", b"a", b"a", b"b"])
    r = make(endpoint, max_peers_per_owner=2, owner_of=lambda pid: next(owners))
    try:
        a1, a2 = raw_peer(endpoint), raw_peer(endpoint)
        pump(r, lambda: r.peers() == 2)
        a3 = raw_peer(endpoint)
        assert closed_by_router(a3, r)
        b1 = raw_peer(endpoint)
        pump(r, lambda: r.peers() == 3)
        a1.close()  # one of a's closes: a has room again (its own count, not b's)
        pump(r, lambda: r.peers() == 2)
        for s in (a2, a3, b1):
            s.close()
    finally:
        r.close()


def _send(s: socket.socket, data: bytes) -> threading.Thread:
    """``data`` sent in a thread (the router may not read it until later, or hang up)."""
    def send() -> None:
        with contextlib.suppress(OSError):
            s.sendall(data)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def test_past_an_owners_bound_of_half_sent_messages_its_connections_are_closed(
    endpoint: str
) -> None:
    owners = iter([b"agent"] * 4 + [b"other"])
    r = make(endpoint, max_frame=4 << 20, max_message=4 << 20,
             owner_of=lambda pid: next(owners))
    assert r.owner_bytes == (4 << 20) + (8 << 20)
    try:
        peers = [handshaken(endpoint, r) for _ in range(4)]
        head = bytes([zmtp.LONG]) + zmtp.U64.pack(4 << 20)
        for s in peers:
            s.settimeout(None)
            _send(s, head + b"x" * ((4 << 20) - 100_000))  # each one short of complete
        pump(r, lambda: r.disconnected >= 1, 20)
        assert r._owned_bytes(b"agent") <= r.owner_bytes + (4 << 20)
        # Another owner is served as ever.
        other = handshaken(endpoint, r)
        other.sendall(b"\x00\x05hello")
        assert next_message(r)[1:] == [b"hello"]
        for s in (*peers, other):
            s.close()
    finally:
        r.close()


def test_a_single_connection_is_never_closed_for_its_own_largest_message(endpoint: str) -> None:
    r = make(endpoint, max_frame=8 << 20, max_message=8 << 20, owner_of=_one_owner)
    try:
        s = handshaken(endpoint, r)
        s.settimeout(None)
        _send(s, bytes([0x02]) + zmtp.U64.pack(8 << 20) + b"y" * (8 << 20))
        assert len(next_message(r, 20)[1]) == 8 << 20
        s.close()
    finally:
        r.close()


def test_a_large_frame_before_ready_ends_the_connection(endpoint: str) -> None:
    r = make(endpoint)
    try:
        s = raw_peer(endpoint)
        s.sendall(zmtp.GREETING + bytes([zmtp.COMMAND | zmtp.LONG]) + zmtp.U64.pack(1 << 20))
        assert closed_by_router(s, r)
        assert r.disconnected == 1
        s.close()
    finally:
        r.close()


def test_out_of_descriptors_the_backlog_is_closed_and_the_loop_not_woken_again(
    endpoint: str, tmp_path: Path
) -> None:
    # In a child process whose descriptor limit the router then exhausts.
    code = f"""
import os, resource, select, socket, sys
sys.path.insert(0, {os.getcwd()!r})
from agentlibos.protocol.router import Router
r = Router({endpoint!r}, max_frame=1 << 20, max_message=1 << 20)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print("ready", flush=True)
sys.stdin.readline()
r.has_input()  # the accepts fail with EMFILE: each is taken and closed
p = select.poll()
p.register(r.fileno(), select.POLLIN)
print("quiet" if not p.poll(100) else "woken", r.disconnected, flush=True)
"""
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            peers = [raw_peer(endpoint) for _ in range(5)]
            proc.stdin.write("\n")
            proc.stdin.flush()
            quiet, refused = proc.stdout.readline().split()
            assert quiet == "quiet" and int(refused) == 5
            assert all(take(s) is None for s in peers)  # closed, not left in the backlog
            for s in peers:
                s.close()
        finally:
            proc.kill()


def test_the_broker_counts_connections_by_cgroup_and_falls_back_to_the_pid() -> None:
    owner = cgroup_owner()
    # This process's own cgroup is the supervisor's: no agent's, so the pid counts.
    assert owner(os.getpid()) == b"pid:%d" % os.getpid()
    other = cgroup_owner(lambda: b"/somewhere-else")
    mine = own_cgroup()
    expected = b"pid:%d" % os.getpid() if mine in (None, b"/") else b"cg:" + (mine or b"")
    assert other(os.getpid()) == expected
    assert owner(2 ** 22 + 12345) == b"pid:%d" % (2 ** 22 + 12345)  # no such process
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/b.sock"
