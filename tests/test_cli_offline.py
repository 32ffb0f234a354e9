"""`event post`, `kill` and `caps revoke` while no supervisor runs: each writes into the
store, under the home's lock, what a supervisor would have written, and the next
supervisor acts on it. Real daemons (killed with SIGKILL, or stopped), real agents."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MakeImage
from tests.test_cli import assert_one_line_error, cli, serving, wait_for
from tests.test_cli_durable import detach, gone, out_json, ps_row

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox layer "
                                                  "required, which needs root"),
]

WAITER = """
def main(ctx, args):
    return ctx.events.wait("go")
"""

# A parent waiting for its child, which waits for a human's answer: a tree with an ask.
ASKING_KID = """
def main(ctx, args):
    return ctx.human.ask("Which colour?", choices=["red", "blue"])
"""
PARENT = """
def main(ctx, args):
    return ctx.proc.wait(ctx.proc.spawn("kid"))["result"]
"""

# Both wait for `go`, then try to write in their cwd.
GATED_KID = """
from agentlibos.errors import LibOSError

def main(ctx, args):
    ctx.events.wait("go")
    try:
        ctx.fs.write_text("kid.txt", "x")
        return "written"
    except LibOSError as e:
        return type(e).__name__
"""
GATED_PARENT = """
from agentlibos.errors import LibOSError

def main(ctx, args):
    kid = ctx.proc.spawn("gatedkid")
    ctx.events.wait("go")
    try:
        ctx.fs.write_text("mom.txt", "x")
        wrote = "written"
    except LibOSError as e:
        wrote = type(e).__name__
    return {"wrote": wrote, "kid": ctx.proc.wait(kid)["result"]}
