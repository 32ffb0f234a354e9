"""The waiting commands against real daemons and real agents: approvals, approve, deny,
answer, event post, caps and caps revoke; `run --ask queue|deny`; bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MakeImage
from tests.test_cli import assert_one_line_error, cli, serving, wait_for

# Tests that run agents need every sandbox layer, so root. They are marked: in CI
# (AGENTLIBOS_STRICT=1) a skip of a privileged test is a failure, never a silent pass.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox "
                                                           "layer required, which needs root")

# Writes out.txt in its cwd `n` times; reports each write as written or refused.
WRITER = """
from agentlibos.errors import PermissionDenied

def main(ctx, args):
    results = []
    for _ in range(int(args.get("n", 1))):
        try:
            ctx.fs.write_text("out.txt", args.get("text", "hello"))
            results.append("written")
        except PermissionDenied as e:
            results.append("denied: " + str(e))
    return results
"""

# Writing in the cwd asks a human; the rest of what the tests' agents do is allowed.
ASKING_POLICY = """
deny = []
ask = ["fs:write:./**"]
allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "jit:*:*", "event:*:*", "clock:*:*",
         "human:*:*"]
default = "deny"
"""

ASKER = """
def main(ctx, args):
    return ctx.human.ask(args.get("question", "Which colour?"), choices=["red", "blue"])
"""

ITEM_KEYS = {"id", "kind", "pid", "digest", "summary", "state", "created_at"}


@pytest.fixture
def daemon(home: Path) -> Iterator[subprocess.Popen[str]]:
    with serving(home) as proc:
        yield proc


# The fixtures below are shared with test_cli_ask.py: pytest finds them there through
# `pytest_plugins` in conftest.py, so they are written once.
@pytest.fixture
def proj(tmp_path: Path) -> Path:
    d = tmp_path / "proj"
    d.mkdir()
    return d


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "asking.toml"
    p.write_text(ASKING_POLICY)
    return p


@pytest.fixture
def writer(make_image: MakeImage) -> Path:
    return make_image("writer", WRITER, caps=["fs:rw:./**"])


@pytest.fixture
def asker(make_image: MakeImage) -> Path:
    return make_image("asker", ASKER, caps=["human:ask:*"])


def start_run(home: Path, *args: str) -> subprocess.Popen[str]:
    """`agentlibos run` in the background, stdin not a terminal (so `--ask` defaults to queue)."""
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "agentlibos", "run", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def items(home: Path, *flags: str) -> list[dict[str, Any]]:
    p = cli(home, "approvals", "--json", *flags)
    assert p.returncode == 0, p.stderr
    out: list[dict[str, Any]] = json.loads(p.stdout)
    return out


def next_item(home: Path, pid: int, *, after: int = 0) -> dict[str, Any]:
    """Wait for a pending item of ``pid`` with an id above ``after``, and return it."""
    found: list[dict[str, Any]] = []

    def pending() -> bool:
        found[:] = [it for it in items(home) if it["pid"] == pid and it["id"] > after]
        return bool(found)

    wait_for(pending, timeout_s=30)
    return found[0]


def ps(home: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli(home, "ps", "--all", "--json").stdout or "[]")
    return rows


def ps_row(home: Path, pid: int) -> dict[str, Any]:
    return next(r for r in ps(home) if r["pid"] == pid)


def result(out: str) -> Any:
    return json.loads(out)["result"]


# ------------------------------------------------------------------- no agents needed

def test_a_post_where_nothing_has_run_says_no_supervisor_and_how_to_start_one(
    home: Path
) -> None:
    # With a store, a post is recorded for resumed waiters (test_cli_offline.py); where
    # nothing has run, nobody can be waiting: most likely the wrong home.
    p = cli(home, "event", "post", "build-done")
    assert p.returncode == 1
    assert_one_line_error(p, "no supervisor is running", "agentlibos serve")
    assert p.stdout == ""


def test_without_a_supervisor_the_queue_and_caps_are_read_from_the_store(
    home: Path, make_image: MakeImage
) -> None:
    # Nothing has run: the queue is empty, and there is no process 1.
    p = cli(home, "approvals", "--all", "--json")
    assert (p.returncode, json.loads(p.stdout)) == (0, []), p.stderr
    assert "nothing waits for a human" in cli(home, "approvals").stdout
    assert_one_line_error(cli(home, "caps", "1"), "no process 1")
    assert cli(home, "caps", "1").returncode == 2
    # A run that asked and ended: its ask and its capabilities stay readable.
    img = make_image("asker", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            try:
                ctx.fs.write_text("x.txt", "x")
            except PermissionDenied:
                return "denied"
    """, caps=["fs:rw:./**"])
    policy = home / "ask.toml"
    policy.write_text('ask = ["fs:write:./**"]\nallow = ["fs:*:./**"]\n')
    with serving(home):
        run = cli(home, "run", str(img), "--policy", str(policy), "--detach")
        assert run.returncode == 0, run.stderr
        wait_for(lambda: json.loads(cli(home, "approvals", "--json").stdout or "[]") != [])
        assert cli(home, "deny", "1").returncode == 0
        assert cli(home, "wait", "1").returncode == 0
    items = json.loads(cli(home, "approvals", "--all", "--json").stdout)
    assert [(i["kind"], i["pid"], i["state"]) for i in items] == [("approval", 1, "denied")]
    assert json.loads(cli(home, "approvals", "--json").stdout) == []
    caps = cli(home, "caps", "1", "--json")
    assert caps.returncode == 0 and "read from its store" in caps.stderr
    assert any(c.startswith("fs:rw:/") for c in json.loads(caps.stdout)), caps.stdout


