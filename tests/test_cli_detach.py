"""`run --detach` with no daemon up starts one (as `serve --detach` does), and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agentlibos.config import Paths
from agentlibos.launcher import daemon_pid
from tests.helpers import MakeImage
from tests.test_cli import assert_one_line_error, cli, wait_for

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox layer "
                                                  "required, which needs root"),
]

QUICK = "def main(ctx, args):\n    return {'x': args.get('x', 1)}\n"


def daemons_of(home: Path) -> list[int]:
    """Host pids of the `agentlibos --home HOME serve` processes on this test's home
    (other tests' daemons serve other homes, and are none of ours)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        argv = p.info["cmdline"] or []
        if (p.info["status"] != psutil.STATUS_ZOMBIE and "serve" in argv
                and "--home" in argv and str(home) in argv):
            out.append(int(p.info["pid"]))
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def stops_daemons(home: Path) -> Iterator[None]:
    """Stop, at the end, whatever daemon the test's commands started on its home: by
    pid, SIGTERM (the clean stop), never by name."""
    try:
        yield
    finally:
        for pid in daemons_of(home):
            os.kill(pid, signal.SIGTERM)
        for pid in daemons_of(home):
            wait_for(lambda pid=pid: gone(pid), 30)  # type: ignore[misc]


def lock_holder(home: Path) -> int:
    return int((home / "run" / "supervisor.lock").read_text().strip())


def test_detach_with_no_daemon_starts_one_says_so_and_wait_gives_the_result(
    home: Path, make_image: MakeImage, stops_daemons: None
) -> None:
    img = make_image("quick", QUICK)
    p = cli(home, "run", str(img), "--detach", "--arg", "x=7")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "1\n"
    daemon = daemon_pid(Paths(home))
    assert daemon is not None and daemon == lock_holder(home)
    assert daemons_of(home) == [daemon]
    log = home / "logs" / "serve.log"
    # One line: which daemon, where, its log, how to stop it.
    assert p.stderr.splitlines() == [
        f"agentlibos: started daemon {daemon} serving {home} (log: {log}; "
        f"stop it with kill {daemon})"]

    done = cli(home, "wait", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pid": 1, "state": "exited",
                                       "exit_reason": "returned", "result": {"x": 7}}
    # The next one finds it: no second daemon, nothing said about one.
    again = cli(home, "run", str(img), "--detach", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"pid": 2}
    assert "daemon" not in again.stderr
    assert cli(home, "wait", "2", check=True).stdout.strip() == '{\n  "x": 1\n}'
    assert daemons_of(home) == [daemon]

    # It is a real daemon: SIGTERM stops it cleanly, as one started by `serve --detach`.
    os.kill(daemon, signal.SIGTERM)
    wait_for(lambda: gone(daemon), 30)
    assert "supervisor stopped" in log.read_text()
    assert daemon_pid(Paths(home)) is None


def test_two_detached_runs_racing_in_a_fresh_home_land_on_one_daemon(
    home: Path, make_image: MakeImage, stops_daemons: None
) -> None:
    img = make_image("quick", QUICK)
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    # Both start before either can have a daemon answering (one takes ~1 s to start),
    # so both find none and both try to start one.
    runs = [subprocess.Popen([sys.executable, "-m", "agentlibos", "run", str(img),
                              "--detach", "--json", "--arg", f"x={n}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in (1, 2)]
    outs = [r.communicate(timeout=90) for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err
    pids = sorted(json.loads(out)["pid"] for out, _ in outs)
    assert pids == [1, 2]

    daemon = daemon_pid(Paths(home))
    assert daemon is not None and daemon == lock_holder(home)
    assert daemons_of(home) == [daemon]
    notes = [err for _, err in outs if "started daemon" in err]
    assert len(notes) == 1 and f"started daemon {daemon} " in notes[0], outs
    # The loser waited for the winner's daemon instead of starting its own, which would
    # have lost the supervisor lock and said so in the log.
    assert "another supervisor" not in (home / "logs" / "serve.log").read_text()
    results = {pid: json.loads(cli(home, "wait", str(pid), "--json", check=True).stdout)
               for pid in pids}
    assert sorted(r["result"]["x"] for r in results.values()) == [1, 2]


@pytest.mark.parametrize(("argv", "config", "needle"), [
    (["./nosuch"], None, "nosuch"),
    (["nosuch"], None, "no image named 'nosuch'"),
    (["IMG", "--arg", "novalue"], None, "bad --arg 'novalue'"),
    (["IMG", "--tokens", "0"], None, "--tokens: '0' is not a positive number"),
    (["IMG", "--cwd", "/nonexistent/dir"], None, "--cwd"),
    (["IMG", "--ask", "prompt"], None, "--ask prompt"),
    (["IMG"], "[approvals]\nbogus = 1\n", "[approvals] takes one key"),
], ids=["missing-dir", "unknown-name", "bad-arg", "bad-tokens", "bad-cwd", "ask-prompt",
        "bad-config"])
def test_bad_input_with_detach_is_refused_before_any_daemon_starts(
    home: Path, make_image: MakeImage, stops_daemons: None, argv: list[str],
    config: str | None, needle: str
) -> None:
    img = make_image("quick", QUICK)
    if config is not None:
        (home / "config.toml").write_text(config)
    p = cli(home, "run", *[str(img) if a == "IMG" else a for a in argv], "--detach")
    assert p.returncode == 2, p.stderr
    assert_one_line_error(p, needle)
    assert daemons_of(home) == []
    assert daemon_pid(Paths(home)) is None
    assert not (home / "logs" / "serve.log").exists()
