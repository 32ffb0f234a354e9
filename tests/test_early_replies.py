"""Answers to pure reads leave before their turn's COMMIT statement; all others after it.

Real agents on a real supervisor. The broker's sends and the store's commits are watched
from the supervisor's side: each reply is logged with whether the turn's transaction was
still open when it left. docs/store.md says why a read may go early and nothing else may.
"""

from __future__ import annotations

import json
from typing import Any

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

MIXED = """
    def main(ctx, args):
        ctx.fs.write_text("f.txt", "x")
        for i in range(args["n"]):
            ctx.obj.put("k", {"i": i})
            ctx.fs.stat("f.txt")
            assert ctx.obj.get("k") == {"i": i}
        return "ok"
"""


Event = tuple[str, Any]


def _watch(sup: Supervisor) -> list[Event]:
    """Log, in order, every reply the broker sends and every SQL statement the store
    runs (SQLite's own trace hook)."""
    events: list[Event] = []
    send = sup.broker._send

    def watched(frames: list[bytes]) -> bool:
        events.append(("send", json.loads(bytes(frames[2]))))
        return send(frames)

    sup.broker._send = watched  # type: ignore[method-assign]
    store: Any = sup.store
    store._db.set_trace_callback(lambda sql: events.append(("sql", sql)))
    return events


def _after(events: list[Event], i: int) -> list[str]:
    """The statements run after event ``i`` up to and including the next COMMIT."""
    out: list[str] = []
    for kind, what in events[i + 1:]:
        if kind == "sql":
            out.append(what)
            if what == "COMMIT":
                break
    return out


def _before(events: list[Event], i: int) -> str | None:
    """The last write or COMMIT run before event ``i``."""
    for kind, what in reversed(events[:i]):
        if kind == "sql" and (what == "COMMIT" or what.startswith(("INSERT", "UPDATE"))):
            return str(what)
    return None


def test_reads_are_answered_before_the_commit_and_writes_only_after_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Any
) -> None:
    img = make_image("mixed", MIXED, caps=["fs:rw:./**"])
    events = _watch(sup)
    rec = run_proc(sup, img, {"n": 50}, cwd=tmp_path, timeout_s=60)
    assert (rec.state, rec.result) == ("exited", "ok"), rec.error
    sends = [(i, what.get("result")) for i, (kind, what) in enumerate(events)
             if kind == "send" and what.get("ok")]
    stats = [i for i, r in sends if isinstance(r, dict) and "mode" in r]
    puts = [i for i, r in sends if isinstance(r, dict) and "version" in r and "value" not in r]
    gets = [i for i, r in sends if isinstance(r, dict) and "value" in r]
    assert len(stats) == len(gets) == len(puts) == 50
    for i in stats + gets:
        # A read's answer left before its audit record and journal row were written
        # and committed (they come right after it, in one transaction)...
        after = _after(events, i)
        assert after[-1] == "COMMIT", after
        assert any(s.startswith("INSERT INTO audit") for s in after), after
        assert any(s.startswith("INSERT INTO journal") for s in after), after
    for i in puts:
        # ...a write's only once everything its turn wrote was committed.
        assert _before(events, i) == "COMMIT", events[max(0, i - 8):i + 1]
    # And what every read answered is in the journal now, in order.
    calls = [e.call for e in sup.store.journal_entries(rec.pid, limit=10_000)]
    assert calls.count("obj.get") == calls.count("fs.stat") == 50


PIPELINED = """
    import json, zmq

    def main(ctx, args):
        z = zmq.Context()
        s = z.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ctx.client.endpoint)
        token = ctx.client._token
        order = []
        for round in range(args["rounds"]):
            # A write and a read of what it wrote, sent together: one turn serves both.
            for i, (call, a) in enumerate((("obj.put", {"name": "k", "value": round}),
                                           ("obj.get", {"name": "k"}))):
                h = {"id": 2 * round + i + 1, "pid": ctx.pid, "call": call, "args": a}
                s.send_multipart([b"ALOS/1", json.dumps(h).encode(), token])
            for _ in range(2):
                assert s.poll(10_000)
                reply = json.loads(s.recv_multipart()[1])
                assert reply["ok"], reply
                order.append((reply["id"], reply["result"].get("value")))
        return order
"""


def test_a_peer_with_a_write_answer_waiting_gets_its_read_answer_after_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("pipelined", PIPELINED, caps=[])
    rec = run_proc(sup, img, {"rounds": 30}, timeout_s=60)
    assert rec.state == "exited", rec.error
    ids = [i for i, _ in rec.result]
    assert ids == sorted(ids)  # replies in the order the requests came
    # Each read saw the write sent just before it.
    assert [v for i, v in rec.result if i % 2 == 0] == list(range(30))


def test_the_handshake_is_answered_before_the_commit_of_its_running_state(
    sup: Supervisor, make_image: MakeImage
) -> None:
    """proc.start (EARLY_ANSWER) leaves like a read: a spawned agent starts its entry
    while the turn that marked it running commits. Its state is still committed."""
    img = make_image("hello", """
        def main(ctx, args):
            return ctx.proc.getpid()
    """, caps=[])
    events = _watch(sup)
    rec = run_proc(sup, img, {}, timeout_s=60)
    assert rec.state == "exited" and rec.result == rec.pid, rec.error
    starts = [i for i, (kind, what) in enumerate(events) if kind == "send"
              and isinstance(what.get("result"), dict) and "entry_module" in what["result"]]
    assert len(starts) == 1
    after = _after(events, starts[0])
    assert after[-1] == "COMMIT", after
    # The row that says it is running was written before the answer left, and that
    # answer left before the COMMIT that carries the row.
    assert not any(s.startswith("UPDATE processes") for s in after), after
    written = [what for kind, what in events[:starts[0]]
               if kind == "sql" and isinstance(what, str)]
    last_commit = max(i for i, s in enumerate(written) if s == "COMMIT")
    assert any(s.startswith("UPDATE processes SET state = 'running', ready_at")
               for s in written[last_commit + 1:]), written[last_commit:]
    assert rec.ready_at is not None
