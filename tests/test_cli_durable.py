"""Durable execution through the public commands: checkpoint, restore, resume, attention,
resolve, ctx.random, and approvals answered while no supervisor runs. Real daemons,
killed with SIGKILL or at a crash barrier (broker/crashpoints.py), real agents."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agentlibos.cli.common import supervisor_alive
from agentlibos.config import Paths
from agentlibos.supervisor import Supervisor
from tests.durable_helpers import detach_into_crash
from tests.helpers import MakeImage
from tests.test_cli import assert_one_line_error, cli, serving, wait_for

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox layer "
                                                  "required, which needs root"),
]

# Writes "a", checkpoints, then lists its own objects (live after a restore) and writes
# "b": a restored process starts from the checkpoint's namespace, not the source's.
CHECKPOINTER = """
def main(ctx, args):
    ctx.obj.put("a", 1)
    r = ctx.random()
    cp = ctx.checkpoint(args.get("name"))
    seen = sorted(o["name"] for o in ctx.obj.list())
    ctx.obj.put("b", 2)
    return {"cp": cp, "r": r, "seen": seen, "me": ctx.proc.getpid(), "after": True}
"""

# Checkpoints, waits for the event `go`, then tries to write in its cwd.
GATED_WRITER = """
from agentlibos.errors import LibOSError

def main(ctx, args):
    ctx.checkpoint("before-go")
    ctx.events.wait("go")
    try:
        ctx.fs.write_text("out.txt", "x")
        wrote = "written"
    except LibOSError as e:
        wrote = type(e).__name__
    return {"wrote": wrote, "me": ctx.proc.getpid()}
"""

# Draws, writes what it drew, sleeps (the test kills it here), returns what it drew.
DRAWER = """
def main(ctx, args):
    r = ctx.random()
    b = ctx.random(16).hex()
    ctx.obj.put("first", {"r": r, "b": b})
    ctx.clock.sleep(float(args.get("s", 3)))
    return {"r": r, "b": b}
"""

# The same, but it waits by polling for `go` in its cwd: killed while it polls, it is in
# no durable wait (one left pending by a killed host is another matter: docs/durability.md).
POLLING_DRAWER = """
import time

def main(ctx, args):
    r = ctx.random()
    b = ctx.random(16).hex()
    ctx.obj.put("first", {"r": r, "b": b})
    while not ctx.fs.exists("go"):
        time.sleep(0.05)
    return {"r": r, "b": b}
"""

SHELLER = """
from agentlibos.errors import LibOSError

def main(ctx, args):
    try:
        out = ctx.shell.run(["echo", "ran"])
    except LibOSError as e:
        return {"skipped": type(e).__name__, "why": str(e)}
    return {"stdout": out["stdout"].strip()}
"""

SHELL_POLICY = """
allow = ["shell:exec:*", "fs:*:./**", "obj:*:*", "proc:*:*", "clock:*:*", "event:*:*"]
default = "deny"
"""

ASKING_POLICY = """
ask = ["fs:write:./**"]
allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", "clock:*:*"]
default = "deny"
"""

WRITER = """
from agentlibos.errors import PermissionDenied

def main(ctx, args):
    try:
        ctx.fs.write_text("out.txt", "hello")
        return "written"
    except PermissionDenied as e:
        return "denied: " + str(e)
"""


def out_json(p: subprocess.CompletedProcess[str]) -> Any:
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def ps_row(home: Path, pid: int) -> dict[str, Any]:
    rows = out_json(cli(home, "ps", "--all", "--json"))
    return next(r for r in rows if r["pid"] == pid)


def gone(home: Path, proc: subprocess.Popen[str]) -> None:
    """Wait for a killed daemon's end and for its lock to be free."""
    proc.wait(30)
    wait_for(lambda: not supervisor_alive(Paths(home)))


def detach(home: Path, image: Path, *args: str) -> int:
    return int(out_json(cli(home, "run", str(image), "--detach", "--json", *args))["pid"])


# ------------------------------------------------------------------ checkpoint, restore

