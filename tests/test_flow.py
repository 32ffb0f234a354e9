"""Flow control at the broker's door: bounded work, bounded replies, bounded audit.

Unit tests of the bookkeeping, then real hostile agents that ignore the SDK: one sends
thousands of frames with a wrong token, one pipelines requests without waiting.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentlibos.broker.flow import ByteRate, FlowLimits, InFlight, RefusalLimiter
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_refusals_of_a_peer_are_audited_and_the_rest_summarised() -> None:
    clock = FakeClock()
    lim = RefusalLimiter(FlowLimits(audit_burst=3, window_s=10, cut_after=100), clock)
    verdicts = [lim.refused(b"p") for _ in range(8)]
    assert [a for a, _ in verdicts] == [True] * 3 + [False] * 5
    assert all(s == 0 for _, s in verdicts)
    clock.now = 11.0  # a new window: the five suppressed ones are summarised
    assert lim.refused(b"p") == (True, 5)


def test_a_peer_that_keeps_sending_bad_frames_is_cut_off() -> None:
    lim = RefusalLimiter(FlowLimits(audit_burst=2, window_s=1e9, cut_after=10), FakeClock())
    results = [lim.refused(b"p") for _ in range(10)]
    assert not lim.is_cut(b"other")
    assert lim.is_cut(b"p")
    assert results[-1] == (False, 8)  # the last word summarises everything suppressed


def test_the_refusal_table_itself_is_bounded() -> None:
    lim = RefusalLimiter(FlowLimits(), FakeClock(), max_peers=100)
    for i in range(1000):
        lim.refused(i.to_bytes(4, "big"))
    assert len(lim._peers) == 100


def test_a_process_has_at_most_max_in_flight_requests() -> None:
    f = InFlight(FlowLimits(max_in_flight=2))
    assert f.admit(7) and f.admit(7)
    assert not f.admit(7)
    assert f.admit(8)
    f.done(7)
    assert f.admit(7)
    assert f.of(7) == 2


BAD_CREDENTIAL_FLOOD = """
    import json, secrets, zmq

    def main(ctx, args):
        z = zmq.Context()
        s = z.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ctx.client.endpoint)
        bad = secrets.token_bytes(32)
        for i in range(args["n"]):
            h = {"id": i + 1, "pid": ctx.pid, "call": "proc.getpid", "args": {}}
            s.send_multipart([b"ALOS/1", json.dumps(h).encode(), bad])
        got = 0
        while s.poll(1000):
            s.recv_multipart()
            got += 1
        return {"replies": got, "pid": ctx.proc.getpid()}
"""


def test_thousands_of_bad_frames_leave_a_bounded_audit_and_a_working_broker(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("flood", BAD_CREDENTIAL_FLOOD)
    rec = run_proc(sup, img, {"n": 3000}, timeout_s=60)
    assert rec.state == "exited", rec.error
    assert rec.result["pid"] == rec.pid  # its own, correct calls still work
    refusals = [r for r in sup.store.audit_records() if r.call in ("auth", "wire")]
    # 5 audited one by one, then summaries; before, 3,000 frames made 3,000 records.
    assert 5 <= len(refusals) <= 10, len(refusals)
    summaries = [r for r in refusals if "suppressed" in r.detail]
    assert summaries and summaries[-1].detail["cut"] is True
    # Cut off after 1,000: the rest are dropped unanswered.
    assert rec.result["replies"] <= 1000


RECONNECTING_FLOOD = """
    import json, secrets, zmq

    def main(ctx, args):
        z = zmq.Context()
        for i in range(args["n"]):  # a connection of its own for every bad frame
            s = z.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ctx.client.endpoint)
            h = {"id": i + 1, "pid": ctx.pid, "call": "proc.getpid", "args": {}}
            s.send_multipart([b"ALOS/1", json.dumps(h).encode(), secrets.token_bytes(32)])
            s.poll(2000)
            s.close()
        return ctx.proc.getpid()
