"""Waiting, the libOS way: approvals with one-shot grants, questions, events, sleeps,
revocation -- with real agents, through the supervisor's own services and control ops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentlibos.errors import Conflict, InvalidArgument, NotFound
from agentlibos.kernel.policy import parse_policy
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.control import op_caps
from tests.helpers import MakeImage

ASK_WRITES = parse_policy(
    'ask = ["fs:write:**"]\nallow = ["fs:read:**", "obj:*:*", "proc:*:*", "event:*:*",'
    ' "clock:*:*", "human:*:*"]\ndefault = "deny"\n', "ask-writes.toml")

WRITER = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for text in args["writes"]:
        try:
            ctx.fs.write_text("out.txt", text)
            out.append("ok")
        except LibOSError as e:
            out.append(f"{type(e).__name__}: {e.message}")
    return out
"""


def _pending(sup: Supervisor, pid: int) -> list[Any]:
    return [a for a in sup.store.ask_list() if a.root_pid == pid]


def _asks(sup: Supervisor, pid: int) -> list[Any]:
    return [a for a in sup.store.ask_list(pending_only=False) if a.root_pid == pid]


def _wait_for_ask(sup: Supervisor, pid: int, n: int = 1) -> Any:
    """The n-th ask of the tree, once it is pending."""
    assert sup.run_until(lambda: len(_asks(sup, pid)) >= n
                         and _asks(sup, pid)[n - 1].state == "pending", 20), "no ask"
    return _asks(sup, pid)[n - 1]


def _finish(sup: Supervisor, pid: int) -> Any:
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    return sup.store.get_process(pid)


