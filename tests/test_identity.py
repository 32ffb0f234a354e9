"""Identity is unforgeable: a hostile agent cannot act as another process.

The attacker is a real agent that ignores the SDK: it opens its own DEALER on the
broker socket and sends syscalls claiming to be other live processes, with random
credentials and with its own (taken from the SDK client's memory). Every one must be
refused with ``EAUTH``, must change nothing, and must be in the audit; the real
credentials must still work afterwards, for the attacker and for its victims.
"""

from __future__ import annotations

import json
from pathlib import Path

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

# Waits for a "go" object in its own namespace (put there by the test), then reports
# what its namespace and capabilities look like. Its first act is to publish its own
# token, only so the test can look for it where it must never be (environ, cmdline).
VICTIM = """
    import time
    from agentlibos.errors import NotFound

    def main(ctx, args):
        ctx.obj.put("token", ctx.client._token.hex())
        while True:
            try:
                go = ctx.obj.get("go")
                break
            except NotFound:
                time.sleep(0.02)
        return {"go": go, "names": sorted(o["name"] for o in ctx.obj.list()),
                "caps": ctx.caps.list()}
"""

# The forged calls, each of which would leave a trace if it were executed as the victim.
ATTACKER = """
    import json
    import secrets

    import zmq

    CALLS = [
        ("obj.put", lambda pid: {"name": "stolen", "value": "pwned", "ns": "self"}),
        ("obj.put", lambda pid: {"name": "stolen", "value": "pwned", "ns": f"proc/{pid}"}),
        ("obj.get", lambda pid: {"name": "token"}),
        ("cap.drop", lambda pid: {"cap": "fs:read:./**"}),
        ("proc.exit", lambda pid: {"status": "returned", "result": "hijacked"}),
        ("proc.kill", lambda pid: {"pid": pid}),
        ("proc.start", lambda pid: {}),
    ]

    def main(ctx, args):
        child = ctx.proc.spawn("victim")
        own = ctx.client._token
        pids = [p for p in [*args["victims"], child, *args["other_pids"]] if p != ctx.pid]
        zctx = zmq.Context()
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ctx.client.endpoint)
        next_id = iter(range(1000, 10**9))

        def raw(pid, token, call, call_args):
            rid = next(next_id)
            header = {"id": rid, "pid": pid, "call": call, "args": call_args}
            sock.send_multipart([b"ALOS/1", json.dumps(header).encode(), token])
            if not sock.poll(30_000):
                return rid, {"ok": None, "error": {"code": "no reply"}}
            return rid, json.loads(sock.recv_multipart()[1])

        attempts = []
        for pid in pids:
            for label, token in [("own", own), ("random", secrets.token_bytes(32)),
                                 ("zero", bytes(32)), ("reversed", own[::-1])]:
                for call, make_args in CALLS:
                    rid, reply = raw(pid, token, call, make_args(pid))
                    error = reply.get("error") or {}
                    attempts.append({"pid": pid, "token": label, "call": call,
                                     "ok": reply.get("ok"), "id_ok": reply.get("id") == rid,
                                     "type": error.get("type"), "code": error.get("code"),
                                     "leak": "result" in reply})
        # The real credentials, on the same raw socket, after all that.
        _, mine = raw(ctx.pid, own, "obj.put", {"name": "mine", "value": 42})
        sock.close(0)
        zctx.term()
        ctx.proc.kill(child)
        ctx.proc.wait(child)
        return {"child": child, "attempts": attempts, "mine": mine.get("ok"),
                "mine_via_sdk": ctx.obj.get("mine")}
"""


