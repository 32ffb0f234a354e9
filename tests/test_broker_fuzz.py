"""The live broker under malformed input: every message gets a typed refusal, none a crash.

Each test connects a raw DEALER to a running in-process supervisor's broker, sends what
no SDK would send, and drives the supervisor's one loop (``sup.step``) until the reply
arrives. A message the broker cannot decode must be answered (``ok: false`` with a
stable code), never dropped, and never allowed to stop the loop that serves every other
process; a real agent run afterwards proves the broker neither crashed nor stalled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentlibos.protocol.wire import MAGIC, TOKEN_BYTES, WireReply, decode_reply, encode_request
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

# What an unauthenticated peer may be told: its frames were bad, too big, or not its own.
REFUSALS = frozenset({"EPROTO", "ELIMIT", "EAUTH"})
FORGED = bytes(TOKEN_BYTES)  # 32 zero bytes: the right shape, never a live process's token


class Peer:
    """A raw DEALER on the broker socket; waits for replies by stepping the supervisor."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(sup.paths.broker_endpoint)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_s: float = 20.0) -> list[bytes]:
        """The next reply, stepping the (single-threaded) supervisor until it comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sock.poll(0):
                return self.sock.recv_multipart()
            self.sup.step(0.05)
            if self.sock.poll(10):
                return self.sock.recv_multipart()
        raise AssertionError(f"no reply from the broker within {timeout_s} s")

    def ask(self, frames: list[bytes], timeout_s: float = 20.0) -> list[bytes]:
        self.send(frames)
        return self.recv(timeout_s)


@pytest.fixture
def peer(sup: Supervisor) -> Iterator[Peer]:
    p = Peer(sup)
    try:
        yield p
    finally:
        p.close()


def _refusal(reply_frames: list[bytes], want: frozenset[str] = REFUSALS) -> WireReply:
    """Assert the reply is one typed refusal and return it decoded."""
    assert len(reply_frames) == 2, reply_frames  # [magic, header]: the DEALER drops the id
    reply = decode_reply(reply_frames)
    assert reply.ok is False
    err = reply.error
    assert isinstance(err, dict)
    assert err["code"] in want, err
    assert isinstance(err["type"], str) and isinstance(err["message"], str) and err["message"]
    return reply


def _header(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _assert_broker_serves_agents(sup: Supervisor, make_image: MakeImage) -> None:
    """A real agent, after everything, still gets its syscalls answered."""
    img = make_image("survivor", """
        def main(ctx, args):
            ctx.fs.write_text("probe.txt", "still here")
            ctx.obj.put("probe", {"n": 1})
            return {"text": ctx.fs.read_text("probe.txt"), "obj": ctx.obj.get("probe"),
                    "pid": ctx.proc.getpid()}
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("exited", "returned"), rec.error
    assert rec.result == {"text": "still here", "obj": {"n": 1}, "pid": rec.pid}


def _valid_header(req_id: int = 1, pid: int = 1, call: str = "proc.getpid") -> bytes:
    return encode_request(req_id, pid, call, {}, FORGED)[1]