@pytest.mark.parametrize("argv", [
    ["approve", "1"], ["approve", "1", "--always"], ["deny", "1", "--reason", "no"],
    ["answer", "1", "yes"],
])
def test_without_a_supervisor_a_decision_on_an_unknown_id_is_bad_input(
    home: Path, argv: list[str]
) -> None:
    # With no supervisor a decision goes straight to the store (test_cli_durable.py):
    # here nothing has run, so there is no such approval.
    p = cli(home, *argv)
    assert p.returncode == 2
    assert_one_line_error(p, "no approval or question 1")
    assert p.stdout == ""


@pytest.mark.parametrize("argv", [
    ["approve", "abc"], ["approve", "0"], ["deny"], ["answer", "1"], ["caps"],
    ["caps", "x"], ["caps", "1", "2"], ["caps", "revoke", "1"], ["caps", "revoke", "x", "c"],
    ["event", "post"], ["event", "post", "bad name!"], ["event", "post", "_x"],
    ["event", "post", "a" * 129], ["event", "post", "build-done\n"],
])
def test_bad_usage_exits_2_before_asking_anyone(home: Path, argv: list[str]) -> None:
    p = cli(home, *argv)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert not (home / "state.db").exists()


@pytest.mark.parametrize("data", ["{", "not json", "{'a': 1}", ""])
def test_event_post_with_data_that_is_not_json_exits_2_and_sends_nothing(
    home: Path, data: str
) -> None:
    p = cli(home, "event", "post", "build-done", "--data", data)
    assert p.returncode == 2
    assert_one_line_error(p, "--data is not JSON")


def test_every_new_command_has_an_example_in_its_help(home: Path) -> None:
    for argv in (["approvals"], ["approve"], ["deny"], ["answer"], ["event", "post"],
                 ["caps"]):
        p = cli(home, *argv, "--help", check=True)
        assert "example:\n  agentlibos " in p.stdout, argv
    run_help = cli(home, "run", "--help", check=True).stdout
    assert "--ask {prompt,queue,deny}" in run_help


def test_ask_prompt_with_detach_is_bad_usage(home: Path, make_image: MakeImage) -> None:
    img = make_image("quick", "def main(ctx, args):\n    return 1\n")
    p = cli(home, "run", str(img), "--detach", "--ask", "prompt")
    assert p.returncode == 2
    assert_one_line_error(p, "--ask prompt")


