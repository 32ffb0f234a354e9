"""The runtime end to end, with real agent processes behind the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlibos.kernel.policy import parse_policy
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, log_of, run_proc


def test_fs_calls_resolve_against_a_fresh_work_directory_by_default(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("files", """
        def main(ctx, args):
            ctx.fs.mkdir("out/deep", parents=True)
            ctx.fs.write_text("out/deep/a.txt", "alpha")
            ctx.fs.write_bytes("out/b.bin", bytes(range(256)))
            ctx.fs.write_text("out/deep/a.txt", "+more", append=True)
            listing = [(e["name"], e["type"]) for e in ctx.fs.list("out")]
            st = ctx.fs.stat("out/b.bin")
            data = ctx.fs.read_bytes("out/b.bin")
            ctx.fs.delete("out/b.bin")
            return {"text": ctx.fs.read_text("out/deep/a.txt"), "listing": listing,
                    "size": st["size"], "bytes_ok": data == bytes(range(256)),
                    "exists_after_delete": ctx.fs.exists("out/b.bin")}
    """, caps=["fs:rw:./**", "fs:delete:./**"])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"text": "alpha+more", "listing": [["b.bin", "file"], ["deep", "dir"]],
                          "size": 256, "bytes_ok": True, "exists_after_delete": False}
    assert rec.cwd == str(sup.paths.work / str(rec.pid))
    assert (Path(rec.cwd) / "out/deep/a.txt").read_text() == "alpha+more"


def test_a_refused_call_raises_a_typed_error_naming_request_and_capability(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    (tmp_path / "proj").mkdir()
    img = make_image("reader", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            try:
                ctx.fs.write_text("x.txt", "no")
            except PermissionDenied as e:
                return {"type": type(e).__name__, "code": e.code, "message": e.message}
            return {"type": None}
    """, caps=["fs:read:./**"])
    rec = run_proc(sup, img, cwd=tmp_path / "proj")
    assert rec.result["type"] == "PermissionDenied"
    assert rec.result["code"] == "EPERM"
    msg = rec.result["message"]
    assert f"fs:write:{tmp_path}/proj/x.txt" in msg
    assert "fs:write:..." in msg and "does not hold" in msg
    assert not (tmp_path / "proj/x.txt").exists()
    denials = [a for a in sup.store.audit_records(pid=rec.pid) if a.verdict == "deny"]
    assert [a.call for a in denials] == ["fs.write"]