# Each case: frames sent, the code the broker must answer with, the id it must echo.
CASES: list[tuple[str, list[bytes], str, int | None]] = [
    ("an empty frame", [b""], "EPROTO", None),
    ("garbage", [b"\x00\xffgarbage"], "EPROTO", None),
    ("the magic alone", [MAGIC], "EPROTO", None),
    ("no token frame", [MAGIC, _valid_header(3)], "EPROTO", None),
    ("a newer version", [b"ALOS/2", _valid_header(3), FORGED], "EPROTO", None),
    ("an older version", [b"ALOS/0", _valid_header(3), FORGED], "EPROTO", None),
    ("garbage JSON", [MAGIC, b'{"id": 3, "pid":', FORGED], "EPROTO", None),
    ("invalid UTF-8", [MAGIC, b'{"id": 3, "call": "\xff\xfe"}', FORGED], "EPROTO", None),
    ("a JSON array", [MAGIC, b"[1, 2, 3]", FORGED], "EPROTO", None),
    ("nesting past the recursion limit", [MAGIC, b"[" * 200_000, FORGED], "EPROTO", None),
    # Python raises a bare ValueError for integer literals past 4300 digits.
    ("an id too long to parse", [MAGIC, b'{"id": ' + b"7" * 5000 + b"}", FORGED], "EPROTO",
     None),
    ("args with an int too long to parse",
     [MAGIC, b'{"id":3,"pid":1,"call":"x","args":{"n":' + b"7" * 9000 + b"}}", FORGED],
     "EPROTO", None),
    ("a string id", [MAGIC, _header(id="3", pid=1, call="x", args={}), FORGED], "EPROTO", None),
    ("a boolean pid", [MAGIC, _header(id=3, pid=True, call="x", args={}), FORGED], "EPROTO", 3),
    ("no call", [MAGIC, _header(id=3, pid=1, args={}), FORGED], "EPROTO", 3),
    ("a long call", [MAGIC, _header(id=3, pid=1, call="x" * 65, args={}), FORGED], "EPROTO", 3),
    ("list args", [MAGIC, _header(id=3, pid=1, call="x", args=[1]), FORGED], "EPROTO", 3),
    ("an extra field", [MAGIC, _header(id=3, pid=1, call="x", args={}, caps=["*"]), FORGED],
     "EPROTO", 3),
    ("a short token", [MAGIC, _valid_header(4), b"x" * 31], "EPROTO", 4),
    ("a long token", [MAGIC, _valid_header(4), b"x" * 33], "EPROTO", 4),
    ("too many blobs", [MAGIC, _valid_header(5), FORGED, *[b"b"] * 5], "EPROTO", 5),
    ("a forged token", [MAGIC, _valid_header(6), FORGED], "EAUTH", 6),
    ("a pid that never existed", [MAGIC, _valid_header(7, pid=10**6), FORGED], "EAUTH", 7),
    ("a huge pid", [MAGIC, _valid_header(8, pid=10**200), FORGED], "EAUTH", 8),
    ("a negative pid", [MAGIC, _valid_header(9, pid=-1), FORGED], "EAUTH", 9),
    # Authentication comes first: an outsider learns nothing about the syscall table.
    ("an unknown call", [MAGIC, _valid_header(10, call="no.such"), FORGED], "EAUTH", 10),
    ("a huge id", [MAGIC, _valid_header(10**300), FORGED], "EAUTH", 10**300),
]


