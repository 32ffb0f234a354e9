"""The broker's own ROUTER (protocol/router.py) against real peers over a real socket.

Peers are libzmq's DEALER (pyzmq), the SDK's DEALER (protocol/zmtp.py) and hand-written
byte streams for what neither would send. The router runs in the test's thread, as it
runs in the supervisor's loop: nothing moves unless :func:`pump` is called.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import zmq

from agentlibos.protocol import zmtp
from agentlibos.protocol.router import Full, Router
from agentlibos.protocol.zmtp import Dealer


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/b.sock"


def make(endpoint: str, **kw: int | float) -> Router:
    kw.setdefault("max_frame", 8 << 20)
    kw.setdefault("max_message", 16 << 20)
    return Router(endpoint, **kw)  # type: ignore[arg-type]


@pytest.fixture
def router(endpoint: str) -> Iterator[Router]:
    r = make(endpoint)
    yield r
    r.close()


# Messages the pump received, per router, for next_message to hand out in order.
_received: dict[int, list[list[bytes]]] = {}


def pump(r: Router, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run the router as the loop does (poll its fd, then receive) until ``until()``."""
    p = select.poll()
    p.register(r.fileno(), select.POLLIN)
    inbox = _received.setdefault(id(r), [])
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("the router did not get there in time")
        if not r.pending():
            p.poll(10)
        m = r.recv()
        if m is not None:
            inbox.append(m)


def next_message(r: Router, timeout_s: float = 10.0) -> list[bytes]:
    inbox = _received.setdefault(id(r), [])
    pump(r, lambda: bool(inbox), timeout_s)
    return inbox.pop(0)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def pumped(r: Router, fn: Callable[[], object]) -> object:
    """``fn()`` run in a thread while the router is pumped; its result (or error)."""
    t, out = in_thread(fn)
    pump(r, lambda: not t.is_alive())
    return out[0]


def connect(r: Router, endpoint: str) -> Dealer:
    """The SDK's DEALER, connected (its handshake needs the router pumped)."""
    d = pumped(r, partial(Dealer, endpoint))
    assert isinstance(d, Dealer), d
    return d


