"""`run`, `wait`, `logs -f` and Ctrl-C against real daemons and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import MakeImage
from tests.test_cli import cli, serving, wait_for

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox layer "
                                                  "required, which needs root"),
]

# Prints, then waits (polling through the broker) until the test creates `go` in its cwd.
GATED = """
import time
def main(ctx, args):
    print("tick", flush=True)
    while not ctx.fs.exists("go"):
        time.sleep(0.02)
    print("done", flush=True)
    return {"ok": True}
"""


@pytest.fixture
def daemon(home: Path) -> Iterator[subprocess.Popen[str]]:
    with serving(home) as proc:
        yield proc


@pytest.fixture
def sleeper(make_image: MakeImage) -> Path:
    return make_image("sleeper", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)


def start_run(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "agentlibos", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ps(home: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli(home, "ps", "--all", "--json").stdout or "[]")
    return rows


def running_host_pid(home: Path, pid: int = 1) -> int:
    """Wait until ``pid`` runs and return its host pid."""
    def up() -> bool:
        return any(r["pid"] == pid and r["state"] == "running" and r["host_pid"]
                   for r in ps(home))

    wait_for(up)
    return int(next(r["host_pid"] for r in ps(home) if r["pid"] == pid))


def gone(host_pid: int) -> bool:
    return not psutil.pid_exists(host_pid) or psutil.Process(host_pid).status() == "zombie"


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_on_a_run_served_by_a_daemon_stops_its_tree(
    home: Path, sleeper: Path, daemon: subprocess.Popen[str], sig: signal.Signals
) -> None:
    run = start_run(home, str(sleeper))
    host_pid = running_host_pid(home)
    run.send_signal(sig)
    _, err = finish(run)
    assert run.returncode == 130, err
    assert "started pid 1 (log: " in err
    assert "interrupted: pid 1 killed (killed)" in err
    assert [(r["state"], r["exit_reason"]) for r in ps(home)] == [("killed", "killed")]
    wait_for(lambda: gone(host_pid))
    assert daemon.poll() is None  # the daemon itself goes on serving


def test_ctrl_c_on_an_embedded_run_stops_its_tree_and_says_what_became_of_it(
    home: Path, sleeper: Path
) -> None:
    run = start_run(home, str(sleeper), "--json")
    host_pid = running_host_pid(home)
    run.send_signal(signal.SIGINT)
    out, err = finish(run)
    assert run.returncode == 130, err
    assert json.loads(out) == {"pid": 1, "state": "killed", "exit_reason": "killed",
                               "result": None, "error": "interrupted by the operator"}
    assert "interrupted: pid 1 killed (killed)" in err
    assert gone(host_pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_an_embedded_runs_whole_process_group_is_an_interruption(
    home: Path, sleeper: Path, sig: signal.Signals
) -> None:
    # As `timeout` or a terminal sends it: to every process in the group. The runtime's
    # own helpers (the zygote) are not the operator's to stop: the run reports the
    # interruption, not a dead zygote.
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    run = subprocess.Popen([sys.executable, "-m", "agentlibos", "run", str(sleeper), "--json"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    host_pid = running_host_pid(home)
    os.killpg(run.pid, sig)
    out, err = finish(run)
    assert run.returncode == 130, err
    assert json.loads(out)["error"] == "interrupted by the operator", (out, err)
    assert "zygote" not in err, err
    assert gone(host_pid)


def test_a_run_notices_within_seconds_when_its_daemon_is_killed(
    home: Path, sleeper: Path, daemon: subprocess.Popen[str]
) -> None:
    run = start_run(home, str(sleeper))
    host_pid = running_host_pid(home)
    daemon.kill()  # SIGKILL: no goodbye on the control socket
    daemon.wait()
    killed_at = time.monotonic()
    _, err = finish(run, timeout=15)
    assert time.monotonic() - killed_at < 5
    assert run.returncode == 1
    assert f"the supervisor serving it (pid {daemon.pid}) died" in err
    assert "died with it" in err and "the next `agentlibos serve`" in err
    assert "resumes it from its journal" in err and "supervisor-lost" not in err
    assert "Traceback" not in err
    wait_for(lambda: gone(host_pid))


def test_detach_prints_the_pid_and_wait_gives_the_result_and_status(
    home: Path, make_image: MakeImage, daemon: subprocess.Popen[str], tmp_path: Path
) -> None:
    gated = make_image("gated", GATED, caps=["fs:read:./**"])
    boom = make_image("boom", "def main(ctx, args):\n    raise RuntimeError('boom')\n")
    d = cli(home, "run", str(gated), "--cwd", str(tmp_path), "--detach", check=True)
    assert d.stdout == "1\n"
    assert json.loads(cli(home, "run", str(boom), "--detach", "--json", check=True).stdout) \
        == {"pid": 2}
    failed = cli(home, "wait", "2", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["exit_reason"] == "error"
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    waiter = subprocess.Popen([sys.executable, "-m", "agentlibos", "wait", "1", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_for(lambda: "tick" in (home / "logs/1.log").read_text()
             if (home / "logs/1.log").exists() else False)
    # `logs -f` follows until the process ends.
    follower = subprocess.Popen([sys.executable, "-m", "agentlibos", "logs", "-f", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    json_follower = subprocess.Popen(
        [sys.executable, "-m", "agentlibos", "logs", "-f", "1", "--json"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (tmp_path / "go").write_text("")
    out, err = finish(waiter)
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"pid": 1, "state": "exited", "exit_reason": "returned",
                               "result": {"ok": True}}
    logged, err = finish(follower)
    assert follower.returncode == 0, err
    assert logged.splitlines() == ["tick", "done"]
    logged, err = finish(json_follower)
    assert json_follower.returncode == 0, err
    assert [json.loads(ln) for ln in logged.splitlines()] == [
        {"pid": 1, "line": "tick"}, {"pid": 1, "line": "done"}]
    # An ended process can be waited for again, without a daemon too.
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(20)
    assert cli(home, "wait", "1").returncode == 0
    assert cli(home, "wait", "2").returncode == 1


@pytest.mark.parametrize(("config", "needle"), [
    ('[durable]\nevict_after = "soon"\n', "[durable] evict_after: cannot parse 'soon'"),
    ("[approvals]\nbogus = 1\n", "[approvals] takes one key"),
    ('[sandbox]\ndisable = ["nope"]\n', "[sandbox] disable must list layers"),
])
def test_serve_detach_with_a_malformed_config_exits_2_and_starts_nothing(
    home: Path, config: str, needle: str
) -> None:
    # Was exit 1, "the daemon exited with status 2 before answering: ...", where the
    # foreground `serve` and `doctor` exit 2 on the same file (audit 4-b, F4).
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(config)
    for argv in (["serve", "--detach"], ["serve"]):
        p = cli(home, *argv)
        assert p.returncode == 2, (argv, p.stderr)
        assert needle in p.stderr and "config.toml" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (home / "logs" / "serve.log").exists()


def test_detach_is_refused_when_only_a_foreground_run_serves(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    """A foreground `run` embeds a supervisor for its own tree, which ends with it: a
    detached run is not handed to it (it would hold that command open), and no daemon
    is started for it either: the home is that command's until it ends. (With no
    supervisor at all, `run --detach` starts a daemon: tests/test_cli_detach.py.)"""
    gated = make_image("gated", GATED, caps=["fs:read:./**"])
    quick = make_image("quick", "def main(ctx, args):\n    return 1\n")
    first = start_run(home, str(gated), "--cwd", str(tmp_path), "--json")
    try:
        wait_for(lambda: any(r["state"] in ("running", "waiting") for r in ps(home)))
        p = cli(home, "run", str(quick), "--detach")
        assert p.returncode == 2, p
        assert "needs a running daemon" in p.stderr and "serve --detach" in p.stderr
        assert f"another command (pid {first.pid})" in p.stderr
        assert [r["pid"] for r in ps(home)] == [1]  # nothing was started
        assert not (home / "logs" / "serve.log").exists()  # no daemon either
        (tmp_path / "go").write_text("")
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 0 and json.loads(out)["pid"] == 1
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


def test_serve_detach_returns_once_the_daemon_answers(home: Path, make_image: MakeImage) -> None:
    p = cli(home, "serve", "--detach", "--json", check=True)
    info = json.loads(p.stdout)
    try:
        assert psutil.pid_exists(info["pid"])
        img = make_image("quick", "def main(ctx, args):\n    return 1\n")
        pid = cli(home, "run", str(img), "--detach", check=True).stdout.strip()
        assert cli(home, "wait", pid, check=True).stdout.strip() == "1"
        again = cli(home, "serve", "--detach")
        assert again.returncode == 1 and "already serves" in again.stderr
    finally:
        os.kill(info["pid"], signal.SIGTERM)
        wait_for(lambda: gone(info["pid"]))


def test_kill_json_and_prune_never_touch_a_live_process(
    home: Path, sleeper: Path, make_image: MakeImage, daemon: subprocess.Popen[str]
) -> None:
    quick = make_image("quick", "def main(ctx, args):\n    print('hi')\n    return 1\n")
    cli(home, "run", str(quick), check=True)
    detached = cli(home, "run", str(sleeper), "--detach", check=True).stdout.strip()
    running_host_pid(home, int(detached))
    pruned = json.loads(cli(home, "prune", "--json", check=True).stdout)
    assert pruned == [{"pid": 1, "removed": [str(home / "logs/1.log"), str(home / "work/1")],
                       "bytes": pruned[0]["bytes"], "journal_entries": 0}]
    assert (home / "work" / detached).is_dir()
    assert json.loads(cli(home, "kill", detached, "--json", check=True).stdout) == {
        "pid": int(detached), "stopping": True}
    assert cli(home, "wait", detached).returncode == 1
    assert [r["pid"] for r in json.loads(cli(home, "prune", "--json",
                                             check=True).stdout)] == [int(detached)]
    assert not (home / "work" / detached).exists()