def test_an_uncaught_refusal_fails_the_process_with_the_typed_error(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("careless", """
        def main(ctx, args):
            ctx.fs.read_text("/etc/hostname")
    """, caps=["fs:read:./**"])
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("failed", "error")
    assert rec.error is not None and rec.error.startswith("PermissionDenied [EPERM]")
    assert "Traceback" in log_of(sup, rec.pid)


def test_object_memory_is_typed_versioned_and_private_by_default(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("objs", """
        from agentlibos.errors import Conflict, InvalidArgument, PermissionDenied
        def main(ctx, args):
            out = {}
            out["v1"] = ctx.obj.put("plan", {"steps": [1]}, type="Plan")["version"]
            out["v2"] = ctx.obj.put("plan", {"steps": [1, 2]}, type="Plan",
                                    expect_version=1)["version"]
            try:
                ctx.obj.put("plan", {}, type="Plan", expect_version=1)
            except Conflict as e:
                out["stale"] = e.code
            try:
                ctx.obj.put("plan", "text", type="Note")
            except Conflict as e:
                out["retype"] = e.code
            try:
                ctx.obj.put("n", "seven", type="int")
            except InvalidArgument as e:
                out["badint"] = e.code
            out["get"] = ctx.obj.get("plan")
            out["stat"] = {k: ctx.obj.stat("plan")[k] for k in ("type", "version")}
            out["names"] = [o["name"] for o in ctx.obj.list()]
            try:
                ctx.obj.put("x", 1, ns="shared/other")
            except PermissionDenied as e:
                out["other_ns"] = e.code
            ctx.obj.put("r", 1, type="int", ns="shared/mine")
            ctx.obj.delete("plan", expect_version=2)
            out["after_delete"] = [o["name"] for o in ctx.obj.list()]
            return out
    """, caps=["obj:rw:shared/mine"])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {
        "v1": 1, "v2": 2, "stale": "ECONFLICT", "retype": "ECONFLICT", "badint": "EINVAL",
        "get": {"steps": [1, 2]}, "stat": {"type": "Plan", "version": 2}, "names": ["plan"],
        "other_ns": "EPERM", "after_delete": [],
    }
    # Durable in the store, under the process's own namespace.
    assert sup.store.get_object("shared/mine", "r").value == 1


def test_spawn_attenuates_and_a_child_cannot_be_handed_more_than_the_parent_holds(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src/a.txt").write_text("source")
    (proj / "secret.txt").write_text("top secret")
    make_image("child", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            out = {"caps": ctx.caps.list(), "src": ctx.fs.read_text("src/a.txt")}
            try:
                ctx.fs.read_text("secret.txt")
            except PermissionDenied as e:
                out["secret"] = e.code
            return out
    """, caps=["fs:rw:./**"])
    parent = make_image("parent", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            out = {}
            try:
                ctx.proc.spawn("child", caps=["fs:rw:/**"])
            except PermissionDenied as e:
                out["too_much"] = e.message
            # `obj:rw:self` is the child's own namespace, which every process has: it
            # may be handed on by a parent whose image never asked for it.
            kid = ctx.proc.spawn("child", caps=["fs:read:./src/**", "obj:rw:self"])
            out["child"] = ctx.proc.wait(kid)
            return out
    """, caps=["fs:read:./**", "proc:spawn:child"])
    rec = run_proc(sup, parent, cwd=proj)
    assert rec.exit_reason == "returned", rec.error
    assert "cannot hand on 'fs:rw:/**'" in rec.result["too_much"]
    child = rec.result["child"]
    assert child["state"] == "exited" and child["exit_reason"] == "returned"
    # The relative capability was resolved against the *parent's* cwd at grant time,
    # and the child's request (fs:rw) was intersected down to the grant (read only).
    assert child["result"]["caps"] == [f"fs:read:{proj}/src/**"]
    assert child["result"]["src"] == "source"
    assert child["result"]["secret"] == "EPERM"  # noqa: S105 - an error code, not a password


def test_a_parent_may_share_its_own_namespace_read_only_with_a_child(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Was "not within the capabilities this process holds": the parent holds its own
    # namespace as `self`, without a capability naming proc/<its pid> (audit 4-a).
    make_image("reader", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ns = f"proc/{ctx.proc.getppid()}"
            out = {"plan": ctx.obj.get("plan", ns=ns)}
            try:
                ctx.obj.put("plan", "mine now", ns=ns)
            except PermissionDenied as e:
                out["write"] = e.code
            return out
    """, caps=["obj:rw:proc/*"])
    parent = make_image("sharer", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.obj.put("plan", "step 1")
            me = ctx.proc.getpid()
            kid = ctx.proc.spawn("reader", caps=[f"obj:read:proc/{me}"])
            out = {"child": ctx.proc.wait(kid)["result"]}
            try:
                ctx.proc.spawn("reader", caps=[f"obj:read:proc/{me + 1000}"])
            except PermissionDenied as e:
                out["other"] = e.code
            return out
    """, caps=["proc:spawn:reader"])
    rec = run_proc(sup, parent)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert rec.result == {"child": {"plan": "step 1", "write": "EPERM"}, "other": "EPERM"}


def test_caps_drop_gives_up_authority_for_good(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("dropper", """
        from agentlibos.errors import PermissionDenied, InvalidArgument
        def main(ctx, args):
            ctx.fs.write_text("a.txt", "1")
            held = ctx.caps.drop("fs:write:./**")
            out = {"held": held}
            try:
                ctx.fs.write_text("a.txt", "2")
            except PermissionDenied as e:
                out["write"] = e.code
            out["read"] = ctx.fs.read_text("a.txt")
            try:
                ctx.caps.drop("fs:read:./sub/**")
            except InvalidArgument as e:
                out["partial"] = e.code
            return out
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["held"] == [f"fs:read:{rec.cwd}/**"]
    assert rec.result["write"] == "EPERM"
    assert rec.result["read"] == "1"
    assert rec.result["partial"] == "EINVAL"
    assert sup.store.get_caps(rec.pid) == [f"fs:read:{rec.cwd}/**"]


def test_policy_ask_in_deny_mode_is_refused_with_that_reason(
    sup: Supervisor, make_image: MakeImage
) -> None:
    policy = parse_policy('ask = ["fs:write:**"]\nallow = ["fs:*:**"]\n', "test-policy")
    img = make_image("asker", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            try:
                ctx.fs.write_text("a.txt", "1")
            except PermissionDenied as e:
                return e.message
    """, caps=["fs:rw:./**"])
    pid = sup.submit_run(str(img), {}, policy=policy, ask="deny")
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert "needs a human's approval" in rec.result
    assert "refuses every ask (--ask deny)" in rec.result
    asks = [a for a in sup.store.audit_records(pid=rec.pid) if a.verdict == "ask"]
    assert len(asks) == 1 and "refused" in asks[0].detail["outcome"]


def test_policy_deny_wins_over_a_held_capability(
    sup: Supervisor, make_image: MakeImage
) -> None:
    policy = parse_policy('deny = ["fs:*:**/.env"]\nallow = ["fs:*:**"]\n', "p")
    img = make_image("envreader", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.fs.write_text("ok.txt", "fine")
            try:
                ctx.fs.write_text(".env", "KEY=1")
            except PermissionDenied as e:
                return e.message
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img, policy=policy)
    assert "denied by policy rule 'fs:*:**/.env'" in rec.result


def test_wait_returns_the_child_record_and_children_lists_them(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("kid", """
        def main(ctx, args):
            return args["n"] * 2
    """)
    img = make_image("kids", """
        def main(ctx, args):
            pids = [ctx.proc.spawn("kid", args={"n": i}) for i in range(3)]
            results = [ctx.proc.wait(p)["result"] for p in pids]
            return {"results": results,
                    "children": [(c["pid"], c["image"], c["state"]) for c in ctx.proc.children()],
                    "pids": pids}
    """, caps=["proc:spawn:kid"])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["results"] == [0, 2, 4]
    assert rec.result["children"] == [[p, "kid", "exited"] for p in rec.result["pids"]]
    for p in rec.result["pids"]:
        child = sup.store.get_process(p)
        assert child.ppid == rec.pid and child.root_pid == rec.pid


def test_kill_stops_a_child_and_its_descendants(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("sleeper", """
        import time
        def main(ctx, args):
            if args.get("depth", 0) < 1:
                ctx.proc.spawn("sleeper", args={"depth": 1})
                ctx.obj.put("grandchild", True, ns="shared/sync")
            time.sleep(600)
    """, caps=["proc:spawn:sleeper", "obj:rw:shared/sync"])
    img = make_image("killer", """
        from agentlibos.errors import NotFound
        def main(ctx, args):
            kid = ctx.proc.spawn("sleeper")
            while True:
                try:
                    ctx.obj.get("grandchild", ns="shared/sync")
                    break
                except NotFound:
                    pass
            ctx.proc.kill(kid)
            return ctx.proc.wait(kid)
    """, caps=["proc:spawn:sleeper", "obj:rw:shared/sync"])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["state"] == "killed" and rec.result["exit_reason"] == "killed"
    procs = sup.store.list_processes()
    assert [p.state for p in procs] == ["exited", "killed", "killed"]
    assert procs[2].ppid == procs[1].pid
    # A stop is one line in the killed agent's log, not the SDK's stack.
    log = log_of(sup, procs[1].pid)
    assert "agentlibos: terminated by the supervisor" in log and "Traceback" not in log


@pytest.mark.parametrize("held", [["proc:signal:leaf", "proc:wait:leaf"],
                                  ["proc:signal:children", "proc:wait:children"], []])
def test_a_grandchild_is_reached_by_its_image_name_as_by_children(
    sup: Supervisor, make_image: MakeImage, held: list[str]
) -> None:
    # proc:signal:leaf reached a `leaf` sibling but not a `leaf` grandchild, which only
    # `children` reached (audit 4-a, L1): the closer relation had less authority.
    make_image("leaf", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)
    make_image("mid", """
        import time
        def main(ctx, args):
            ctx.obj.put("leaf", ctx.proc.spawn("leaf"), ns="shared/sync")
            time.sleep(600)
    """, caps=["proc:spawn:leaf", "obj:rw:shared/sync"])
    img = make_image("grandparent", """
        from agentlibos.errors import NotFound, PermissionDenied
        def main(ctx, args):
            ctx.proc.spawn("mid")
            while True:
                try:
                    leaf = ctx.obj.get("leaf", ns="shared/sync")
                    break
                except NotFound:
                    pass
            try:
                ctx.proc.kill(leaf)
                return ctx.proc.wait(leaf)["exit_reason"]
            except PermissionDenied as e:
                return e.message
    """, caps=["proc:spawn:mid", "proc:spawn:leaf", "obj:rw:shared/sync", *held])
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    if held:
        assert rec.result == "killed", rec.result
    else:
        assert "proc:signal:children needs a capability" in rec.result, rec.result


def test_a_process_ending_stops_its_live_children(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("forever", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)
    img = make_image("leaver", """
        def main(ctx, args):
            return ctx.proc.spawn("forever")
    """, caps=["proc:spawn:forever"])
    rec = run_proc(sup, img)
    child = sup.store.get_process(rec.result)
    assert (child.state, child.exit_reason) == ("killed", "killed")
    assert child.error == f"its parent {rec.pid} ended"


def test_wall_clock_limit_kills_with_reason_wall(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("spinner", """
        def main(ctx, args):
            while True:
                pass
    """, limits={"wall": "300ms"})
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("killed", "wall")
    assert rec.ended_at is not None and rec.started_at is not None
    assert rec.ended_at - rec.started_at < sup.config.kill_grace_s + 5


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import os\n    os._exit(3)", "exited with status 3"),
        # A real fault: the agent is pid 1 of its pid namespace, and pid 1 ignores a
        # SIGSEGV it merely sends itself with kill().
        ("import ctypes\n    ctypes.string_at(1)", "SIGSEGV"),
    ],
)
def test_a_crash_is_reported_as_crashed_with_its_cause(
    sup: Supervisor, make_image: MakeImage, code: str, needle: str
) -> None:
    img = make_image("crasher", f"def main(ctx, args):\n    {code}\n")
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("failed", "crashed")
    assert rec.error is not None and needle in rec.error


def test_an_exception_in_the_entry_function_is_reason_error(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("raiser", """
        def main(ctx, args):
            raise ValueError("bad input 42")
    """)
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason, rec.error) == ("failed", "error",
                                                       "ValueError: bad input 42")


def test_an_entry_that_is_not_a_function_is_an_error_naming_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # `main = 5` passes the static check (the name is defined); its start says what it is.
    img = make_image("notfunc", "main = 5\n")
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("failed", "error")
    assert rec.error == ("TypeError: the image's entry agent:main is not a function "
                         "(its type is 'int')")


def test_a_non_json_result_is_an_error_not_a_crash(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("setter", """
        def main(ctx, args):
            return {1, 2}
    """)
    rec = run_proc(sup, img)
    assert rec.exit_reason == "error"
    assert rec.error is not None and "non-JSON" in rec.error


def test_a_result_of_up_to_1_mib_is_kept_and_a_larger_one_refused_by_its_size(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # 1 MiB is the result's limit, not the message's: the call's envelope has room.
    img = make_image("big", """
        def main(ctx, args):
            return {"x": "a" * args["n"]}
    """)
    # {"x":"..."}, compact, as every value's size is counted: exactly 1 MiB
    rec = run_proc(sup, img, {"n": (1 << 20) - 8})
    assert rec.exit_reason == "returned", rec.error
    assert len(rec.result["x"]) == (1 << 20) - 8
    rec = run_proc(sup, img, {"n": 1 << 20})
    assert rec.exit_reason == "error"
    assert rec.error is not None and f"result of {(1 << 20) + 8} bytes exceeds" in rec.error


def test_exit_ends_the_process_with_a_result(sup: Supervisor, make_image: MakeImage) -> None:
    img = make_image("exiter", """
        def main(ctx, args):
            ctx.proc.exit({"early": True})
            raise AssertionError("not reached")
    """)
    rec = run_proc(sup, img)
    assert (rec.exit_reason, rec.result) == ("returned", {"early": True})


def test_wait_with_a_timeout_raises_timeout(sup: Supervisor, make_image: MakeImage) -> None:
    make_image("slow", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)
    img = make_image("impatient", """
        from agentlibos.errors import Timeout
        def main(ctx, args):
            kid = ctx.proc.spawn("slow")
            try:
                ctx.proc.wait(kid, timeout=0.2)
            except Timeout as e:
                return e.code
    """, caps=["proc:spawn:slow"])
    rec = run_proc(sup, img)
    assert rec.result == "ETIMEDOUT"


def test_processes_of_another_tree_are_invisible(
    sup: Supervisor, make_image: MakeImage
) -> None:
    first = run_proc(sup, make_image("first", "def main(ctx, args):\n    return 1\n"))
    img = make_image("prober", """
        from agentlibos.errors import NoSuchProcess
        def main(ctx, args):
            out = []
            for call in (ctx.proc.wait, ctx.proc.kill):
                try:
                    call(args["other"])
                except NoSuchProcess as e:
                    out.append(e.code)
            return out
    """, caps=["proc:wait:*", "proc:signal:*"])
    rec = run_proc(sup, img, {"other": first.pid})
    assert rec.result == ["ESRCH", "ESRCH"]


def test_builtin_tools_act_with_the_callers_authority_and_are_audited(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("tooluser", """
        from agentlibos.errors import NotFound, PermissionDenied
        def main(ctx, args):
            out = {}
            ctx.fs.write_text("a.txt", "x")
            out["listing"] = [e["name"] for e in ctx.tools.call("ls", {"path": "."})]
            try:
                ctx.tools.call("ls", {"path": "/etc"})
            except PermissionDenied as e:
                out["etc"] = e.code
            try:
                ctx.tools.call("nope", {})
            except NotFound as e:
                out["unknown"] = e.code
            return out
    """, caps=["fs:rw:./**"], tools={"ls": "builtin:fs.list"})
    rec = run_proc(sup, img)
    assert rec.result == {"listing": ["a.txt"], "etc": "EPERM", "unknown": "ENOENT"}
    tool_records = [a for a in sup.store.audit_records(pid=rec.pid)
                    if a.detail.get("tool") == "ls"]
    assert [a.verdict for a in tool_records] == ["allow", "deny"]


def test_many_processes_are_served_concurrently(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # A chain of waits: worker k is suspended in proc.wait(worker k-1) while worker 1
    # still works, and worker 1 starts working only once every other worker has said it
    # is about to wait. A broker that served one request at a time (blocking on a
    # pending answer) would deadlock at the first wait: it must keep answering the
    # others while replies are pending.
    make_image("worker", """
        import time
        def main(ctx, args):
            n, prev = args["n"], args.get("prev")
            if prev is not None:
                ctx.obj.put(f"ready-{ctx.proc.getpid()}", 1, type="int", ns="shared/bar")
                return ctx.proc.wait(prev)["result"] + 1
            while len(ctx.obj.list(ns="shared/bar")) < n - 1:
                time.sleep(0.01)
            total = 0
            for i in range(50):
                ctx.obj.put(f"k{i}", i, type="int")
                total += ctx.obj.get(f"k{i}")
            return total
    """, caps=["proc:wait:worker", "obj:rw:shared/bar"])
    img = make_image("fanout", """
        def main(ctx, args):
            n = 12
            prev = None
            pids = []
            for _ in range(n):
                prev = ctx.proc.spawn("worker", args={"n": n, "prev": prev})
                pids.append(prev)
            return ctx.proc.wait(pids[-1])["result"]
    """, caps=["proc:spawn:worker", "proc:wait:worker", "obj:rw:shared/bar"])
    rec = run_proc(sup, img, timeout_s=60)
    assert rec.result == sum(range(50)) + 11
    waits = [r for r in sup.store.audit_records() if r.call == "proc.wait"]
    assert len(waits) >= 12


def test_state_transitions_are_recorded(sup: Supervisor, make_image: MakeImage) -> None:
    # The napper ends when the test says so (an object in a namespace it polls), not
    # after a fixed time: the waiter is seen `waiting` however slow the machine is.
    make_image("napper", """
        import time
        def main(ctx, args):
            while not ctx.obj.list(ns="shared/go"):
                time.sleep(0.01)
    """, caps=["obj:read:shared/go"])
    img = make_image("waiter", """
        def main(ctx, args):
            return ctx.proc.wait(ctx.proc.spawn("napper"))["state"]
    """, caps=["proc:spawn:napper", "obj:read:shared/go"])
    pid = sup.submit_run(str(img), {})
    assert sup.store.get_process(pid).state == "created"
    assert sup.run_until(lambda: sup.store.get_process(pid).state == "waiting", 10)
    assert sup.tree_live(pid)
    # ps shows what it waits on.
    waiting, child = sup.store.get_process(pid), sup.store.children(pid)[0].pid
    assert waiting.wait == f"proc:{child}"
    assert waiting.table_row()["wait"] == f"proc:{child}"
    assert waiting.table_row()["evicted"] is False
    with sup.store.transaction():
        sup.store.put_object("shared/go", "now", "int", "1", None, None, sup.config.object_quota)
    assert sup.run_until(lambda: not sup.tree_live(pid), 10)
    rec = sup.store.get_process(pid)
    assert rec.state == "exited" and rec.result == "exited" and rec.wait is None
    assert rec.created_at <= (rec.started_at or 0) <= (rec.ready_at or 0) <= (rec.ended_at or 0)


def test_a_call_too_large_to_send_is_refused_and_the_agent_goes_on_in_step(
    sup: Supervisor, make_image: MakeImage
) -> None:
    """A request the broker would refuse at its door for its size (before it numbers
    it) is refused by the SDK before it is sent, unnumbered: the agent catches the
    LimitExceeded and its next calls are answered, and journaled in order."""
    img = make_image("big", """
        from agentlibos.errors import LimitExceeded

        def main(ctx, args):
            refused = []
            for attempt in (lambda: ctx.obj.put("big", "x" * (2 << 20)),
                            lambda: ctx.client.call("clock.now", {"pad": "z" * 1_200_000}),
                            lambda: ctx.fs.write_bytes("b.bin", b"y" * (40 << 20))):
                try:
                    attempt()
                except LimitExceeded as e:
                    refused.append(str(e))
            ctx.obj.put("small", "ok")
            return {"refused": refused, "names": ctx.obj.list(), "get": ctx.obj.get("small")}
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img, timeout_s=60)
    assert rec.exit_reason == "returned", rec.error
    assert len(rec.result["refused"]) == 3, rec.result
    assert rec.result["refused"][0].startswith("obj.put: header of"), rec.result
    assert "exceeds 1114112" in rec.result["refused"][0]
    assert rec.result["refused"][2].startswith("fs.write: blob of"), rec.result
    assert rec.result["get"] == "ok"
    # The journal holds the calls that were sent, numbered 1, 2, 3 with no gap.
    entries = sup.store.journal_entries(rec.pid)
    assert [e.call for e in entries] == ["obj.put", "obj.list", "obj.get"]
    assert [e.seq for e in entries] == [1, 2, 3]


def test_evicted_is_shown_only_for_a_live_process() -> None:
    """A process killed while evicted keeps the store's flag; ps shows it ended, not
    evicted (the column means "stopped while it waits")."""
    from agentlibos.kernel.process import ProcessRecord  # noqa: PLC0415

    def rec(state: str) -> ProcessRecord:
        return ProcessRecord(pid=3, ppid=None, root_pid=3, image="x", image_path="/x",
                             state=state, cwd="/", args={}, limits={}, policy_id=1,  # type: ignore[arg-type]
                             evicted=True)

    assert rec("waiting").table_row()["evicted"] is True
    assert rec("attention").table_row()["evicted"] is True
    for ended in ("exited", "killed", "failed"):
        assert rec(ended).table_row()["evicted"] is False


def test_sdk_parameters_may_be_given_by_position_as_the_contract_lists_them(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("kid", "def main(ctx, args):\n    return args['n']\n")
    img = make_image("positional", """
        def main(ctx, args):
            ctx.fs.write_text("a.txt", "x", "utf-8", False)
            ctx.obj.put("a", 1, "int", "self", 0)
            child = ctx.proc.spawn("kid", {"n": 5}, None, None)
            return {"text": ctx.fs.read_text("a.txt", "utf-8"),
                    "get": ctx.obj.get("a", "self"),
                    "names": [o["name"] for o in ctx.obj.list("self", "a")],
                    "stat": ctx.obj.stat("a", "self")["type"],
                    "wait": ctx.proc.wait(child, 30)["result"]}
    """, caps=["fs:rw:./**", "proc:spawn:kid"])
    rec = run_proc(sup, img, timeout_s=60)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"text": "x", "get": 1, "names": ["a"], "stat": "int", "wait": 5}


def test_each_process_started_before_it_was_ready_even_from_the_warm_pool(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # A pooled process answers its first syscall over the broker while the zygote's
    # "spawned" news of it may still be queued: the first of the two is its start.
    make_image("quick", """
        def main(ctx, args):
            return ctx.pid
    """)
    img = make_image("spawner", """
        def main(ctx, args):
            kids = [ctx.proc.spawn("quick") for _ in range(12)]
            return [ctx.proc.wait(k)["state"] for k in kids]
    """, caps=["proc:spawn:quick", "proc:wait:quick"])
    roots = [sup.submit_run(str(img), {}) for _ in range(3)]
    assert sup.run_until(lambda: not any(sup.tree_live(p) for p in roots), 60)
    pids = roots + [c.pid for r in roots for c in sup.store.children(r)]
    assert len(pids) == 39
    for p in pids:
        rec = sup.store.get_process(p)
        assert rec.state == "exited", rec.error
        assert rec.created_at <= (rec.started_at or 0) <= (rec.ready_at or 0), rec


def test_spawn_with_its_own_cwd_named_needs_no_read_capability_on_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    make_image("kid", "def main(ctx, args):\n    return ctx.fs.list('src')\n",
               caps=["fs:read:./src/**"])
    parent = make_image("parent", """
        def main(ctx, args):
            return [ctx.proc.wait(ctx.proc.spawn("kid", cwd=c))["exit_reason"]
                    for c in (None, ".")]
    """, caps=["fs:read:./src/**", "proc:spawn:kid", "proc:wait:*"])
    (tmp_path / "src").mkdir()
    rec = run_proc(sup, parent, cwd=tmp_path)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == ["returned", "returned"]


def test_a_refusal_says_when_the_image_asked_for_it_and_the_policy_did_not_grant_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("asked", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            out = []
            for path in ("/etc/hostname", "/etc/passwd"):
                try:
                    ctx.fs.read_text(path)
                except PermissionDenied as e:
                    out.append(e.message)
            return out
    """, caps=["fs:read:/etc/hostname"])
    policy = parse_policy('allow = ["fs:read:./**"]\ndefault = "deny"\n', "strict.toml")
    rec = run_proc(sup, img, cwd=tmp_path, policy=policy)
    assert rec.exit_reason == "returned", rec.error
    asked, not_asked = rec.result
    assert "its image asks for 'fs:read:/etc/hostname', but the run's policy did not " \
           "grant it" in asked
    assert "its image asks" not in not_asked and "does not hold" in not_asked