# ------------------------------------------------------------------- with real agents

@pytest.mark.privileged
@needs_root
@pytest.mark.usefixtures("daemon")
def test_queue_approve_once_then_an_identical_call_asks_again_and_deny_carries_the_reason(
    home: Path, writer: Path, policy: Path, proj: Path
) -> None:
    run = start_run(home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                    "--arg", "n=2", "--json")  # stdin not a terminal: --ask queue
    first = next_item(home, 1)
    assert set(first) >= ITEM_KEYS, first
    assert first["kind"] == "approval" and first["state"] == "pending"
    assert first["request"] == f"fs:write:{proj}/out.txt"
    assert re.search(r"[0-9a-f]{64}", first["digest"]), first["digest"]
    assert first["summary"] and "\n" not in first["summary"]
    row = ps_row(home, 1)
    assert (row["state"], row["wait"]) == ("waiting", f"approval:{first['id']}")
    # The table shows it too, one line per item.
    table = cli(home, "approvals", check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "KIND", "PID", "STATE"]
    assert any(line.split()[0] == str(first["id"]) and f"fs:write:{proj}/out.txt" in line
               for line in table[1:])

    approved = cli(home, "approve", str(first["id"]), "--json", check=True)
    assert json.loads(approved.stdout).items() >= {"id": first["id"],
                                                   "state": "approved"}.items()
    # One-shot: the identical second write asks again, under a new id.
    second = next_item(home, 1, after=first["id"])
    assert second["request"] == first["request"] and second["digest"] == first["digest"]
    assert (proj / "out.txt").read_text() == "hello"
    # Deciding again is refused and changes nothing.
    again = cli(home, "deny", str(first["id"]))
    assert again.returncode == 1
    assert_one_line_error(again)
    denied_line = cli(home, "deny", str(second["id"]), "--reason", "no, not the config",
                      check=True).stderr
    assert f"approval {second['id']} denied" in denied_line

    out, err = finish(run)
    assert run.returncode == 0, err
    # The run said, once each, what waited and how to answer it.
    assert err.count(f"waits on approval {first['id']}:") == 1, err
    assert f"agentlibos approve {first['id']} [--always] | agentlibos deny" in err
    assert err.count(f"waits on approval {second['id']}:") <= 1, err  # if it was seen
    written, denied = result(out)
    assert written == "written"
    assert denied.startswith("denied: ") and "no, not the config" in denied
    states = {it["id"]: it["state"] for it in items(home, "--all")}
    assert states[first["id"]] == "approved" and states[second["id"]] == "denied"
    assert items(home) == []
    unknown = cli(home, "approve", "9999")
    assert unknown.returncode == 2
    assert_one_line_error(unknown, "9999")


@pytest.mark.privileged
@needs_root
def test_approve_always_lets_identical_calls_through_for_the_process_life(
    home: Path, daemon: subprocess.Popen[str], writer: Path, policy: Path, proj: Path
) -> None:
    run = start_run(home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                    "--arg", "n=3", "--ask", "queue", "--json")
    first = next_item(home, 1)
    cli(home, "approve", str(first["id"]), "--always", check=True)
    out, err = finish(run)
    assert run.returncode == 0, err
    assert result(out) == ["written"] * 3
    assert [it["id"] for it in items(home, "--all")] == [first["id"]]
    # The process held it for the rest of its life: `caps` shows it with what it held.
    pid = str(first["pid"])
    held = json.loads(cli(home, "caps", pid, "--json", check=True).stdout)
    assert held[-1] == first["request"] == f"fs:write:{proj}/out.txt", held
    assert f"{first['request']}  (approved --always)" in cli(home, "caps", pid).stdout


@pytest.mark.privileged
@needs_root
def test_ask_deny_refuses_every_ask_at_once(
    home: Path, writer: Path, policy: Path, proj: Path
) -> None:
    p = cli(home, "run", str(writer), "--cwd", str(proj), "--policy", str(policy),
            "--ask", "deny", "--json")
    assert p.returncode == 0, p.stderr
    [denied] = result(p.stdout)
    assert denied.startswith("denied: ") and f"{proj}/out.txt" in denied
    assert not (proj / "out.txt").exists()