def test_restore_of_a_checkpoint_the_agent_made_replays_to_it_then_runs_live(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("checkpointer", CHECKPOINTER)
    first = out_json(cli(home, "run", str(img), "--arg", "name=mid", "--json"))
    cp = first["result"]["cp"]
    assert cp == {"id": cp["id"], "name": "mid", "pid": first["pid"], "seq": 3}

    again = out_json(cli(home, "restore", "mid", "--json"))  # no daemon: runs it, waits
    assert again["pid"] != first["pid"] and again["exit_reason"] == "returned"
    res = again["result"]
    # Replayed to the checkpoint: the same draw and the same checkpoint answer...
    assert res["cp"] == cp and res["r"] == first["result"]["r"]
    # ...then live: its own pid, and its namespace is the checkpoint's ("b" came later).
    assert res["me"] == again["pid"] and res["seen"] == ["a"] and res["after"] is True
    assert ps_row(home, again["pid"])["ppid"] == ps_row(home, first["pid"])["ppid"] is None

    by_id = out_json(cli(home, "restore", str(cp["id"]), "--json"))
    assert by_id["result"]["r"] == first["result"]["r"]


def test_prune_drops_ended_journals_but_what_a_checkpoint_replays_and_live_ones(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("checkpointer", CHECKPOINTER)
    gated = make_image("gated", GATED_WRITER, caps=["event:wait:go", "fs:rw:./**"])
    with_cp = out_json(cli(home, "run", str(img), "--arg", "name=mid", "--json"))
    without = make_image("plain", "def main(ctx, args):\n"
                         "    for i in range(5):\n        ctx.obj.put(str(i), i)\n")
    plain = out_json(cli(home, "run", str(without), "--json"))
    with serving(home):
        waiting = detach(home, gated)
        wait_for(lambda: ps_row(home, waiting)["state"] == "waiting")
        pruned = {r["pid"]: r for r in out_json(cli(home, "prune", "--json"))}
        assert waiting not in pruned  # live: its journal is how it resumes
        assert pruned[plain["pid"]]["journal_entries"] == 5
        # Only the calls after its checkpoint (seq 3): the list and the last put.
        assert pruned[with_cp["pid"]]["journal_entries"] == 2
        entries = _journal_seqs(home)
        assert entries[with_cp["pid"]] == [1, 2, 3]
        assert plain["pid"] not in entries
        assert entries[waiting]  # untouched
        # The work directory a restore of its checkpoint runs in again stays; the
        # others' go.
        work = Paths(home).work
        assert (work / str(with_cp["pid"])).is_dir()
        assert str(work / str(with_cp["pid"])) not in pruned[with_cp["pid"]]["removed"]
        assert not (work / str(plain["pid"])).exists()
        # Nothing left to prune.
        assert [r for r in out_json(cli(home, "prune", "--json"))
                if r["journal_entries"]] == []
    # The restore still replays to its checkpoint (no daemon now: `restore` waits).
    again = out_json(cli(home, "restore", "mid", "--json"))
    assert again["result"]["r"] == with_cp["result"]["r"]
    audit = out_json(cli(home, "audit", "--json"))
    assert [r["detail"] for r in audit if r["call"] == "journal.prune"] == [
        {"processes": 2, "entries": 7}]
    assert out_json(cli(home, "audit", "--verify", "--json"))["ok"] is True


def _journal_seqs(home: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    with contextlib.closing(sqlite3.connect(Paths(home).db)) as db:
        for pid, seq in db.execute("SELECT pid, seq FROM journal ORDER BY pid, seq"):
            out.setdefault(pid, []).append(seq)
    return out


def test_checkpoint_from_the_cli_marks_where_the_process_is(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("checkpointer", CHECKPOINTER)
    first = out_json(cli(home, "run", str(img), "--json"))
    assert first["result"]["cp"]["name"] is None
    cp = out_json(cli(home, "checkpoint", str(first["pid"]), "at-end", "--json"))
    assert set(cp) == {"id", "name", "pid", "seq"}
    assert cp["name"] == "at-end" and cp["pid"] == first["pid"] and cp["seq"] == 5
    text = cli(home, "checkpoint", str(first["pid"]))
    assert text.returncode == 0 and "checkpoint" in text.stdout

    again = out_json(cli(home, "restore", "at-end", "--json"))
    # Everything it did is replayed: the same result, but for its own pid.
    assert {**again["result"], "me": None} == {**first["result"], "me": None}


def test_a_restored_process_never_holds_a_capability_revoked_after_the_checkpoint(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("gated", GATED_WRITER, caps=["fs:rw:./**", "event:wait:go"])
    with serving(home):
        pid = detach(home, img)
        wait_for(lambda: ps_row(home, pid)["wait"] == "event:go")
        held = out_json(cli(home, "caps", str(pid), "--json"))
        write = next(c for c in held if c.startswith("fs:rw:"))
        cut = write.replace("fs:rw:", "fs:write:", 1)
        assert cli(home, "caps", "revoke", str(pid), cut).returncode == 0

        restored = out_json(cli(home, "restore", "before-go", "--json"))
        assert set(restored) == {"pid"} and restored["pid"] != pid
        new = restored["pid"]
        wait_for(lambda: ps_row(home, new)["wait"] == "event:go")
        caps = out_json(cli(home, "caps", str(new), "--json"))
        assert not any(c.startswith(("fs:rw:", "fs:write:")) for c in caps), caps
        # What is left of a partly revoked capability is kept: the read.
        assert write.replace("fs:rw:", "fs:read:", 1) in caps, caps
        assert "event:wait:go" in caps

        assert cli(home, "event", "post", "go").returncode == 0
        for p in (pid, new):
            rec = out_json(cli(home, "wait", str(p), "--json"))
            assert rec["result"]["wrote"] == "PermissionDenied", rec


# ------------------------------------------------------------------ resume

def test_resume_without_a_daemon_finishes_the_tree_a_killed_daemon_left(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("drawer", DRAWER, caps=["clock:sleep:*"])
    with serving(home) as daemon:
        pid = detach(home, img, "--arg", "s=2")
        wait_for(lambda: (ps_row(home, pid)["wait"] or "").startswith("sleep:"))
        daemon.send_signal(signal.SIGKILL)
        gone(home, daemon)
    assert ps_row(home, pid)["state"] == "waiting"

    rec = out_json(cli(home, "resume", str(pid), "--json"))
    assert rec["pid"] == pid and rec["exit_reason"] == "returned", rec
    assert set(rec["result"]) == {"r", "b"}
    row = ps_row(home, pid)
    assert row["state"] == "exited" and not row["evicted"]
    # Resuming a process that has ended just reports it.
    assert out_json(cli(home, "resume", str(pid), "--json")) == rec


def test_ctx_random_gives_the_same_value_again_after_a_crash_resume(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("drawer", POLLING_DRAWER, caps=["fs:read:./**"])
    pid = sup.submit_run(str(img), {}, cwd=str(tmp_path))
    assert sup.run_until(lambda: bool(sup.store.objects_of_ns(f"proc/{pid}")), 30)
    host = sup.live[pid].host_pid
    assert host is not None
    os.kill(host, signal.SIGKILL)  # an accident: the supervisor resumes it by replay
    assert sup.run_until(lambda: sup.store.get_process(pid).resumes == 1, 30)
    (tmp_path / "go").write_text("")
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned" and rec.resumes == 1, rec
    first = json.loads(sup.store.objects_of_ns(f"proc/{pid}")[0]["value"])
    assert rec.result == first  # drawn once, before the crash; replayed after it
    assert 0 <= first["r"] < 1 and len(bytes.fromhex(first["b"])) == 16


# ------------------------------------------------------------------ attention, resolve

@pytest.mark.parametrize("action", ["skip", "retry", "fail"])
def test_an_unsettled_shell_command_waits_for_attention_until_resolved(
    home: Path, make_image: MakeImage, tmp_path: Path, action: str
) -> None:
    img = make_image("sheller", SHELLER, caps=["shell:exec:echo", "fs:read:./**"])
    policy = tmp_path / "shell.toml"
    policy.write_text(SHELL_POLICY)
    with serving(home, AGENTLIBOS_CRASH_AT="before-effect:shell.exec") as daemon:
        # Its cwd outside the state directory, which a shell command never sees.
        # It died at the barrier: the intent is on disk, echo never ran.
        pid = detach_into_crash(home, daemon, str(img), "--policy", str(policy), "--cwd",
                                str(tmp_path))
        gone(home, daemon)
    want = [{"pid": pid, "call": "shell.exec", "request": "shell:exec:echo"}]
    assert out_json(cli(home, "attention", "--json")) == want
    text = cli(home, "attention")
    assert text.returncode == 0 and "shell:exec:echo" in text.stdout

    if action == "retry":  # through a daemon, which put it in attention when it started
        with serving(home):
            wait_for(lambda: ps_row(home, pid)["state"] == "attention")
            ps = cli(home, "ps")
            assert "attention" in ps.stdout and "shell:exec:echo" in ps.stdout
            assert out_json(cli(home, "attention", "--json")) == want
            held = cli(home, "resume", str(pid))  # as `attention` names it, not a dict
            assert held.returncode == 1
            assert_one_line_error(held, f"process {pid} is in attention (shell.exec "
                                  "shell:exec:echo): answer with")
            got = out_json(cli(home, "resolve", str(pid), "--retry", "--json"))
            assert got == {"pid": pid, "action": "retry", "state": "running"}
            rec = out_json(cli(home, "wait", str(pid), "--json"))
        assert rec["result"] == {"stdout": "ran"}, rec
    elif action == "skip":  # no daemon: this command serves the tree to its end
        rec = out_json(cli(home, "resolve", str(pid), "--skip", "--json"))
        assert rec["pid"] == pid and rec["result"]["skipped"] == "Unavailable", rec
        assert "skipped by the operator" in rec["result"]["why"]
    else:
        got = out_json(cli(home, "resolve", str(pid), "--fail", "--json"))
        assert got == {"pid": pid, "action": "fail", "state": "failed"}
        row = ps_row(home, pid)
        assert row["exit_reason"] == "resolved-fail"
        # Said in words, not as the attention record's Python repr.
        assert "(shell.exec, shell:exec:echo), which a crash left unsettled" in row["error"]
        assert "{" not in row["error"]
    assert out_json(cli(home, "attention", "--json")) == []
    again = cli(home, "resolve", str(pid), "--retry")
    assert again.returncode == 1
    assert_one_line_error(again, f"process {pid}", "not waiting for attention")


SLOW_SHELLER = """
def main(ctx, args):
    out = ctx.shell.run(["sh", "-c", "echo started > started; sleep 60; echo ended"])
    return {"exit_code": out["exit_code"], "stdout": out["stdout"].strip()}
"""


def test_a_shell_command_a_daemon_stop_cuts_off_is_left_unsettled_not_answered_killed(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    # SIGTERM keeps processes to be resumed; the command it kills did not end by itself,
    # so -9 is no answer to journal: the call is unsettled, as after a crash.
    img = make_image("slowsh", SLOW_SHELLER, caps=["shell:exec:sh", "fs:rw:./**"])
    policy = tmp_path / "shell.toml"
    policy.write_text(SHELL_POLICY)
    with serving(home) as daemon:
        pid = detach(home, img, "--policy", str(policy), "--cwd", str(tmp_path))
        wait_for((tmp_path / "started").exists)
        assert ps_row(home, pid)["wait"] == "shell:sh"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    audit = out_json(cli(home, "audit", "--pid", str(pid), "--json"))
    shell = [r for r in audit if r["call"] == "shell.exec"]
    assert shell and shell[-1]["detail"]["interrupted"] is True, shell
    assert ps_row(home, pid)["state"] != "exited"
    with serving(home):
        wait_for(lambda: ps_row(home, pid)["state"] == "attention")
        row = ps_row(home, pid)
        assert row["attention"]["call"] == "shell.exec", row
    assert cli(home, "audit", "--verify").returncode == 0

APPENDER = """
def main(ctx, args):
    ctx.fs.write_text("log.txt", "entry", append=True)
    return "appended"
"""


def test_an_approved_effect_a_crash_cut_off_is_audited_linked_to_its_approval(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("appender", APPENDER, caps=["fs:rw:./**"])
    policy = tmp_path / "asking.toml"
    policy.write_text(ASKING_POLICY)
    project = tmp_path / "project"
    project.mkdir()
    with serving(home, AGENTLIBOS_CRASH_AT="after-effect:fs.write") as daemon:
        pid = detach(home, img, "--policy", str(policy), "--cwd", str(project))
        wait_for(lambda: (ps_row(home, pid)["wait"] or "").startswith("approval:"))
        ask = int(ps_row(home, pid)["wait"].split(":")[1])
        cli(home, "approve", str(ask))  # the daemon dies at the barrier, after the append
        gone(home, daemon)
    assert (project / "log.txt").read_text() == "entry"
    with serving(home):
        wait_for(lambda: ps_row(home, pid)["state"] == "attention")
    audit = out_json(cli(home, "audit", "--pid", str(pid), "--json"))
    linked = [(r["call"], r["verdict"]) for r in audit
              if r.get("detail", {}).get("approval") == ask]
    # ask -> approved -> the effect, whose own record died with the turn: the record of
    # it as unsettled stands for it, with the same approval id.
    assert linked[-1] == ("proc.attention", "info"), audit
    assert ("fs.write", "approved") in linked, audit
    assert cli(home, "audit", "--verify").returncode == 0


SHELLER_PARENT = """
def main(ctx, args):
    return ctx.proc.wait(ctx.proc.spawn("sheller"))["result"]
"""


def test_resume_of_a_tree_held_up_by_attention_says_so_and_exits_1(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    """`resume` without a daemon serves a tree until nothing in it can move without the
    operator: a process in attention, or one waiting for such a child. It exits 1 at
    once naming them, leaves them as they were, and resumes them once resolved."""
    caps = ["shell:exec:echo", "fs:read:./**"]
    make_image("sheller", SHELLER, caps=caps)
    parent = make_image("sheller-parent", SHELLER_PARENT, caps=[*caps, "proc:spawn:sheller"])
    policy = tmp_path / "shell.toml"
    policy.write_text(SHELL_POLICY)
    with serving(home, AGENTLIBOS_CRASH_AT="before-effect:shell.exec") as daemon:
        # Its child died at the barrier, with the daemon.
        pid = detach_into_crash(home, daemon, str(parent), "--policy", str(policy),
                                "--cwd", str(tmp_path))
        gone(home, daemon)
    child = next(r["pid"] for r in out_json(cli(home, "attention", "--json")))

    started = time.monotonic()
    own = cli(home, "resume", str(child), "--json", timeout=60)
    # --json prints the record as it was left, as for any other end of the command.
    assert own.returncode == 1 and json.loads(own.stdout)["state"] == "attention", own
    # (Notes about what the killed daemon left, the stale cgroups it removed, go first.)
    last = own.stderr.strip().splitlines()[-1]
    assert last.startswith("agentlibos: error: ") and f"process {child} needs attention" in last
    assert f"resolve {child}" in last
    held = cli(home, "resume", str(pid), "--json", timeout=60)
    assert held.returncode == 1 and json.loads(held.stdout)["state"] == "waiting", held
    last = held.stderr.strip().splitlines()[-1]
    assert f"process {pid} waits for {child}, which needs attention" in last, last
    assert time.monotonic() - started < 30, "resume waited for what cannot move"
    # Left as they were: the child in attention, the parent's wait in the store.
    assert ps_row(home, child)["state"] == "attention"
    assert ps_row(home, pid)["wait"] == f"proc:{child}"

    got = out_json(cli(home, "resolve", str(child), "--skip", "--json"))
    assert got["pid"] == child and got["result"]["skipped"] == "Unavailable", got
    rec = out_json(cli(home, "resume", str(pid), "--json"))
    assert rec["exit_reason"] == "returned" and rec["result"]["skipped"] == "Unavailable"


# ------------------------------------------------------------------ offline approvals

@pytest.mark.parametrize("answer", ["approve", "deny"])
def test_an_approval_answered_while_no_supervisor_ran_is_honoured_on_resume(
    home: Path, make_image: MakeImage, tmp_path: Path, answer: str
) -> None:
    img = make_image("writer", WRITER, caps=["fs:rw:./**"])
    policy = tmp_path / "asking.toml"
    policy.write_text(ASKING_POLICY)
    (home / "config.toml").write_text('[durable]\nevict_after = "1s"\n')
    with serving(home) as daemon:
        pid = detach(home, img, "--policy", str(policy))
        wait_for(lambda: ps_row(home, pid)["evicted"])  # waiting costs nothing
        ps = cli(home, "ps")
        assert "waiting,evicted" in ps.stdout, ps.stdout
        ask = ps_row(home, pid)["wait"]
        assert ask.startswith("approval:")
        daemon.send_signal(signal.SIGKILL)
        gone(home, daemon)

    ask_id = ask.split(":")[1]
    decided = cli(home, answer, ask_id, "--json")
    assert decided.returncode == 0, decided.stderr
    assert json.loads(decided.stdout)["state"] == ("approved" if answer == "approve"
                                                   else "denied")
    assert "honours it when it is resumed" in decided.stderr
    audit = out_json(cli(home, "audit", "--pid", str(pid), "--json"))
    assert any(r.get("verdict") == ("approved" if answer == "approve" else "denied")
               for r in audit), audit

    rec = out_json(cli(home, "resume", str(pid), "--json"))
    if answer == "approve":
        assert rec["result"] == "written"
    else:
        assert rec["result"].startswith("denied: ")


def test_an_answer_given_offline_after_the_approval_timeout_finds_it_expired(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer", WRITER, caps=["fs:rw:./**"])
    policy = tmp_path / "asking.toml"
    policy.write_text(ASKING_POLICY)
    (home / "config.toml").write_text('[approvals]\ntimeout = "2s"\n')
    with serving(home) as daemon:
        pid = detach(home, img, "--policy", str(policy))
        wait_for(lambda: (ps_row(home, pid)["wait"] or "").startswith("approval:"))
        ask = ps_row(home, pid)["wait"].split(":")[1]
        daemon.send_signal(signal.SIGKILL)
        gone(home, daemon)
    created = next(a for a in out_json(cli(home, "approvals", "--json")))["created_at"]
    time.sleep(max(0.0, created + 2.2 - time.time()))
    late = cli(home, "approve", ask)
    assert late.returncode == 1
    assert_one_line_error(late, f"approval {ask} is already expired")
    audit = out_json(cli(home, "audit", "--pid", str(pid), "--json"))
    assert [r["verdict"] for r in audit if r.get("detail", {}).get("approval") == int(ask)
            and r["verdict"] in ("approved", "expired")] == ["expired"], audit
    rec = out_json(cli(home, "resume", str(pid), "--json"))
    assert rec["result"].startswith("denied: ") and "timed out" in rec["result"], rec
    assert not (home / "work" / str(pid) / "out.txt").exists()


GATED_WAITS_POLICY = """
ask = ["human:ask:*", "clock:sleep:*"]
allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", "clock:*:*"]
default = "deny"
"""

# A question, then a sleep, each under an `ask` rule: each waits twice, for the approval
# and then for the human or the clock.
GATED_WAITER = """
def main(ctx, args):
    answer = ctx.human.ask("Deploy?", choices=["yes", "no"])
    t0 = ctx.clock.now()
    ctx.clock.sleep(4)
    return {"answer": answer, "slept": ctx.clock.now() - t0}
"""


def test_a_wait_under_a_used_approval_waits_on_for_the_same_thing_after_a_daemon_crash(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("gated", GATED_WAITER, caps=["human:ask:*", "clock:sleep:*"])
    policy = tmp_path / "gated.toml"
    policy.write_text(GATED_WAITS_POLICY)

    def asks() -> list[dict[str, Any]]:
        return [a for a in out_json(cli(home, "approvals", "--all", "--json"))
                if a["pid"] == pid]

    def waits_on(prefix: str) -> str:
        wait_for(lambda: (ps_row(home, pid)["wait"] or "").startswith(prefix))
        return str(ps_row(home, pid)["wait"])

    with serving(home) as daemon:
        pid = detach(home, img, "--policy", str(policy))
        approval = waits_on("approval:").split(":")[1]
        assert cli(home, "approve", approval).returncode == 0
        question = waits_on("human:").split(":")[1]
        daemon.send_signal(signal.SIGKILL)
        gone(home, daemon)
    # Answered while no supervisor runs: honoured when the question is asked again.
    assert cli(home, "answer", question, "yes").returncode == 0
    with serving(home) as daemon:
        approval = waits_on("approval:").split(":")[1]  # the sleep's, not the question's
        assert cli(home, "approve", approval).returncode == 0
        sleep = waits_on("sleep:")
        daemon.send_signal(signal.SIGKILL)
        gone(home, daemon)
    with serving(home):
        rec = out_json(cli(home, "wait", str(pid), "--json"))
    assert rec["state"] == "exited", rec
    assert rec["result"]["answer"] == "yes", rec
    # The sleep kept the deadline it was first given: not 4 s again from the restart.
    assert 3.5 <= rec["result"]["slept"] < 8, rec
    # Two approvals in all, and one question: nothing was asked twice.
    kinds = sorted(a["kind"] for a in asks())
    assert kinds == ["approval", "approval", "question"], asks()
    assert sleep.startswith("sleep:")


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize(("argv", "code", "needle"), [
    (["restore", "nosuch"], 2, "no checkpoint 'nosuch'"),
    (["restore", "42"], 2, "no checkpoint '42'"),
    (["resume", "42"], 2, "42"),
    (["checkpoint", "42"], 2, "42"),
    (["resolve", "42", "--skip"], 2, "42"),
    (["resolve", "1"], 2, "one of the arguments --retry --skip --fail is required"),
    (["resolve", "1", "--skip", "--fail"], 2, "not allowed with"),
    (["checkpoint", "1", "123"], 2, "not all digits"),
])
def test_bad_durable_commands_get_a_clear_one_line_error(
    home: Path, make_image: MakeImage, argv: list[str], code: int, needle: str
) -> None:
    out_json(cli(home, "run", str(make_image("checkpointer", CHECKPOINTER)), "--json"))
    p = cli(home, *argv)
    assert p.returncode == code, p.stderr
    if "required" in needle or "allowed" in needle:
        assert needle in p.stderr
    else:
        assert_one_line_error(p, needle)