def test_a_hostile_agent_cannot_act_as_another_process(
    sup: Supervisor, make_image: MakeImage
) -> None:
    victim_img = make_image("victim", VICTIM, caps=["fs:read:./**"])
    attacker_img = make_image("attacker", ATTACKER, caps=["proc:spawn:victim"])

    # A victim in another process tree, live and serving syscalls throughout.
    vpid = sup.submit_run(str(victim_img), {})
    assert sup.run_until(lambda: _has_object(sup, vpid, "token"), 30), "victim never started"
    victim = sup.store.get_process(vpid)
    assert victim.host_pid is not None
    caps_before = sup.store.get_caps(vpid)
    assert caps_before  # cap.drop as the victim would visibly change this
    head = _audit_head(sup)

    rec = run_proc(sup, attacker_img, {"victims": [vpid],
                                       "other_pids": [victim.host_pid, 0, -1, 10**9]})
    assert (rec.state, rec.exit_reason) == ("exited", "returned"), rec.error
    out = rec.result
    child = out["child"]
    attempts = out["attempts"]
    # 6 claimed pids (the victim, the attacker's own child, the victim's host pid, three
    # that are nobody's) x 4 tokens x 7 calls: all sent, all answered.
    assert len(attempts) == 6 * 4 * 7
    assert {a["pid"] for a in attempts} == {vpid, child, victim.host_pid, 0, -1, 10**9}
    for a in attempts:
        assert (a["ok"], a["type"], a["code"], a["id_ok"], a["leak"]) == (
            False, "AuthenticationFailed", "EAUTH", True, False), a

    # Nothing was done as anyone: no objects in the victims' namespaces (nor in the
    # attacker's, where a token-only check would have put them), no capability dropped.
    assert _names(sup, f"proc/{vpid}") == ["token"]
    assert set(_names(sup, f"proc/{child}")) <= {"token"}  # it may not have got that far
    assert _names(sup, f"proc/{rec.pid}") == ["mine"]
    assert sup.store.get_caps(vpid) == caps_before
    assert vpid in sup.live and sup.store.get_process(vpid).state == "running"
    child_rec = sup.store.get_process(child)
    assert child_rec.exit_reason == "killed" and child_rec.result is None

    # Every refusal is in the audit, as a denied "auth" -- the first few one by one, the
    # rest counted in a summary (so a flood cannot grow the audit) -- and nothing was
    # allowed in the victims' names except their own polling.
    with sup.store.transaction():
        sup.broker.summarize_refusals()
    new = sup.store.audit_records(since_seq=head)
    auth = [r for r in new if r.call == "auth"]
    summaries = [r for r in new if r.call == "wire" and "suppressed" in r.detail]
    assert len(auth) + sum(r.detail["suppressed"] for r in summaries) == len(attempts)
    assert len(auth) <= 5 * 2  # the burst allowance (the attacker may reconnect once)
    # Named: the attacker's own pid, from the kernel's word on who connected (a summary
    # written after it ended names its host pid only).
    assert all(r.verdict == "deny" and r.pid == rec.pid for r in auth)
    assert all(r.verdict == "deny" and r.pid in (rec.pid, None) and r.detail["host_pid"] > 0
               for r in summaries)
    acted = {(r.pid, r.call) for r in new if r.pid == vpid}
    assert acted <= {(vpid, "obj.get")}, acted

    # Real credentials still work: the attacker's own raw request, and the victim's.
    assert (out["mine"], out["mine_via_sdk"]) == (True, 42)
    assert sup.store.get_object(f"proc/{rec.pid}", "mine").updated_by == rec.pid
    sup.store.put_object(f"proc/{vpid}", "go", "json", json.dumps("now"), None, None,
                         sup.config.object_quota)
    assert sup.run_until(lambda: not sup.tree_live(vpid), 30)
    done = sup.store.get_process(vpid)
    assert (done.state, done.exit_reason) == ("exited", "returned"), done.error
    assert done.result == {"go": "now", "names": ["go", "token"], "caps": caps_before}
    assert sup.store.verify_audit().ok


def test_a_process_token_is_in_neither_its_environment_nor_its_command_line(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("victim", VICTIM, caps=["fs:read:./**"])
    vpid = sup.submit_run(str(img), {})
    assert sup.run_until(lambda: _has_object(sup, vpid, "token"), 30), "victim never started"
    token = bytes.fromhex(sup.store.get_object(f"proc/{vpid}", "token").value)
    host_pid = sup.store.get_process(vpid).host_pid
    assert host_pid is not None
    proc = Path(f"/proc/{host_pid}")
    for name in ("environ", "cmdline"):
        data = (proc / name).read_bytes()
        assert data  # really read (a kernel thread or a reaped pid would give nothing)
        for form in (token, token.hex().encode(), token.hex().upper().encode()):
            assert form not in data, name
    sup.terminate(vpid, "killed", "test over", grace_s=0)
    assert sup.run_until(lambda: not sup.tree_live(vpid), 30)


def _has_object(sup: Supervisor, pid: int, name: str) -> bool:
    return name in _names(sup, f"proc/{pid}")


def _names(sup: Supervisor, ns: str) -> list[str]:
    return [o.name for o in sup.store.list_objects(ns, "", 1000)]


def _audit_head(sup: Supervisor) -> int:
    recs = sup.store.audit_records()
    return recs[-1].seq if recs else 0