def test_approve_once_lets_that_call_through_and_an_identical_one_asks_again(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer", WRITER, caps=["fs:rw:./**"])
    pid = sup.submit_run(str(img), {"writes": ["one", "one"]}, cwd=str(tmp_path),
                         policy=ASK_WRITES)
    first = _wait_for_ask(sup, pid)
    rec = sup.store.get_process(pid)
    assert (rec.state, rec.wait) == ("waiting", f"approval:{first.id}")
    assert first.request == f"fs:write:{tmp_path}/out.txt" and first.kind == "approval"
    assert "fs.write" in first.summary and len(first.digest) == 64
    sup.approvals.approve(first.id)
    second = _wait_for_ask(sup, pid, 2)
    assert second.id != first.id and second.digest == first.digest  # same bytes: asks again
    assert (tmp_path / "out.txt").read_text() == "one"
    sup.approvals.deny(second.id, reason="once is enough")
    done = _finish(sup, pid)
    assert done.result == ["ok", "PermissionDenied: fs.write: fs:write:"
                           f"{tmp_path}/out.txt was denied by the operator: once is enough"]
    with pytest.raises(Conflict, match="already denied"):
        sup.approvals.approve(second.id)
    verdicts = [(r.verdict, r.detail.get("approval")) for r in sup.store.audit_records(pid=pid)
                if r.call == "fs.write"]
    assert verdicts == [("ask", first.id), ("approved", first.id), ("allow", first.id),
                        ("ask", second.id), ("denied", second.id)]


def test_a_grant_is_bound_to_the_bytes_it_was_approved_for(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer2", WRITER, caps=["fs:rw:./**"])
    pid = sup.submit_run(str(img), {"writes": ["aaa", "bbb"]}, cwd=str(tmp_path),
                         policy=ASK_WRITES)
    first = _wait_for_ask(sup, pid)
    sup.approvals.approve(first.id)
    second = _wait_for_ask(sup, pid, 2)
    assert second.digest != first.digest  # other bytes: another request, never a ride
    sup.approvals.approve(second.id, always=True)
    assert _finish(sup, pid).result == ["ok", "ok"]
    assert (tmp_path / "out.txt").read_text() == "bbb"


def test_always_holds_for_the_rest_of_the_process(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer3", WRITER, caps=["fs:rw:./**"])
    pid = sup.submit_run(str(img), {"writes": ["a", "b", "c"]}, cwd=str(tmp_path),
                         policy=ASK_WRITES)
    ask = _wait_for_ask(sup, pid)
    sup.approvals.approve(ask.id, always=True)
    assert _finish(sup, pid).result == ["ok", "ok", "ok"]
    assert len([a for a in sup.store.ask_list(pending_only=False) if a.root_pid == pid]) == 1
    # The effect of the call that asked is linked to its approval, like a one-shot's;
    # the later ones name the standing approval that let them through.
    writes = [(r.verdict, r.detail.get("approval"), r.detail.get("approved", ""))
              for r in sup.store.audit_records(pid=pid) if r.call == "fs.write"]
    standing = f"always: fs:write:{tmp_path}/out.txt"
    assert writes == [("ask", ask.id, ""), ("approved", ask.id, ""),
                      ("allow", ask.id, standing), ("allow", None, standing),
                      ("allow", None, standing)]


def test_deny_mode_refuses_every_ask_at_once(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer4", WRITER, caps=["fs:rw:./**"])
    pid = sup.submit_run(str(img), {"writes": ["x"]}, cwd=str(tmp_path), policy=ASK_WRITES,
                         ask="deny")
    done = _finish(sup, pid)
    assert "refuses every ask (--ask deny)" in done.result[0]
    assert not _pending(sup, pid)


def test_deny_mode_refuses_a_question_at_once_rather_than_queue_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("asker0", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            try:
                return ctx.human.ask("Ship it?", choices=["yes", "no"])
            except PermissionDenied as e:
                return "refused: " + str(e)
    """, caps=["human:ask:*"])
    pol = parse_policy('allow = ["human:ask:*"]\n', "t.toml")
    pid = sup.submit_run(str(img), {}, policy=pol, ask="deny")
    done = _finish(sup, pid)
    assert done.result.startswith("refused: ") and "--ask deny" in done.result
    assert not _pending(sup, pid)
    assert not [a for a in sup.store.ask_list(pending_only=False) if a.root_pid == pid]


def test_a_question_waits_for_an_answer_among_its_choices(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("asker", """
        def main(ctx, args):
            return ctx.human.ask("Ship it?", choices=["yes", "no"])
    """, caps=["human:ask:*"])
    pid = sup.submit_run(str(img), {}, policy=ASK_WRITES)
    q = _wait_for_ask(sup, pid)
    assert (q.kind, q.question, q.choices) == ("question", "Ship it?", ["yes", "no"])
    assert sup.store.get_process(pid).wait == f"human:{q.id}"
    with pytest.raises(InvalidArgument, match='takes one of: "yes", "no"'):
        sup.approvals.answer(q.id, "maybe")
    assert sup.store.ask_get(q.id).state == "pending"  # nothing changed
    with pytest.raises(InvalidArgument, match="is a question"):
        sup.approvals.approve(q.id)
    sup.approvals.answer(q.id, "yes")
    assert _finish(sup, pid).result == "yes"


def test_deny_declines_a_question_and_its_call_fails_with_the_reason(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("asker2", """
        def main(ctx, args):
            from agentlibos.errors import PermissionDenied
            try:
                return ctx.human.ask("Which database do I drop?", topic="ops")
            except PermissionDenied as e:
                return "refused: " + str(e)
    """, caps=["human:ask:ops"])
    pid = sup.submit_run(str(img), {}, policy=ASK_WRITES)
    q = _wait_for_ask(sup, pid)
    assert sup.approvals.deny(q.id, "not a question for an agent").state == "denied"
    assert _finish(sup, pid).result == ("refused: human.ask: the question was denied by the "
                                        "operator: not a question for an agent")
    denied = [(r.call, r.request, r.detail) for r in sup.store.audit_records(pid=pid)
              if r.verdict == "denied"]
    assert denied == [("human.ask", "human:ask:ops",
                       {"question": q.id, "reason": "not a question for an agent"})]


def test_an_event_post_wakes_every_waiter_with_its_payload(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("waiter", """
        def main(ctx, args):
            return ctx.events.wait("build-done")
    """, caps=["event:wait:build-*"])
    pids = [sup.submit_run(str(img), {}) for _ in range(3)]
    assert sup.run_until(lambda: all(sup.store.get_process(p).wait == "event:build-done"
                                     for p in pids), 20)
    _, woken = sup.events.post("build-done", {"ok": True}, None)
    assert woken == 3
    for p in pids:
        assert _finish(sup, p).result == {"ok": True}
    with pytest.raises(InvalidArgument, match="not a valid event name"):
        sup.events.post("bad name!", None, None)


def test_an_agent_posts_an_event_another_agent_waits_for(
    sup: Supervisor, make_image: MakeImage
) -> None:
    waiter = make_image("w2", """
        def main(ctx, args):
            return ctx.events.wait("go", timeout=20)
    """, caps=["event:wait:go"])
    poster = make_image("p2", """
        def main(ctx, args):
            return ctx.events.post("go", {"n": 1})
    """, caps=["event:post:go"])
    w = sup.submit_run(str(waiter), {})
    assert sup.run_until(lambda: sup.store.get_process(w).wait == "event:go", 20)
    p = sup.submit_run(str(poster), {})
    assert _finish(sup, p).result == 1
    assert _finish(sup, w).result == {"n": 1}


def test_a_sleep_ends_on_time_and_shows_its_deadline(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("sleeper", """
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            bad = []
            for s in (-1, 1e12):
                try:
                    ctx.clock.sleep(s)
                except InvalidArgument as e:
                    bad.append(str(e))
            t0 = ctx.clock.now()
            ctx.clock.sleep(0.5)
            return {"slept": ctx.clock.now() - t0, "bad": bad}
    """, caps=["clock:sleep:*"])
    pid = sup.submit_run(str(img), {})
    assert sup.run_until(lambda: (sup.store.get_process(pid).wait or "").startswith("sleep:"),
                         20)
    out = _finish(sup, pid).result
    assert 0.5 <= out["slept"] < 5
    assert len(out["bad"]) == 2


def test_revoking_a_capability_takes_it_from_the_process_and_its_descendants(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("A")
    make_image("kid", """
        import time
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.fs.read_text("a.txt")
            ctx.events.wait("revoked")
            try:
                ctx.fs.read_text("a.txt")
                return "read"
            except PermissionDenied:
                return "refused"
    """, caps=["fs:read:./**", "event:wait:revoked"])
    img = make_image("parent", """
        def main(ctx, args):
            return ctx.proc.wait(ctx.proc.spawn("kid"))["result"]
    """, caps=["fs:read:./**", "proc:spawn:kid", "event:wait:revoked"])
    pid = sup.submit_run(str(img), {}, cwd=str(tmp_path))
    assert sup.run_until(lambda: any(r.wait == "event:revoked"
                                     for r in sup.store.children(pid)), 20)
    replies: list[dict[str, Any]] = []
    op_caps.caps_revoke(sup.control_ctx, {"op": "caps_revoke", "pid": pid,
                                          "cap": "fs:read:./**"}, replies.append)
    assert {c["pid"] for c in replies[0]["changed"]} == {pid, sup.store.children(pid)[0].pid}
    sup.events.post("revoked", None, None)
    assert _finish(sup, pid).result == "refused"
    with pytest.raises(NotFound):
        op_caps.caps_revoke(sup.control_ctx, {"op": "caps_revoke", "pid": pid,
                                              "cap": "fs:read:./**"}, replies.append)


def test_revoking_takes_the_right_from_a_capability_that_only_overlaps_the_revoked_one(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # `*.txt` neither covers nor lies within `secret*`, but both allow secret.txt: the
    # read of it went on after `secret*` was revoked. Now a capability that may meet
    # the revoked one loses the revoked right; one that cannot (`docs/*`) keeps it.
    (tmp_path / "docs").mkdir()
    for name in ("secret.txt", "docs/notes.md"):
        (tmp_path / name).write_text(name)
    img = make_image("overlap", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.events.wait("revoked")
            out = {}
            for name in ("secret.txt", "docs/notes.md"):
                try:
                    out[name] = ctx.fs.read_text(name)
                except PermissionDenied:
                    out[name] = "refused"
            return out
    """, caps=["fs:read:./*.txt", "fs:read:./secret*", "fs:read:./docs/*",
               "event:wait:revoked"])
    pid = sup.submit_run(str(img), {}, cwd=str(tmp_path))
    assert sup.run_until(lambda: sup.store.get_process(pid).wait == "event:revoked", 20)
    replies: list[dict[str, Any]] = []
    op_caps.caps_revoke(sup.control_ctx, {"op": "caps_revoke", "pid": pid,
                                          "cap": f"fs:read:{tmp_path}/secret*"},
                        replies.append)
    assert replies[0]["changed"][0]["caps"] == [f"fs:read:{tmp_path}/docs/*",
                                                "event:wait:revoked"], replies
    sup.events.post("revoked", None, None)
    assert _finish(sup, pid).result == {"secret.txt": "refused",
                                        "docs/notes.md": "docs/notes.md"}
