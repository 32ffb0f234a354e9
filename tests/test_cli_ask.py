"""`run --ask prompt` through a real terminal: a pty is the run's stdin, stdout and stderr
(and its controlling terminal, so ^C is a real Ctrl-C); the test types the answers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import cli, serving
from tests.test_cli_waiting import needs_root

pytestmark = [pytest.mark.privileged, needs_root]


def _take_terminal() -> None:
    # In the child, after setsid: the pty on fd 0 becomes the controlling terminal, so
    # ^C typed into it is SIGINT to the run, as in a real shell.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`agentlibos run ...` on a pty; read what it shows, type into it."""

    def __init__(self, home: Path, *args: str) -> None:
        master, slave = os.openpty()
        env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentlibos", "run", *args], env=env,
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=_take_terminal,  # noqa: PLW1509 (no threads to deadlock here)
        )
        os.close(slave)
        self.master = master
        self.text = ""
        self.pos = 0
        self.closed = False

    def _read(self, timeout_s: float) -> None:
        if self.closed:
            time.sleep(min(timeout_s, 0.02))
            return
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the slave side closed it
            data = b""
        if not data:
            self.closed = True
        self.text += data.decode(errors="replace").replace("\r\n", "\n")

    def expect(self, needle: str, timeout_s: float = 30) -> str:
        """Wait until ``needle`` shows after what was expected before; what came until it."""
        deadline = time.monotonic() + timeout_s
        while (i := self.text.find(needle, self.pos)) < 0:
            assert time.monotonic() < deadline and not (self.closed and self.proc.poll()
                                                        is not None), \
                f"{needle!r} never showed; the terminal shows:\n{self.text}"
            self._read(0.1)
        seen, self.pos = self.text[self.pos:i + len(needle)], i + len(needle)
        return seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.closed or self.proc.poll() is None:
            assert time.monotonic() < deadline, f"run did not end:\n{self.text}"
            self._read(0.1)
        return self.proc.returncode

    def result(self) -> Any:
        m = re.search(r'^\{"pid": .*\}$', self.text, re.M)
        assert m, self.text
        return json.loads(m.group(0))["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for t in opened:
            t.close()


@pytest.fixture(params=["embedded", "daemon"])
def mode(request: pytest.FixtureRequest, home: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield "embedded"
        return
    with serving(home):
        yield "daemon"


def open_run(terminals: list[Terminal], home: Path, *args: str) -> Terminal:
    t = Terminal(home, *args)
    terminals.append(t)
    return t


def test_y_approves_once_on_the_terminal_where_prompt_is_the_default(
    home: Path, mode: str, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--json")  # no --ask: stdin and stderr are a terminal, so prompt
    t.expect("started pid 1")
    shown = t.expect("allow? [y] once, [a] always, [n] deny: ")
    assert "asks for approval" in shown
    assert f"request: fs:write:{proj}/out.txt" in shown
    assert re.search(r"digest: +\S*[0-9a-f]{64}", shown), shown
    t.type("y\n")
    t.expect("approved once")
    assert t.finish() == 0, t.text
    assert t.result() == ["written"]
    assert (proj / "out.txt").read_text() == "hello"


def test_n_denies_and_the_agent_gets_permission_denied_with_the_reason(
    home: Path, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--ask", "prompt", "--json")
    t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("maybe\n")  # not an answer: asked again
    t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("n\n")
    t.expect("reason (optional, Enter for none): ")
    t.type("not on a Friday\n")
    t.expect("denied")
    assert t.finish() == 0, t.text
    [denied] = t.result()
    assert denied.startswith("denied: ") and "not on a Friday" in denied
    assert not (proj / "out.txt").exists()


def test_a_approves_always_and_an_identical_second_write_does_not_ask_again(
    home: Path, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--arg", "n=2", "--ask", "prompt", "--json")
    t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("a\n")
    t.expect("approved for the rest of the process's life")
    assert t.finish() == 0, t.text
    assert t.result() == ["written", "written"]
    assert t.text.count("asks for approval") == 1


def test_y_is_one_shot_so_an_identical_second_write_asks_again(
    home: Path, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--arg", "n=2", "--ask", "prompt", "--json")
    first = t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("y\n")
    second = t.expect("allow? [y] once, [a] always, [n] deny: ")
    ids = [re.search(r"asks for approval (\d+)", s) for s in (first, second)]
    assert all(ids) and ids[0] != ids[1]
    assert ids[0] and ids[1] and ids[0].group(1) != ids[1].group(1)
    t.type("n\n")
    t.expect("reason (optional, Enter for none): ")
    t.type("\n")
    assert t.finish() == 0, t.text
    written, denied = t.result()
    assert written == "written" and denied.startswith("denied: ")


def test_a_question_is_answered_on_the_terminal_and_only_with_one_of_its_choices(
    home: Path, terminals: list[Terminal], asker: Path, policy: Path
) -> None:
    t = open_run(terminals, home, str(asker), "--policy", str(policy), "--arg",
                 'question="Which colour?\\u001b[2J"', "--json")
    shown = t.expect("answer: ")
    assert "asks question" in shown
    # The agent's escape sequence is shown, not obeyed.
    assert "question: Which colour?\\x1b[2J" in shown and "\x1b[2J" not in shown
    assert "choices:  red | blue" in shown
    t.type("green\n")
    refused = t.expect("answer: ")
    assert "red" in refused and "blue" in refused
    t.type("blue\n")
    t.expect("answered")
    assert t.finish() == 0, t.text
    assert t.result() == "blue"


def test_a_question_declined_on_the_terminal_fails_the_ask_with_the_reason(
    home: Path, terminals: list[Terminal], asker: Path, policy: Path
) -> None:
    t = open_run(terminals, home, str(asker), "--policy", str(policy), "--json")
    shown = t.expect("answer: ")
    assert "!decline [reason] declines it" in shown
    t.type("!decline not today\n")
    t.expect("declined")
    assert t.finish() == 1, t.text
    assert "the question was denied by the operator: not today" in t.text
    audit = json.loads(cli(home, "audit", "--json").stdout)
    assert [(r["call"], r["verdict"], r["detail"].get("reason")) for r in audit
            if r["call"] == "human.ask" and r["verdict"] == "denied"] == [
        ("human.ask", "denied", "not today")]


def test_an_item_answered_from_another_terminal_leaves_the_prompt(
    home: Path, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--arg", "n=2", "--ask", "prompt", "--json")
    shown = t.expect("allow? [y] once, [a] always, [n] deny: ")
    m = re.search(r"asks for approval (\d+)", shown)
    assert m, shown
    # The embedded supervisor serves the control channel while this run prompts.
    p = cli(home, "approve", m.group(1))
    assert p.returncode == 0, p.stderr
    t.expect(f"approval {m.group(1)} was answered elsewhere")
    # The second, identical write asks again (one-shot), and is answered here.
    t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("y\n")
    assert t.finish() == 0, t.text
    assert t.result() == ["written", "written"]


def test_ctrl_c_at_the_prompt_stops_the_tree_and_exits_130(
    home: Path, terminals: list[Terminal], writer: Path, policy: Path, proj: Path
) -> None:
    t = open_run(terminals, home, str(writer), "--cwd", str(proj), "--policy", str(policy),
                 "--json")
    t.expect("allow? [y] once, [a] always, [n] deny: ")
    t.type("\x03")  # ^C on the terminal: SIGINT to the run's process group
    assert t.finish() == 130, t.text
    assert "interrupted: pid 1 killed" in t.text
    assert "Traceback" not in t.text
    rows = json.loads(cli(home, "ps", "--all", "--json", check=True).stdout)
    assert [(r["pid"], r["state"]) for r in rows] == [(1, "killed")]
    assert not (proj / "out.txt").exists()


@pytest.mark.parametrize("typed, want", [
    ("n\nnot on a Friday\n", ["denied"]),   # the reason is the line after the "n"
    ("y\nn\n\n", ["written", "denied"]),    # two asks, answered from one pipe
    ("y\ny", ["written", "written"]),       # a last line without its newline
])
def test_prompt_answers_from_a_pipe_take_one_line_each(
    home: Path, writer: Path, policy: Path, proj: Path, typed: str, want: list[str]
) -> None:
    """stdin a pipe holding every answer at once (a script, `yes`): each line answers
    one question, none is lost to the read that found it."""
    n = str(len(want))
    p = subprocess.run(
        [sys.executable, "-m", "agentlibos", "run", str(writer), "--cwd", str(proj),
         "--policy", str(policy), "--arg", f"n={n}", "--ask", "prompt", "--json"],
        check=False, input=typed, capture_output=True, text=True, timeout=90,
        env={**os.environ, "AGENTLIBOS_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)["result"]
    assert [g.split(":")[0] for g in got] == want, got
    if want == ["denied"]:
        assert "not on a Friday" in got[0]