@pytest.mark.parametrize(("frames", "code", "rid"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_malformed_message_gets_a_typed_refusal(
    sup: Supervisor, peer: Peer, frames: list[bytes], code: str, rid: int | None
) -> None:
    reply = _refusal(peer.ask(frames), frozenset({code}))
    assert reply.id == rid


def test_every_malformed_message_in_a_burst_is_answered_in_order_and_agents_still_run(
    sup: Supervisor, peer: Peer, make_image: MakeImage
) -> None:
    # Sent back to back before the loop runs at all: more than one drain's worth
    # (512), so the broker must also carry work over between steps.
    rounds = 25
    for _ in range(rounds):
        for _, frames, _, _ in CASES:
            peer.send(frames)
    for _ in range(rounds):
        for name, _, code, rid in CASES:
            reply = _refusal(peer.recv(), frozenset({code}))
            assert reply.id == rid, name
    _assert_broker_serves_agents(sup, make_image)


def test_oversized_messages_below_the_zmq_cap_get_a_limit_error(
    sup: Supervisor, peer: Peer, make_image: MakeImage
) -> None:
    limits = sup.broker.limits
    assert limits.max_header_bytes + 1 < limits.zmq_maxmsgsize
    big_header = _header(id=1, pid=1, call="fs.write", args={"pad": "x" * limits.max_header_bytes})
    _refusal(peer.ask([MAGIC, big_header, FORGED]), frozenset({"ELIMIT"}))

    big_blob = b"b" * (limits.max_blob_bytes + 1)
    assert len(big_blob) < limits.zmq_maxmsgsize
    reply = _refusal(peer.ask([MAGIC, _valid_header(2), FORGED, big_blob]), frozenset({"ELIMIT"}))
    assert reply.id == 2

    # Every blob within its own limit, the message as a whole over the total.
    n = limits.max_total_bytes // limits.max_blob_bytes + 1
    assert n <= limits.max_blobs
    blobs = [b"c" * limits.max_blob_bytes] * n
    reply = _refusal(peer.ask([MAGIC, _valid_header(3), FORGED, *blobs]), frozenset({"ELIMIT"}))
    assert reply.id == 3
    del big_blob, blobs
    _assert_broker_serves_agents(sup, make_image)


# A stream of random messages: raw bytes, and request-shaped ones with parts broken.
_HUGE = "\x00huge"  # stands for an integer literal too long for json.dumps to write
_junk = (st.none() | st.booleans() | st.integers() | st.text(max_size=70) | st.just(_HUGE)
         | st.lists(st.integers(), max_size=3)
         | st.dictionaries(st.text(max_size=5), st.integers() | st.just(_HUGE), max_size=3))


@st.composite
def _near_headers(draw: st.DrawFn) -> bytes:
    """A request header with each field right, wrong, or missing; maybe extra fields."""
    fields: dict[str, Any] = {}
    for key, good in (("id", st.integers(min_value=0, max_value=2**64)),
                      ("pid", st.integers(min_value=-3, max_value=2**64)),
                      ("call", st.sampled_from(["proc.getpid", "obj.put", "fs.read", "x"])),
                      ("args", st.dictionaries(st.text(max_size=5), _junk, max_size=3))):
        choice = draw(st.sampled_from(["good"] * 9 + ["wrong", "missing", "huge"]))
        if choice == "good":
            fields[key] = draw(good)
        elif choice == "wrong":
            fields[key] = draw(_junk)
        elif choice == "huge":
            fields[key] = _HUGE if key != "args" else {"n": _HUGE}
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        fields[draw(st.sampled_from(["token", "caps", "ok", ""]))] = draw(_junk)
    digits = draw(st.sampled_from([3, 4300, 4301, 7000]))
    return json.dumps(fields).replace(json.dumps(_HUGE), "9" * digits).encode()


@st.composite
def _messages(draw: st.DrawFn) -> list[bytes]:
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        return draw(st.lists(st.binary(max_size=200), min_size=1, max_size=8))
    frames = [
        draw(st.sampled_from([MAGIC, MAGIC, MAGIC, MAGIC, MAGIC, b"ALOS/2", b"ALOS", b""])),
        draw(st.sampled_from([True, True, True, False]).flatmap(
            lambda near: _near_headers() if near else st.binary(max_size=100))),
        draw(st.sampled_from([True, True, False]).flatmap(
            lambda right: st.just(FORGED) if right else st.binary(max_size=40))),
        *draw(st.lists(st.binary(max_size=50), max_size=6)),
    ]
    cut = draw(st.sampled_from([None, None, None, None, 1, 2]))
    return frames[:cut]


def test_a_random_stream_of_messages_is_all_refused_and_agents_still_run(
    sup: Supervisor, peer: Peer, make_image: MakeImage
) -> None:
    seen: list[str] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(frames=_messages())
    # Always among the examples, whatever the draw: one that reaches authentication and
    # one that once stopped the loop (an integer literal too long to parse).
    @example(frames=[MAGIC, _valid_header(1), FORGED])
    @example(frames=[MAGIC, b'{"id":' + b"9" * 4301 + b"}", FORGED])
    def send_one(frames: list[bytes]) -> None:
        reply = _refusal(peer.ask(frames))
        seen.append(str(reply.error["code"]))

    send_one()
    assert len(seen) >= 100  # the stream was really sent, not skipped
    assert {"EPROTO", "EAUTH"} <= set(seen)
    _assert_broker_serves_agents(sup, make_image)
