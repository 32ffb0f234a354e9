"""The command line, run as a real subprocess the way a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import MakeImage, start_daemon, stop_process, write_image


def cli(home: Path, *args: str, timeout: float = 60,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "agentlibos", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("agentlibos: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def wait_for(cond: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def hello(make_image: MakeImage) -> Path:
    return make_image("hello", """
        def main(ctx, args):
            ctx.fs.write_text("greeting.txt", f"hello {args['who']}")
            return {"who": args["who"], "n": args.get("n")}
    """, caps=["fs:rw:./**"])


def test_run_json_prints_one_object_and_exits_zero(home: Path, hello: Path) -> None:
    p = cli(home, "run", str(hello), "--arg", "who=world", "--arg", "n=3", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out == {"pid": 1, "state": "exited", "exit_reason": "returned",
                   "result": {"who": "world", "n": 3}}
    assert (home / "work/1/greeting.txt").read_text() == "hello world"


def test_run_with_cwd_uses_that_directory(home: Path, hello: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    p = cli(home, "run", str(hello), "--arg", "who=me", "--cwd", str(proj))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"who": "me", "n": None}
    assert (proj / "greeting.txt").read_text() == "hello me"


def test_a_failing_agent_gives_a_nonzero_exit(home: Path, make_image: MakeImage) -> None:
    img = make_image("boom", "def main(ctx, args):\n    raise RuntimeError('boom')\n")
    p = cli(home, "run", str(img), "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert (out["state"], out["exit_reason"], out["error"]) == ("failed", "error",
                                                                "RuntimeError: boom")
    p = cli(home, "run", str(img))
    assert p.returncode == 1 and "RuntimeError: boom" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("setup", "needles"),
    [
        ("missing", ["does not exist"]),
        ("no-toml", ["has no image.toml"]),
        ("bad-toml", ["not valid TOML"]),
        ("bad-kind", ["unknown kind 'disk'"]),
        ("bad-limit", ["[limits] memory", "cannot parse 'lots'"]),
        ("bad-entry", ["entry module 'nowhere' not found"]),
        ("no-function", ["entry 'agent:mian'", "agent.py defines no function 'mian'"]),
        ("syntax-error", ["agent.py does not parse", "(line 1)"]),
    ],
)
def test_bad_images_get_a_one_line_error(
    home: Path, tmp_path: Path, setup: str, needles: list[str]
) -> None:
    d = tmp_path / "img"
    if setup != "missing":
        write_image(tmp_path, "img", "def main(ctx, args):\n    return 1\n")
    toml = d / "image.toml"
    if setup == "no-toml":
        toml.unlink()
    elif setup == "bad-toml":
        toml.write_text("[image\nname=")
    elif setup == "bad-kind":
        toml.write_text(toml.read_text().replace("request = []", 'request = ["disk:read:/"]'))
    elif setup == "bad-limit":
        toml.write_text(toml.read_text() + '[limits]\nmemory = "lots"\n')
    elif setup == "bad-entry":
        toml.write_text(toml.read_text().replace("agent:main", "nowhere:main"))
    elif setup == "no-function":
        toml.write_text(toml.read_text().replace("agent:main", "agent:mian"))
    elif setup == "syntax-error":
        (d / "agent.py").write_text("def main(ctx, args)\n    return 1\n")
    p = cli(home, "run", str(d))
    assert p.returncode == 2
    assert_one_line_error(p, *needles)


@pytest.mark.slow
def test_bad_command_line_input_gets_a_one_line_error(
    home: Path, hello: Path, tmp_path: Path
) -> None:
    assert_one_line_error(cli(home, "run", str(hello), "--arg", "novalue"), "bad --arg")
    assert_one_line_error(cli(home, "run", str(hello), "--arg", "a=1", "--arg", "a=2"),
                          "given twice")
    assert_one_line_error(cli(home, "run", str(hello), "--cwd", str(tmp_path / "nope")),
                          "not a directory")
    assert_one_line_error(cli(home, "run", "no-such-image"), "no image named 'no-such-image'")
    assert_one_line_error(cli(home, "run", str(hello), "--policy", str(tmp_path / "p.toml")),
                          "does not exist")
    (tmp_path / "p.toml").write_text('allow = ["fs:*:./**", "dns:query:*"]\n')
    assert_one_line_error(cli(home, "run", str(hello), "--policy", str(tmp_path / "p.toml")),
                          "unknown kind 'dns'", "p.toml")
    assert_one_line_error(cli(home, "kill", "42"))


def test_policy_file_is_applied(home: Path, hello: Path, tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text('deny = ["fs:write:**/greeting.txt"]\nallow = ["fs:*:./**"]\n')
    p = cli(home, "run", str(hello), "--arg", "who=x", "--policy", str(pol), "--json")
    assert p.returncode == 1
    assert "denied by policy rule" in json.loads(p.stdout)["error"]


def test_image_add_ls_and_run_by_name(home: Path, hello: Path) -> None:
    p = cli(home, "image", "add", str(hello), check=True)
    assert "registered hello 0.1.0" in p.stdout
    ls = json.loads(cli(home, "image", "ls", "--json", check=True).stdout)
    assert [i["name"] for i in ls] == ["hello"]
    assert ls[0]["path"] == str(home / "images/hello")
    # The registered copy is what runs, whatever happens to the source later.
    (hello / "agent.py").write_text("def main(ctx, args):\n    return 'changed'\n")
    p = cli(home, "run", "hello", "--arg", "who=reg", "--json", check=True)
    assert json.loads(p.stdout)["result"] == {"who": "reg", "n": None}


def test_ps_shows_the_table_tree_and_json(home: Path, make_image: MakeImage) -> None:
    make_image("kid", "def main(ctx, args):\n    return 1\n", limits={"memory": "64MiB"})
    img = make_image("mom", """
        def main(ctx, args):
            return ctx.proc.wait(ctx.proc.spawn("kid"))["result"]
    """, caps=["proc:spawn:kid"], limits={"wall": "10m", "pids": 8})
    cli(home, "run", str(img), check=True)
    assert cli(home, "ps", check=True).stdout.splitlines()[1:] == []  # nothing live
    rows = json.loads(cli(home, "ps", "--all", "--json", check=True).stdout)
    assert [(r["pid"], r["ppid"], r["image"], r["state"]) for r in rows] == [
        (1, None, "mom", "exited"), (2, 1, "kid", "exited")]
    tree = cli(home, "ps", "--all", "--tree", check=True).stdout.splitlines()
    assert tree[0].split() == ["PID", "PPID", "IMAGE", "STATE", "REASON", "WAIT", "AGE",
                               "LIMITS", "LAYERS"]
    assert all({"wait", "evicted", "created_at", "started_at", "limits"} <= set(r)
               for r in rows)
    assert [(r["wait"], r["evicted"]) for r in rows] == [(None, False), (None, False)]
    # The image's own limits, the operator's defaults (512MiB, 1 core) for the rest.
    assert "mem=512MiB,pids=8,cpu=1,wall=10m" in tree[1]
    assert "└ kid" in tree[2] and "mem=64MiB" in tree[2]
    assert tree[1].endswith("cgroups,namespaces,rlimits,landlock,seccomp")


def test_audit_shows_records_and_verify_detects_tampering(home: Path, hello: Path) -> None:
    cli(home, "run", str(hello), "--arg", "who=a", check=True)
    recs = json.loads(cli(home, "audit", "--json", "--pid", "1", check=True).stdout)
    assert {r["call"] for r in recs} >= {"proc.run", "fs.write", "proc.exit"}
    assert all(r["pid"] == 1 for r in recs)
    text = cli(home, "audit", check=True).stdout
    assert "fs.write" in text and "allow" in text
    ok = cli(home, "audit", "--verify")
    assert ok.returncode == 0 and "audit chain OK" in ok.stdout
    db = sqlite3.connect(home / "state.db")
    db.execute("UPDATE audit SET verdict = 'deny' WHERE seq = 2")
    db.commit()
    db.close()
    bad = cli(home, "audit", "--verify")
    assert bad.returncode == 1
    assert "BROKEN at record 2" in bad.stdout and "modified" in bad.stdout


def test_demo_runs_end_to_end(home: Path) -> None:
    p = cli(home, "demo", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "reviewer (fs:read only) tried to write and was refused" in p.stdout
    assert "audit chain verified" in p.stdout
    assert "demo-coordinator" in p.stdout and "└ demo-worker" in p.stdout
    # The same on every run (docs/cli.md): no temporary directory's name in it.
    assert "agentlibos-demo-" not in p.stdout and "<demo>/outside.txt" in p.stdout
    again = cli(home, "demo", timeout=120)
    assert again.stdout == p.stdout


@contextlib.contextmanager
def serving(home: Path, **extra: str) -> Iterator[subprocess.Popen[str]]:
    """A real `agentlibos serve` with its own AGENTLIBOS_HOME (and ``extra`` environment:
    a crash barrier, say), stopped at the end."""
    proc = start_daemon(home, **extra)
    try:
        yield proc
    finally:
        stop_process(proc, 20)


@pytest.fixture
def daemon(home: Path) -> Iterator[subprocess.Popen[str]]:
    with serving(home) as proc:
        yield proc


def test_daemon_serves_runs_and_kill_from_the_cli(
    home: Path, make_image: MakeImage, daemon: subprocess.Popen[str]
) -> None:
    sleeper = make_image("sleeper", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)
    quick = make_image("quick", "def main(ctx, args):\n    return args['x']\n")
    # Two `run`s at once go to the one daemon: one blocks, the other completes.
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    blocked = subprocess.Popen([sys.executable, "-m", "agentlibos", "run", str(sleeper),
                                "--json"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["state"] == "running" for r in json.loads(
            cli(home, "ps", "--json").stdout or "[]")))
        p = cli(home, "run", str(quick), "--arg", "x=5", "--json", check=True)
        assert json.loads(p.stdout)["result"] == 5
        live = json.loads(cli(home, "ps", "--json", check=True).stdout)
        assert [(r["image"], r["state"]) for r in live] == [("sleeper", "running")]
        k = cli(home, "kill", str(live[0]["pid"]))
        assert k.returncode == 0, k.stderr
        out, _ = blocked.communicate(timeout=30)
        assert blocked.returncode == 1
        assert json.loads(out)["exit_reason"] == "killed"
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.communicate()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert not (home / "run/broker.sock").exists()
    assert not (home / "run/control.sock").exists()


@pytest.mark.slow
def test_kill_9_of_the_supervisor_loses_nothing_and_leaves_no_agent(
    home: Path, make_image: MakeImage, daemon: subprocess.Popen[str]
) -> None:
    writer = make_image("writer", """
        import time
        def main(ctx, args):
            i = 0
            while True:
                ctx.obj.put("counter", i, type="int")
                i += 1
    """)
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    runner = subprocess.Popen([sys.executable, "-m", "agentlibos", "run", str(writer)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def writing() -> bool:
            rows = json.loads(cli(home, "ps", "--json").stdout or "[]")
            return bool(rows) and rows[0]["host_pid"] is not None and rows[0]["state"] == "running"

        wait_for(writing)
        host_pid = json.loads(cli(home, "ps", "--json").stdout)[0]["host_pid"]
        daemon.kill()  # SIGKILL: no cleanup at all
        daemon.wait()
        # The agent dies with its zygote, which dies with the supervisor (PDEATHSIG).
        wait_for(lambda: not psutil.pid_exists(host_pid)
                 or psutil.Process(host_pid).status() == "zombie")
    finally:
        runner.kill()
        runner.wait()
    db = sqlite3.connect(home / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    ps = cli(home, "ps")
    assert "no supervisor is running" in ps.stderr
    # The next supervisor (an embedded one, here) runs only its own tree; the interrupted
    # process is left as it was, with no host process, for `serve` or `agentlibos resume`
    # to resume by replay (docs/durability.md).
    cli(home, "run", str(make_image("after", "def main(ctx, args):\n    return 1\n")),
        check=True)
    rows = json.loads(cli(home, "ps", "--all", "--json", check=True).stdout)
    assert (rows[0]["state"], rows[0]["exit_reason"]) == ("running", None)
    assert rows[0]["evicted"] is True and rows[0]["host_pid"] is None
    assert cli(home, "audit", "--verify").returncode == 0