"""

POLICY = """
allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", "clock:*:*", "human:*:*"]
default = "deny"
"""


def _evict_soon(home: Path) -> None:
    (home / "config.toml").write_text('[durable]\nevict_after = "1s"\n')


def _audit(home: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = out_json(cli(home, "audit", "--json"))
    return records


# ------------------------------------------------------------------ event post

@pytest.mark.parametrize("how", ["kill-9-while-waiting", "evicted-then-stopped"])
def test_an_event_posted_while_no_supervisor_runs_reaches_its_waiter_on_resume(
    home: Path, make_image: MakeImage, how: str
) -> None:
    img = make_image("waiter", WAITER, caps=["event:wait:go"])
    if how == "evicted-then-stopped":
        _evict_soon(home)
    with serving(home) as daemon:
        pid = detach(home, img)
        wait_for(lambda: ps_row(home, pid)["wait"] == "event:go")
        if how == "evicted-then-stopped":
            wait_for(lambda: ps_row(home, pid)["evicted"])
            daemon.send_signal(signal.SIGTERM)
        else:
            daemon.kill()
        gone(home, daemon)
    assert ps_row(home, pid)["state"] == "waiting"

    posted = cli(home, "event", "post", "go", "--data", '{"v": 1}', "--json")
    out = out_json(posted)
    assert out == {"name": "go", "id": out["id"], "woken": 0, "supervisor": False}
    note = posted.stderr.strip()
    assert note.startswith("agentlibos: no supervisor is running: go (event "), note
    assert "recorded in the store" in note and "agentlibos serve" in note, note
    assert "resume PID" in note and len(note.splitlines()) == 1, note
    # Audited as the supervisor audits an operator's post.
    posts = [r for r in _audit(home) if r["call"] == "event.post"]
    assert [(r["pid"], r["request"], r["verdict"], r["detail"]) for r in posts] == [
        (None, "event:post:go", "info", {"by": "operator", "id": out["id"], "woken": 0})]
    assert ps_row(home, pid)["state"] == "waiting"  # nobody woke it yet

    with serving(home):
        rec = out_json(cli(home, "wait", str(pid), "--json"))
    assert (rec["exit_reason"], rec["result"]) == ("returned", {"v": 1}), rec
    assert out_json(cli(home, "audit", "--verify", "--json"))["ok"] is True


def test_an_offline_post_in_text_says_nobody_was_woken(
    home: Path, make_image: MakeImage
) -> None:
    quick = make_image("quick", "def main(ctx, args):\n    return 1\n")
    cli(home, "run", str(quick), check=True)  # a store, and no supervisor left
    p = cli(home, "event", "post", "other")
    assert p.returncode == 0 and p.stdout == "", p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("agentlibos: no supervisor is running: other (event ")
    assert lines[1].startswith("agentlibos: posted other (event ")
    assert lines[1].endswith("0 waiters woken")


# ------------------------------------------------------------------ kill

def _tree(home: Path, pid: int) -> list[dict[str, Any]]:
    rows = out_json(cli(home, "ps", "--all", "--json"))
    return [r for r in rows if r["root_pid"] == pid]


def _shape(home: Path, root: int) -> list[tuple[Any, ...]]:
    """What a kill recorded of a two-process tree, with its pids as names: each row and
    each proc.exit audit record, in the order they were written, and its asks."""
    tree = _tree(home, root)
    name = {r["pid"]: ("root" if r["pid"] == root else "kid") for r in tree}

    def named(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for pid, n in name.items():
            text = text.replace(str(pid), n)
        return text

    rows = [("row", name[r["pid"]], r["state"], r["exit_reason"], named(r["error"]),
             r["wait"], r["resumes"]) for r in tree]
    exits = [("exit", name[r["pid"]], r["request"].replace(str(r["pid"]), "P"),
              r["verdict"], {k: named(v) for k, v in r["detail"].items()})
             for r in _audit(home) if r["call"] == "proc.exit" and r["pid"] in name]
    asks = [("ask", name[a["pid"]], a["kind"], a["state"], a.get("reason"))
            for a in out_json(cli(home, "approvals", "--all", "--json"))
            if a["pid"] in name]
    return rows + exits + asks


def _all_evicted(home: Path, count: int) -> bool:
    rows = out_json(cli(home, "ps", "--json"))
    return len(rows) == count and all(r["evicted"] for r in rows)


def test_kill_with_no_supervisor_records_the_tree_killed_as_a_supervisor_would(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    make_image("kid", ASKING_KID, caps=["human:ask:*"])
    mom = make_image("mom", PARENT, caps=["proc:spawn:kid", "human:ask:*"])
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    _evict_soon(home)
    with serving(home) as daemon:
        online = detach(home, mom, "--policy", str(policy))
        offline = detach(home, mom, "--policy", str(policy))
        # Both trees wait for a human, evicted: no host process left in either.
        wait_for(lambda: _all_evicted(home, 4), timeout_s=60)
        # The reference: a kill on a running supervisor.
        assert cli(home, "kill", str(online)).returncode == 0
        assert cli(home, "wait", str(online)).returncode == 1
        daemon.kill()
        gone(home, daemon)
    kid = next(r["pid"] for r in _tree(home, offline) if r["pid"] != offline)
    question = next(a for a in out_json(cli(home, "approvals", "--json"))
                    if a["pid"] == kid)

    p = cli(home, "kill", str(offline), "--json")
    assert json.loads(p.stdout) == {"pid": offline, "stopping": True,
                                    "killed": [kid, offline], "supervisor": False}, p.stderr
    assert p.returncode == 0
    note = p.stderr.strip()
    assert note == (f"agentlibos: no supervisor is running: process {offline} with its "
                    f"descendants {kid} recorded killed in the store (no host process was "
                    "left to stop); no supervisor will resume it"), note
    # The same records a supervisor's kill wrote, pids aside.
    assert _shape(home, offline) == _shape(home, online)
    assert ("row", "kid", "killed", "killed", "its ancestor root was stopped", None, 0) in \
        _shape(home, offline)
    assert ("ask", "kid", "question", "expired", "the process ended") in \
        _shape(home, offline)

    # Ended already: exit 1, nothing changed; an unknown pid: exit 2.
    again = cli(home, "kill", str(offline))
    assert again.returncode == 1
    assert_one_line_error(again, f"process {offline} is not running (it is killed)")
    assert cli(home, "kill", "999").returncode == 2
    assert_one_line_error(cli(home, "answer", str(question["id"]), "red"), "expired")

    # The next supervisor leaves them killed: nothing resumed, no host process.
    with serving(home):
        rec = cli(home, "wait", str(offline), "--json")
        assert rec.returncode == 1
        assert json.loads(rec.stdout)["state"] == "killed"
        assert [r["state"] for r in _tree(home, offline)] == ["killed", "killed"]
    assert all(r["host_pid"] is None and r["resumes"] == 0 for r in _tree(home, offline))
    assert not [r for r in _audit(home) if r["pid"] in (offline, kid)
                and r["call"] in ("proc.resume", "proc.crash")]
    assert out_json(cli(home, "audit", "--verify", "--json"))["ok"] is True


# ------------------------------------------------------------------ caps revoke

def test_a_capability_revoked_with_no_supervisor_stays_revoked_after_resume(
    home: Path, make_image: MakeImage
) -> None:
    make_image("gatedkid", GATED_KID, caps=["fs:rw:./**", "event:wait:go"])
    mom = make_image("gated", GATED_PARENT,
                     caps=["fs:rw:./**", "event:wait:go", "proc:spawn:gatedkid"])
    with serving(home) as daemon:
        pid = detach(home, mom)
        wait_for(lambda: [r["wait"] for r in _tree(home, pid)] == ["event:go"] * 2)
        daemon.kill()
        gone(home, daemon)
    kid = next(r["pid"] for r in _tree(home, pid) if r["pid"] != pid)
    held = out_json(cli(home, "caps", str(pid), "--json"))
    write = next(c for c in held if c.startswith("fs:rw:"))
    cut = write.replace("fs:rw:", "fs:write:", 1)
    read = write.replace("fs:rw:", "fs:read:", 1)

    p = cli(home, "caps", "revoke", str(pid), cut, "--json")
    out = out_json(p)
    assert out["supervisor"] is False and out["pid"] == pid and out["cap"] == cut
    assert [c["pid"] for c in out["changed"]] == [pid, kid]
    assert all(read in c["caps"] and write not in c["caps"] for c in out["changed"])
    assert "no supervisor is running" in p.stderr and "in the store" in p.stderr
    for p_ in (pid, kid):  # the store a resume reads
        caps = out_json(cli(home, "caps", str(p_), "--json"))
        assert read in caps and write not in caps, caps
    revokes = [r for r in _audit(home) if r["call"] == "caps.revoke"]
    assert [(r["pid"], r["request"], r["detail"]["by"]) for r in revokes] == [
        (pid, cut, "operator"), (kid, cut, "operator")]
    # Nothing within it is left: exit 2, as with a supervisor; so is an unknown pid.
    assert cli(home, "caps", "revoke", str(pid), cut).returncode == 2
    unknown = cli(home, "caps", "revoke", "999", "fs:read:/tmp/**")
    assert unknown.returncode == 2
    assert_one_line_error(unknown, "999")

    with serving(home):
        assert cli(home, "event", "post", "go").returncode == 0
        rec = out_json(cli(home, "wait", str(pid), "--json"))
    assert rec["result"] == {"wrote": "PermissionDenied", "kid": "PermissionDenied"}, rec
    assert out_json(cli(home, "audit", "--verify", "--json"))["ok"] is True


def test_caps_revoke_of_an_unknown_pid_where_nothing_ran_is_bad_input(home: Path) -> None:
    p = cli(home, "caps", "revoke", "1", "fs:read:/tmp/**")
    assert p.returncode == 2
    assert_one_line_error(p, "no process 1")