def raw_peer(endpoint: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(endpoint[len("ipc://"):])
    s.settimeout(5)
    return s


def assert_quiet(r: Router) -> None:
    """Nothing left to do: the router's fd does not wake the loop (a reply it could not
    finish writing would keep it readable, and the loop spinning)."""
    assert r.recv() is None
    p = select.poll()
    p.register(r.fileno(), select.POLLIN)
    assert not p.poll(50) and not r.pending()


def take(s: socket.socket, n: int = 1 << 20) -> bytes | None:
    """What ``s`` has to read now (b"" if nothing yet); None once the router hung up."""
    s.setblocking(False)
    try:
        data = s.recv(n)
    except BlockingIOError:
        return b""
    except ConnectionResetError:
        return None
    finally:
        s.settimeout(5)
    return data or None


def received(s: socket.socket, r: Router, n: int) -> bytes:
    """Pump until ``s`` has read ``n`` bytes; they."""
    got = b""

    def enough() -> bool:
        nonlocal got
        got += take(s) or b""
        return len(got) >= n

    pump(r, enough)
    return got


def handshaken(endpoint: str, r: Router) -> socket.socket:
    """A hand-written peer past the handshake (greeting and READY both ways)."""
    s = raw_peer(endpoint)
    s.sendall(zmtp.GREETING + zmtp.READY)
    got = received(s, r, 64 + len(zmtp.command(b"READY", zmtp.prop(b"Socket-Type", b"ROUTER"))))
    assert got[:1] == b"\xff" and b"ROUTER" in got
    return s


def closed_by_router(s: socket.socket, r: Router) -> bool:
    """Pump until the router hangs up on ``s`` (EOF on its side)."""
    pump(r, lambda: take(s) is None)
    return True


# ------------------------------------------------------------------- speaking ZMTP


@pytest.mark.parametrize("client", ["libzmq", "sdk"])
def test_frames_of_every_size_class_arrive_unchanged_both_ways(
        router: Router, endpoint: str, client: str) -> None:
    # Empty first and last (a trailing empty frame is its header alone on the wire).
    msg = [b"", b"a" * 255, b"b" * 256, os.urandom(70_000), os.urandom(3 << 20), b""]
    if client == "libzmq":
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        d.send_multipart(msg)
        got = next_message(router)
        assert got[1:] == msg
        router.send([got[0], *(f + b"!" if f else f for f in msg)])
        assert pumped(router, d.recv_multipart) == [f + b"!" if f else f for f in msg]
        assert_quiet(router)
        d.close()
        ctx.term()
    else:
        sdk = connect(router, endpoint)
        t, _ = in_thread(partial(sdk.send, msg))
        got = next_message(router)
        t.join()
        assert got[1:] == msg
        router.send([got[0], *(f + b"!" if f else f for f in msg)])
        assert pumped(router, partial(sdk.recv, 10)) == [f + b"!" if f else f for f in msg]
        assert_quiet(router)
        sdk.close()


def test_many_peers_each_calling_as_soon_as_connected_are_all_answered(
        router: Router, endpoint: str) -> None:
    """The SDK's DEALER sends its call right after the handshake; the libzmq DEALER
    sends it with its greeting. Both must be read whole, every time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    answered = 0
    for i in range(100):
        body = str(i).encode()
        if i % 2:
            sdk = connect(router, endpoint)
            sdk.send([b"call", body])
            m = next_message(router)
            router.send(m)
            assert pumped(router, partial(sdk.recv, 5)) == [b"call", body]
            sdk.close()
        else:
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(endpoint)
            d.send_multipart([b"call", body])
            m = next_message(router)
            assert m[1:] == [b"call", body]
            router.send(m)
            assert pumped(router, d.recv_multipart) == [b"call", body]
            d.close()
        answered += 1
    ctx.term()
    assert answered == 100
    pump(router, lambda: router.peers() == 0)  # hung-up peers are forgotten


def test_a_ping_is_answered_with_a_pong_carrying_its_context(
        router: Router, endpoint: str) -> None:
    s = handshaken(endpoint, router)
    s.sendall(zmtp.command(b"PING", b"\x00\x0actx-42"))
    pong = zmtp.command(b"PONG", b"ctx-42")
    assert received(s, router, len(pong)) == pong
    s.close()


# ------------------------------------------------------------- peers that misbehave


@pytest.mark.parametrize(("what", "data"), [
    ("not ZMTP", b"GET / HTTP/1.1\r\n\r\n".ljust(64, b" ")),
    ("another mechanism", zmtp.GREETING[:12] + b"PLAIN".ljust(20, b"\x00") + b"\x00" * 32),
    ("a message before READY", zmtp.GREETING + b"\x00\x05hello"),
    ("a socket type a ROUTER does not talk to",
     zmtp.GREETING + zmtp.command(b"READY", zmtp.prop(b"Socket-Type", b"PUB"))),
    ("a command inside a message",
     zmtp.GREETING + zmtp.READY + b"\x01\x01a" + zmtp.command(b"PING", b"\x00\x00")),
    ("unknown flag bits", zmtp.GREETING + zmtp.READY + b"\x80\x01a"),
    ("a frame over the limit",
     zmtp.GREETING + zmtp.READY + b"\x02" + struct.pack(">Q", (8 << 20) + 1)),
    ("too many frames", zmtp.GREETING + zmtp.READY + b"\x01\x00" * 65),
    ("a message over the limit",
     zmtp.GREETING + zmtp.READY + (b"\x03" + struct.pack(">Q", 6 << 20)) + b"x" * (6 << 20)
     + (b"\x03" + struct.pack(">Q", 6 << 20)) + b"x" * (6 << 20)
     + (b"\x02" + struct.pack(">Q", 6 << 20))),
])
def test_a_peer_that_breaks_the_protocol_is_hung_up_on_and_others_are_served(
        router: Router, endpoint: str, what: str, data: bytes) -> None:
    bad = raw_peer(endpoint)
    t, _ = in_thread(lambda: bad.sendall(data))
    assert closed_by_router(bad, router), what
    t.join(5)
    assert router.disconnected == 1
    # A well-behaved peer is served as before.
    good = connect(router, endpoint)
    good.send([b"still here"])
    m = next_message(router)
    assert m[1:] == [b"still here"]
    good.close()
    bad.close()


def test_a_connection_that_never_finishes_its_handshake_is_closed(endpoint: str) -> None:
    r = make(endpoint, handshake_s=0.2)
    try:
        silent = raw_peer(endpoint)
        pump(r, lambda: r.peers() == 1)
        time.sleep(0.3)
        late = raw_peer(endpoint)  # an accept is when the router looks at the old ones
        assert closed_by_router(silent, r)
        assert r.disconnected == 1 and r.peers() == 1
        late.close()
        silent.close()
    finally:
        r.close()


def test_past_max_peers_a_new_connection_is_closed_at_once(endpoint: str) -> None:
    r = make(endpoint, max_peers=2)
    try:
        a, b = raw_peer(endpoint), raw_peer(endpoint)
        pump(r, lambda: r.peers() == 2)
        c = raw_peer(endpoint)
        assert closed_by_router(c, r)
        assert r.peers() == 2
        for s in (a, b, c):
            s.close()
    finally:
        r.close()


# ---------------------------------------------------------------------- flow control


def test_peers_are_served_in_turn_and_a_flood_waits_in_its_own_socket(
        router: Router, endpoint: str) -> None:
    flooder = handshaken(endpoint, router)
    flood = (b"\x00\x08" + b"flooding") * 200_000  # 2 MB of tiny messages
    t, _ = in_thread(lambda: flooder.sendall(flood))
    polite = handshaken(endpoint, router)
    polite.sendall(b"\x00\x06polite")
    time.sleep(0.2)
    served = [next_message(router)[1] for _ in range(40)]
    # Peers take turns, one message each: the polite one is not served after the flood.
    assert served.index(b"polite") <= 2, served
    # Not served, the flood is not read: its sender is still blocked in its own socket.
    time.sleep(0.3)
    assert t.is_alive()
    flooder.close()
    polite.close()
    t.join(5)


@pytest.mark.parametrize("bound", ["replies", "bytes"])
def test_a_reply_to_a_peer_that_does_not_read_is_refused_past_its_queue_bound(
        endpoint: str, bound: str) -> None:
    """A peer has at most max_queued replies, and max_queued_bytes, that its socket has
    not taken; past either, Full (the broker then backlogs or drops)."""
    if bound == "replies":
        router = make(endpoint, max_queued=4, max_queued_bytes=1 << 30)
        expected = 4
    else:
        router = make(endpoint, max_queued=1000, max_queued_bytes=3 << 20)
        expected = 4  # the 4th takes it past 3 MiB not written (the socket took some)
    try:
        deaf = handshaken(endpoint, router)
        deaf.sendall(b"\x00\x01x")
        rid = next_message(router)[0]
        big = b"r" * (1 << 20)  # past what the socket's own buffer takes
        sent = 0
        with pytest.raises(Full):
            for _ in range(100):
                router.send([rid, big])
                sent += 1
        assert sent == expected
        # Once it reads, its queue empties and replies are taken again, whole.
        got = received(deaf, router, sent * (9 + len(big)))
        assert got == (b"\x02" + struct.pack(">Q", len(big)) + big) * sent
        router.send([rid, b"again"])
        assert received(deaf, router, 7) == b"\x00\x05again"
        deaf.close()
    finally:
        router.close()


def test_a_reply_to_a_peer_that_is_gone_is_dropped_quietly(
        router: Router, endpoint: str) -> None:
    s = handshaken(endpoint, router)
    s.sendall(b"\x00\x01x")
    rid = next_message(router)[0]
    s.close()
    pump(router, lambda: router.peers() == 0)
    router.send([rid, b"nobody"])  # no error: as libzmq's EHOSTUNREACH, nobody to answer
    router.send([b"\x00never", b"x"])


def test_close_removes_the_socket_file(endpoint: str) -> None:
    r = make(endpoint)
    path = endpoint[len("ipc://"):]
    assert os.path.exists(path)
    r.close()
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        Dealer(endpoint, timeout_s=1)


def test_a_paused_peer_is_not_read_until_resumed_and_others_are_served(
        router: Router, endpoint: str) -> None:
    a, b = handshaken(endpoint, router), handshaken(endpoint, router)
    a.sendall(b"\x00\x05first")
    rid = next_message(router)[0]
    router.pause(rid)
    a.sendall(b"\x00\x06second")
    b.sendall(b"\x00\x05other")
    assert next_message(router)[1] == b"other"
    with pytest.raises(AssertionError, match="in time"):
        next_message(router, timeout_s=0.3)  # a's second waits in its socket
    assert_quiet(router)  # and its pending input does not keep waking the loop
    router.send([rid, b"replies still go"])  # a paused peer is still answered
    assert received(a, router, 18) == b"\x00\x10replies still go"
    router.resume(rid)
    assert next_message(router) == [rid, b"second"]
    a.close()
    b.close()
