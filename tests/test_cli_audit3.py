"""The command line's third audit: JSON input is JSON (no NaN), a result the broker
refuses fails the process instead of crashing it, `audit --pid` of a pid that does not
exist, what the library logs reaches stderr as `agentlibos:` lines, and a child's wall
limit in `ps` reads like a root's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from agentlibos.cli.common import NotJSON, parse_args_kv, parse_json
from agentlibos.kernel.units import format_duration
from agentlibos.sandbox import cgroups
from agentlibos.ui import limits_text
from tests.helpers import MakeImage
from tests.test_cli import assert_one_line_error, cli, serving

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox "
                                                           "layer required: needs root")

# ------------------------------------------------------------- JSON input (pure)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1, NaN]",
                                  '{"x": -Infinity}', "1e999", "-1e999", "{", "1" * 5000,
                                  "[" * 100_000])
def test_text_that_is_not_json_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(NotJSON) as e:
        parse_json(text)
    assert str(e.value) and "\n" not in str(e.value)


def test_json_values_parse_as_json() -> None:
    assert parse_json('{"n": 3, "x": [1.5, null, true, "NaN"]}') == {
        "n": 3, "x": [1.5, None, True, "NaN"]}


def test_an_arg_that_is_not_json_is_text_nan_included() -> None:
    assert parse_args_kv(["a=NaN", "b=-Infinity", "c=1e999", "n=3", "f=1.5", 's="NaN"']) == {
        "a": "NaN", "b": "-Infinity", "c": "1e999", "n": 3, "f": 1.5, "s": "NaN"}


def test_event_data_that_is_not_json_exits_2_and_sends_nothing(home: Path) -> None:
    # No supervisor runs: a --data accepted would exit 1 for that instead.
    for data in ("NaN", "[Infinity]", "1e999"):
        p = cli(home, "event", "post", "build-done", "--data", data)
        assert p.returncode == 2, (data, p)
        assert_one_line_error(p, "--data is not JSON")
    assert "NaN is not JSON" in cli(home, "event", "post", "x", "--data", "NaN").stderr


@pytest.mark.privileged
@needs_root
def test_an_arg_of_nan_reaches_the_agent_as_text(home: Path, make_image: MakeImage) -> None:
    img = make_image("echo", """
        def main(ctx, args):
            return {k: [v, type(v).__name__] for k, v in args.items()}
    """)
    p = cli(home, "run", str(img), "--arg", "x=NaN", "--arg", "n=3", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["result"] == {"x": ["NaN", "str"], "n": [3, "int"]}


# -------------------------------------------------- a result the broker refuses


@pytest.mark.privileged
@needs_root
@pytest.mark.parametrize(("result", "config", "why"), [
    ("{'x': float('nan')}", "", "a non-finite number (nan)"),
    ("'y' * 5000", '[supervisor]\nmax_result = "1KiB"\n', "exceeds 1024"),
    # The default 1 MiB, refused by the broker in the same words (not the agent's own
    # ValueError at a fixed 1 MiB, which no max_result could raise).
    ("'y' * 2_000_000", "", "exceeds 1048576"),
])
def test_a_result_the_broker_refuses_fails_the_process_once(
    home: Path, make_image: MakeImage, result: str, config: str, why: str
) -> None:
    (home / "config.toml").write_text(config)
    img = make_image("refused", f"def main(ctx, args):\n    return {result}\n")
    p = cli(home, "run", str(img), "--json")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert (out["state"], out["exit_reason"], out["result"]) == ("failed", "error", None)
    assert out["error"].startswith("its result was refused: ") and why in out["error"]
    # Not a crash, so never resumed: one start, one end.
    calls = [r["call"] for r in json.loads(cli(home, "audit", "--pid", "1", "--json",
                                               check=True).stdout)]
    assert calls.count("proc.contain") == 1, calls
    assert "proc.crash" not in calls and "proc.resume" not in calls


# ------------------------------------------------------- audit of an unknown pid


def test_audit_of_a_pid_in_a_home_where_nothing_ran_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    for extra in ([], ["--json"], ["--follow"], ["--verify"]):
        p = cli(home, "audit", "--pid", "999", *extra, timeout=20)
        assert p.returncode == 2 and p.stdout == "", (extra, p)
        assert_one_line_error(p, "no process 999")
    assert not home.exists()  # looking created nothing


@pytest.mark.privileged
@needs_root
def test_audit_of_a_pid_that_does_not_exist_exits_2(home: Path, make_image: MakeImage) -> None:
    img = make_image("one", "def main(ctx, args):\n    return 1\n")
    cli(home, "run", str(img), check=True)
    for extra in ([], ["--json"], ["--follow"]):
        p = cli(home, "audit", "--pid", "999", *extra, timeout=20)
        assert p.returncode == 2 and p.stdout == "", (extra, p)
        assert_one_line_error(p, "no process", "999")
    recs = json.loads(cli(home, "audit", "--pid", "1", "--json", check=True).stdout)
    assert recs and {r["pid"] for r in recs} == {1}
    assert "proc.exit" in cli(home, "audit", "--pid", "1", check=True).stdout


# --------------------------------------------- what the library logs, on stderr


def _rmdir_tree(top: str) -> bool:
    """Remove a cgroup directory and those under it (their files go with them)."""
    for d, _, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


@pytest.mark.privileged
@needs_root
@pytest.mark.slow
def test_a_stale_cgroup_removed_at_start_is_an_agentlibos_line(
    home: Path, make_image: MakeImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cgroup root of this test's own, in every hierarchy: no other supervisor on the
    # host sweeps it (their own bases hold only `agentlibos-*` groups of theirs).
    host = cgroups.detect()
    rel = f"/alos-test{os.getpid()}-stale"
    roots = [f"{mount.rstrip('/')}{rel}" for mount in host.mounts.values()]
    made: list[str] = []
    try:
        for d in roots:
            os.mkdir(d)
            made.append(d)
        # What a supervisor killed with -9 leaves: its group, no process in it.
        key = host.hierarchy_of("pids") or cgroups.UNIFIED
        stale = f"{host.mounts[key].rstrip('/')}{rel}/{cgroups.GROUP_PREFIX}test-dead"
        os.makedirs(f"{stale}/agents/x")
        # Younger groups are left alone: they may be a supervisor being set up.
        age = time.time() - os.stat(stale).st_ctime
        time.sleep(max(0.0, cgroups.STALE_MIN_AGE_S + 0.5 - age))
        monkeypatch.setenv("AGENTLIBOS_CGROUP_ROOT", rel)
        run = cli(home, "run", str(make_image("one", "def main(ctx, args):\n    return 1\n")))
        assert run.returncode == 0, run.stderr
        lines = run.stderr.splitlines()
        assert all(ln.startswith("agentlibos: ") for ln in lines), run.stderr
        # One line, however many groups (and hierarchies) the dead supervisor left.
        [note] = [ln for ln in lines if "stale cgroup" in ln]
        assert note.startswith("agentlibos: note: removed ") and stale in note, run.stderr
        assert not os.path.exists(stale)
    finally:
        deadline = time.monotonic() + 10
        while made and time.monotonic() < deadline:
            made = [d for d in made if not _rmdir_tree(d)]
            time.sleep(0.05 if made else 0)
        assert made == [], f"{made} left behind"


# ----------------------------------------------------------- ps: a child's wall


def test_a_wall_limit_shows_to_the_second_in_the_units_a_root_uses() -> None:
    assert limits_text({"wall_limit_s": 3600.0}) == "wall=1h"
    assert limits_text({"wall_limit_s": 3599.9931169030006}) == "wall=1h"
    assert limits_text({"wall_limit_s": 599.4}) == "wall=599s"
    assert limits_text({"wall_limit_s": 0.25}) == "wall=0.25s"
    # `logs PID` is capped per process, and ps shows the cap (DESIGN).
    assert limits_text({"wall_limit_s": 3600.0, "log_max_bytes": 8 << 20}) == "wall=1h,log=8MiB"


@pytest.mark.privileged
@needs_root
def test_ps_shows_a_childs_wall_limit_like_a_roots(home: Path, make_image: MakeImage) -> None:
    make_image("kid", "def main(ctx, args):\n    return 1\n")
    img = make_image("mom", """
        def main(ctx, args):
            return ctx.proc.wait(ctx.proc.spawn("kid"))["result"]
    """, caps=["proc:spawn:kid"], limits={"wall": "10m"})
    cli(home, "run", str(img), check=True)
    rows = json.loads(cli(home, "ps", "--all", "--json", check=True).stdout)
    left = rows[1]["limits"]["wall_limit_s"]  # what was left of mom's 10 minutes
    assert 0 < left < 600 and left != int(left)
    table = cli(home, "ps", "--all", "--tree", check=True).stdout.splitlines()
    assert "wall=10m" in table[1]
    walls = re.findall(r"wall=[^,\s]+", table[2])
    assert walls == [f"wall={format_duration(round(left))}"], table[2]


@pytest.mark.privileged
@needs_root
@pytest.mark.parametrize("daemon", [False, True])
def test_an_image_asking_above_the_ceiling_is_bad_input_exit_2(
    home: Path, make_image: MakeImage, daemon: bool
) -> None:
    # Like any other image the operator's host cannot take as written: exit 2, whether
    # an embedded supervisor or a daemon refused it.
    img = make_image("greedy", "def main(ctx, args):\n    return 1\n",
                     limits={"memory": "64GiB"})
    with serving(home) if daemon else contextlib.nullcontext():
        p = cli(home, "run", str(img), "--json")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert_one_line_error(p, "the image asks for memory 64GiB, above the ceiling")
    assert p.stdout == ""


def test_audit_lists_and_verify_reports_a_tampered_log_without_a_traceback(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("one", "def main(ctx, args):\n    return 1\n")
    assert cli(home, "run", str(img)).returncode == 0
    db = sqlite3.connect(home / "state.db")
    try:
        db.execute("UPDATE audit SET detail = 'not json {', ts = 'abc' WHERE seq = 2")
        db.execute("UPDATE meta SET value = 'x' WHERE key = 'audit_head'")
        db.commit()
    finally:
        db.close()
    for args in (["audit"], ["audit", "--json"]):
        proc = cli(home, *args)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    listed = json.loads(cli(home, "audit", "--json").stdout)
    assert listed[1]["detail"]["unreadable"] == {"detail": "not json {", "ts": "abc"}
    proc = cli(home, "audit", "--verify", "--json")
    assert proc.returncode == 1, proc.stderr
    res = json.loads(proc.stdout)
    assert (res["ok"], res["first_bad_seq"]) == (False, 2)