@pytest.mark.privileged
@needs_root
def test_config_names_the_whole_operator_config_not_only_its_policy(
    home: Path, writer: Path, proj: Path, tmp_path: Path
) -> None:
    # `--config` with an [approvals] timeout and a [policy] that asks: both hold for the
    # embedded supervisor `run` starts; the home's config.toml (none here) plays no part.
    cfg = tmp_path / "operator.toml"
    cfg.write_text('[approvals]\ntimeout = "1s"\n\n[policy]\n' + ASKING_POLICY)
    p = cli(home, "--config", str(cfg), "run", str(writer), "--cwd", str(proj), "--ask",
            "queue", "--json", timeout=60)
    assert p.returncode == 0, p.stderr
    [refused] = result(p.stdout)
    assert refused.startswith("denied: ") and "approval timed out after 1 s" in refused
    assert not (proj / "out.txt").exists()


@pytest.mark.privileged
@needs_root
def test_a_question_with_choices_takes_only_one_of_them(
    home: Path, daemon: subprocess.Popen[str], asker: Path, policy: Path
) -> None:
    run = start_run(home, str(asker), "--policy", str(policy), "--json")
    q = next_item(home, 1)
    assert set(q) >= ITEM_KEYS, q
    assert (q["kind"], q["question"], q["choices"]) == ("question", "Which colour?",
                                                         ["red", "blue"])
    assert ps_row(home, 1)["wait"] == f"human:{q['id']}"
    text = cli(home, "approvals", check=True).stdout
    assert "Which colour? [red | blue]" in text
    bad = cli(home, "answer", str(q["id"]), "green")
    assert bad.returncode == 2
    assert_one_line_error(bad, "red", "blue")
    wrong_kind = cli(home, "approve", str(q["id"]))
    assert wrong_kind.returncode == 2
    assert_one_line_error(wrong_kind)
    assert [(it["id"], it["state"]) for it in items(home)] == [(q["id"], "pending")]
    answered = json.loads(cli(home, "answer", str(q["id"]), "blue", "--json",
                              check=True).stdout)
    assert answered.items() >= {"id": q["id"], "state": "answered"}.items()
    out, err = finish(run)
    assert run.returncode == 0, err
    assert result(out) == "blue"
    twice = cli(home, "answer", str(q["id"]), "red")
    assert twice.returncode != 0
    assert_one_line_error(twice)
    # deny declines a question, and says so in those words.
    run2 = start_run(home, str(asker), "--policy", str(policy), "--json")
    q2 = next_item(home, 2)
    declined = cli(home, "deny", str(q2["id"]), check=True)
    assert f"question {q2['id']} declined" in declined.stderr
    _out2, err2 = finish(run2)
    assert run2.returncode == 1, err2


@pytest.mark.privileged
@needs_root
def test_agent_chosen_text_in_the_queue_table_is_escaped(
    home: Path, daemon: subprocess.Popen[str], asker: Path, policy: Path
) -> None:
    run = start_run(home, str(asker), "--policy", str(policy), "--arg",
                    'question="evil\\u001b[2J\\nforged line"')
    q = next_item(home, 1)
    assert q["question"] == "evil\x1b[2J\nforged line"
    table = cli(home, "approvals", check=True).stdout
    assert "\x1b" not in table and "evil\\x1b[2J\\nforged line" in table
    assert len(table.splitlines()) == 2
    cli(home, "answer", str(q["id"]), "red", check=True)
    finish(run)