"""


def test_a_connection_per_bad_frame_is_still_audited_as_one_sender_and_named(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("reflood", RECONNECTING_FLOOD)
    rec = run_proc(sup, img, {"n": 200}, timeout_s=120)
    assert rec.state == "exited" and rec.result == rec.pid, rec.error
    with sup.store.transaction():
        sup.broker.summarize_refusals()
    refusals = [r for r in sup.store.audit_records() if r.call in ("auth", "wire")]
    one_by_one = [r for r in refusals if "suppressed" not in r.detail]
    # Before, each new connection had an allowance of its own: 200 records.
    assert len(one_by_one) == 5, len(one_by_one)
    assert all(r.pid == rec.pid for r in one_by_one)
    assert len(one_by_one) + sum(r.detail["suppressed"] for r in refusals
                                 if "suppressed" in r.detail) == 200


PIPELINER = """
    import json, zmq

    def main(ctx, args):
        child = ctx.proc.spawn("sleeper")
        z = zmq.Context()
        s = z.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ctx.client.endpoint)
        token = ctx.client._token

        def send(i, call, call_args):
            h = {"id": i, "pid": ctx.pid, "call": call, "args": call_args}
            s.send_multipart([b"ALOS/1", json.dumps(h).encode(), token])

        # Four calls that stay in flight (suspended on a child that sleeps)...
        for i in range(1, 5):
            send(i, "proc.wait", {"pid": child, "timeout": args["wait_s"]})
        # ...and more at once, past the bound.
        for i in range(5, 5 + args["more"]):
            send(i, "proc.getpid", {})
        order = []  # every reply as it came: [id, ok, error type]
        while len(order) < 4 + args["more"] and s.poll(10_000):
            r = json.loads(s.recv_multipart()[1])
            order.append([r["id"], r["ok"], (r.get("error") or {}).get("type")])
        return order
"""


def _pipelined(sup: Supervisor, make_image: MakeImage, more: int,
               wait_s: float) -> tuple[int, list[list[Any]]]:
    """(pid, the replies in the order they came) of an agent that pipelines four waits
    of ``wait_s`` and ``more`` getpids on a raw DEALER."""
    make_image("sleeper", "import time\ndef main(ctx, args):\n    time.sleep(60)\n")
    img = make_image("pipe", PIPELINER, caps=["proc:spawn:sleeper"])
    rec = run_proc(sup, img, {"more": more, "wait_s": wait_s}, timeout_s=60)
    assert rec.state == "exited", rec.error
    order: list[list[Any]] = rec.result
    assert len(order) == 4 + more, order
    return rec.pid, order


def test_a_request_beyond_the_in_flight_limit_is_refused_at_once_without_work(
    sup: Supervisor, make_image: MakeImage
) -> None:
    pid, order = _pipelined(sup, make_image, 1, 3)
    # The fifth is answered first: refused at once, before the waits end.
    assert order[0] == [5, False, "LimitExceeded"], order
    served = [e.call for e in sup.store.journal_entries(pid)]
    assert "proc.getpid" not in served  # refused before any handler ran


def test_past_its_in_flight_bound_a_process_is_not_read_until_a_call_ends(
    sup: Supervisor, make_image: MakeImage
) -> None:
    """The first request past the bound is refused at once; the rest wait unread in the
    process's own socket (no refusal each: a flood would cost the loop one per request)
    and are served once its calls end."""
    _, order = _pipelined(sup, make_image, 20, 2)
    assert order[0] == [5, False, "LimitExceeded"], order
    refused = [o for o in order if not o[1] and o[0] > 4]
    assert refused == [order[0]], order  # only the first past the bound
    # The other 19 were served after the waits ended (and each wait's reply is first).
    waits = [i for i, o in enumerate(order) if o[0] <= 4]
    served = [i for i, o in enumerate(order) if o[0] > 5]
    assert len(served) == 19 and all(o[1] for o in order if o[0] > 5), order
    assert min(served) > min(waits), order


def test_a_process_moving_more_than_its_byte_rate_waits_and_others_do_not() -> None:
    clock = FakeClock()
    r = ByteRate(rate=100.0, burst=50.0, clock=clock)
    assert r.delay(1, 50) == 0.0  # the burst
    assert r.delay(1, 100) == pytest.approx(1.0)  # 100 bytes more: a second at 100 B/s
    assert r.delay(2, 50) == 0.0  # another process has its own bucket
    clock.now = 5.0  # refilled, up to the burst only
    assert r.delay(1, 50) == 0.0
    assert r.delay(1, 1) > 0
