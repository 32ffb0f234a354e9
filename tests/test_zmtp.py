"""The SDK's own ZeroMQ DEALER (protocol/zmtp.py) against libzmq's real ROUTER.

What the broker's side does is libzmq's: these tests bind a pyzmq ROUTER like the
broker's and check that what our DEALER sends arrives as the same frames, and what the
ROUTER sends comes back whole, over a real ipc:// socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from agentlibos.errors import ProtocolError, Timeout
from agentlibos.protocol import zmtp
from agentlibos.protocol.zmtp import Dealer


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    endpoint = f"ipc://{tmp_path}/r.sock"
    sock.bind(endpoint)
    try:
        yield sock, endpoint
    finally:
        sock.close(0)
        ctx.term()


def echo(sock: zmq.Socket[bytes], transform: bytes = b"") -> list[bytes]:
    assert sock.poll(5000), "the ROUTER got nothing"
    frames = sock.recv_multipart()
    sock.send_multipart([frames[0], *(f + transform for f in frames[1:])])
    return frames[1:]


def test_frames_of_every_size_class_arrive_unchanged_both_ways(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    d = Dealer(endpoint)
    # Empty, the largest short frame, the smallest long one, one past a read, 3 MiB.
    msg = [b"", b"a" * 255, b"b" * 256, os.urandom(70_000), os.urandom(3 << 20)]
    d.send(msg)
    assert echo(sock, b"!") == msg
    assert d.recv(5) == [f + b"!" for f in msg]
    d.close()


def test_a_call_sent_at_once_after_connecting_is_answered_every_time(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    """libzmq reads a message that came in the same read as the greeting only once
    more bytes arrive: the DEALER must not send one with it (it waits for the
    ROUTER's greeting first). Many fresh connections, each calling at once."""
    sock, endpoint = router
    for i in range(300):
        d = Dealer(endpoint)
        d.send([b"call", str(i).encode()])
        assert echo(sock) == [b"call", str(i).encode()], i
        assert d.recv(5) == [b"call", str(i).encode()]
        d.close()


def test_a_timeout_loses_nothing_the_answer_comes_with_the_next_receive(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    d = Dealer(endpoint)
    d.send([b"slow"])
    assert sock.poll(5000)
    ident, body = sock.recv_multipart()
    with pytest.raises(Timeout):
        d.recv(0.05)
    sock.send_multipart([ident, body, b"late"])
    assert d.recv(5) == [b"slow", b"late"]
    d.close()


def test_heartbeats_are_answered_while_waiting_so_the_router_keeps_the_peer(
        tmp_path: Path) -> None:
    """A ROUTER with heartbeats drops a peer that sends nothing for its timeout; the
    DEALER answers each PING with a PONG while it waits for a slow answer."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    beating = ctx.socket(zmq.ROUTER)
    beating.setsockopt(zmq.LINGER, 0)
    beating.setsockopt(zmq.HEARTBEAT_IVL, 30)
    beating.setsockopt(zmq.HEARTBEAT_TIMEOUT, 200)
    endpoint = f"ipc://{tmp_path}/beat.sock"
    beating.bind(endpoint)
    try:
        d = Dealer(endpoint)
        d.send([b"wait"])
        assert beating.poll(5000)
        ident, body = beating.recv_multipart()

        def late() -> None:  # answer well past the heartbeat timeout
            time.sleep(0.8)
            beating.send_multipart([ident, body])

        t = threading.Thread(target=late)
        t.start()
        assert d.recv(5) == [b"wait"]
        t.join()
        d.close()
    finally:
        beating.close(0)
        ctx.term()


@contextlib.contextmanager
def odd_peer(path: Path, *sends: bytes) -> Iterator[str]:
    """A hand-written peer at ``path`` (yields its ipc:// endpoint): on one connection
    it sends each of ``sends`` after reading what the DEALER sent, then hangs up."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        for data in sends:
            conn.sendall(data)
            conn.recv(1000)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield f"ipc://{path}"
    finally:
        t.join()
        srv.close()


def test_a_peer_that_does_not_speak_zmtp_3_is_refused(tmp_path: Path) -> None:
    not_zmq = b"HTTP/1.1 400 Bad Request\r\n".ljust(64, b" ")
    with odd_peer(tmp_path / "not-zmq.sock", not_zmq) as endpoint, \
            pytest.raises(ProtocolError, match="ZMTP 3"):
        Dealer(endpoint)


def test_a_command_inside_a_message_is_a_protocol_error(tmp_path: Path) -> None:
    """A peer that speaks ZMTP but breaks a message with a command (libzmq never does)."""
    broken = b"\x01\x02ab" + b"\x04\x07\x04PING\x00\x00"  # "ab", MORE; then a PING
    with odd_peer(tmp_path / "odd.sock", zmtp.GREETING + zmtp.READY, broken) as endpoint:
        d = Dealer(endpoint)
        with pytest.raises(ProtocolError, match="inside a message"):
            d.recv(5)
        d.close()


def test_only_ipc_endpoints_are_taken() -> None:
    with pytest.raises(ProtocolError, match="ipc://"):
        Dealer("tcp://127.0.0.1:5555")


def test_the_broker_going_away_is_a_protocol_error_not_a_hang(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    d = Dealer(endpoint)
    d.send([b"x"])
    echo(sock)
    assert d.recv(5) == [b"x"]
    d.send([b"y"])
    assert sock.poll(5000)
    sock.close(0)  # the ROUTER goes away without answering
    with pytest.raises(ProtocolError, match="closed"):
        d.recv(5)
    d.close()