@pytest.mark.privileged
@needs_root
def test_event_post_wakes_the_waiter_with_its_data_and_bad_input_changes_nothing(
    home: Path, daemon: subprocess.Popen[str], make_image: MakeImage
) -> None:
    waiter = make_image("waiter", """
        def main(ctx, args):
            return ctx.events.wait("build-done")
    """, caps=["event:wait:build-done"])
    run = start_run(home, str(waiter), "--json")
    wait_for(lambda: ps_row(home, 1)["wait"] == "event:build-done"
             if any(r["pid"] == 1 for r in ps(home)) else False)
    bad = cli(home, "event", "post", "build-done", "--data", "{oops")
    assert bad.returncode == 2
    bad_name = cli(home, "event", "post", "build done")
    assert bad_name.returncode == 2
    assert_one_line_error(bad_name, "not a valid event name")
    assert ps_row(home, 1)["wait"] == "event:build-done"
    posted = json.loads(cli(home, "event", "post", "build-done", "--data",
                            '{"version": "1.4.2"}', "--json", check=True).stdout)
    assert posted["name"] == "build-done" and posted["woken"] == 1
    out, err = finish(run)
    assert run.returncode == 0, err
    assert result(out) == {"version": "1.4.2"}


@pytest.mark.privileged
@needs_root
def test_a_run_holds_its_request_less_what_its_policy_refuses_in_all_of_it(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    # DESIGN: held = the image's request ∩ what the policy grants.
    img = make_image("wanting", """
        def main(ctx, args):
            return ctx.caps.list()
    """, caps=["fs:read:/etc/**", "net:fetch:*", "shell:exec:*", "fs:rw:./**"])
    policy = tmp_path / "strict.toml"
    policy.write_text('deny = ["fs:*:/etc/**", "net:*:*"]\nallow = ["fs:read:./**"]\n'
                      'default = "deny"\n')
    proj = tmp_path / "proj"
    proj.mkdir()
    run = cli(home, "run", str(img), "--policy", str(policy), "--cwd", str(proj), "--json")
    assert run.returncode == 0, run.stderr
    rec = json.loads(run.stdout)
    assert rec["result"] == [f"fs:read:{proj}/**"]
    assert json.loads(cli(home, "caps", str(rec["pid"]), "--json").stdout) == rec["result"]


def test_caps_shows_a_live_process_capabilities_and_revoke_takes_one_at_once(
    home: Path, daemon: subprocess.Popen[str], make_image: MakeImage, proj: Path
) -> None:
    gated = make_image("gated", """
        import time
        from agentlibos.errors import PermissionDenied

        def main(ctx, args):
            # Allowed once before the revoke: the same request afterwards must be
            # decided again, not answered from the broker's memo of decisions.
            ctx.fs.write_text("out/x.txt", "before")
            while not ctx.fs.exists("go"):
                time.sleep(0.02)
            try:
                ctx.fs.write_text("out/x.txt", "after")
                return "written"
            except PermissionDenied as e:
                return "denied: " + str(e)
    """, caps=["fs:read:./**", "fs:write:./out/**"])
    (proj / "out").mkdir()
    run = start_run(home, str(gated), "--cwd", str(proj), "--json")
    wait_for(lambda: any(r["pid"] == 1 and r["state"] == "running" for r in ps(home)))
    wait_for((proj / "out/x.txt").exists)
    read, write = f"fs:read:{proj}/**", f"fs:write:{proj}/out/**"
    held = json.loads(cli(home, "caps", "1", "--json", check=True).stdout)
    assert isinstance(held, list) and {read, write} <= set(held)
    assert {read, write} <= set(cli(home, "caps", "1", check=True).stdout.splitlines())

    cli(home, "caps", "revoke", "1", write, check=True)
    after = json.loads(cli(home, "caps", "1", "--json", check=True).stdout)
    assert write not in after and read in after
    # Revoking what it no longer holds: refused, nothing changed.
    again = cli(home, "caps", "revoke", "1", write)
    assert again.returncode == 2
    assert_one_line_error(again)
    assert json.loads(cli(home, "caps", "1", "--json", check=True).stdout) == after
    nosuch = cli(home, "caps", "999")
    assert nosuch.returncode == 2
    assert_one_line_error(nosuch)

    (proj / "go").write_text("")
    out, err = finish(run)
    assert run.returncode == 0, err
    assert result(out).startswith("denied: ")
    assert (proj / "out/x.txt").read_text() == "before"
