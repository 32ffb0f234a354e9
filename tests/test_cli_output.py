"""What the operator sees: agent-chosen text escaped, one audit record per line, --help
examples, exit statuses, and the smaller commands (image show, audit filters, prune)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentlibos.cli import build_parser
from agentlibos.cli.prune import remove_tree
from agentlibos.config import Paths
from agentlibos.errors import InvalidArgument
from agentlibos.ui import printable
from tests.helpers import MakeImage
from tests.test_cli import cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox "
                                                           "layer required: needs root")

# ------------------------------------------------------------------ printable (pure)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("clear \x1b[2J screen", "clear \\x1b[2J screen"),
        ("a\nforged line", "a\\nforged line"),
        ("over\rwrite", "over\\rwrite"),
        ("tab\tbed", "tab\\tbed"),
        ("bell\x07 del\x7f", "bell\\x07 del\\x7f"),
        ("c1 csi \x9b31m", "c1 csi \\x9b31m"),
        ("bidi \u202eevil\u202c", "bidi \\u202eevil\\u202c"),
        ("isolate \u2066x\u2069", "isolate \\u2066x\\u2069"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone \udc80 surrogate", "lone \\udc80 surrogate"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("déjà vu 日本 ✓", "déjà vu 日本 ✓"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_printable_escapes_every_control_format_and_bidi_character(text: str,
                                                                   shown: str) -> None:
    assert printable(text) == shown


def test_printable_output_is_one_line_and_encodes_anywhere() -> None:
    nasty = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202e\u2029\udcff"
    out = printable(nasty)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    assert out.encode("utf-8")  # no lone surrogate left to fail the encoding


def test_printable_keeps_newlines_and_tabs_only_when_asked() -> None:
    assert printable("a\n\tb\x1b", keep_newlines=True) == "a\n\tb\\x1b"


# --------------------------------------------------------------------- the parser


def _subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = (), *, groups: bool = False
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command that runs something (and, with ``groups``, `event` and `image`)."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    out |= _subcommands(sub, (*prefix, name), groups=groups)
                    if groups:
                        out[(*prefix, name)] = sub
                else:
                    out[(*prefix, name)] = sub
    return out


def test_every_command_shows_an_example_in_its_help() -> None:
    commands = _subcommands(build_parser(), groups=True)
    assert {c[0] for c in commands} >= {"run", "serve", "ps", "kill", "image", "audit",
                                         "doctor", "demo", "wait", "logs", "prune"}
    assert ("event",) in commands and ("image",) in commands
    for command, parser in commands.items():
        example = parser.format_help().partition("\nexample:\n  ")[2]
        assert f"agentlibos {' '.join(command)}" in example, command


def test_every_command_that_prints_takes_json() -> None:
    # `logs` too: its JSON carries the agent's bytes as text, escaped.
    for command, parser in _subcommands(build_parser()).items():
        assert "--json" in parser.format_help(), command


def test_a_bad_flag_exits_2(home: Path) -> None:
    assert cli(home, "ps", "--nosuch").returncode == 2
    assert cli(home, "wait").returncode == 2


@pytest.mark.parametrize("argv", [
    ["ps", "--nosuch"], ["audit", "--limit", "-1"], ["resolve", "1"], ["nosuch"], [],
    ["event"], ["wait", "18446744073709551616"], ["kill", "9223372036854775808"],
    ["audit", "--pid", "99999999999999999999"], ["logs", "abc"],
])
def test_usage_errors_are_one_line_naming_the_command(home: Path, argv: list[str]) -> None:
    p = cli(home, *argv)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentlibos: error: "), p.stderr
    assert "Traceback" not in p.stderr
    if argv:
        assert lines[0].startswith(f"agentlibos: error: {argv[0]}: ") or argv == ["nosuch"]


def test_ids_past_what_the_store_holds_are_refused_at_the_door(home: Path) -> None:
    big = str(1 << 64)
    for argv in (["restore", big], ["caps", big], ["approve", big], ["checkpoint", big]):
        p = cli(home, *argv)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (argv, p.stderr)


# ---------------------------------------------------------------- AGENTLIBOS_HOME


def test_a_too_long_home_is_refused_and_leaves_no_directory(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 120) / "state"
    with pytest.raises(InvalidArgument, match="longer than 107 bytes"):
        Paths(home).ensure()
    assert not home.parent.exists()
    p = cli(home, "image", "add", str(tmp_path))
    assert p.returncode == 2 and "AGENTLIBOS_HOME" in p.stderr
    assert not home.parent.exists()


# ------------------------------------------------------------------------ prune


def test_remove_tree_handles_a_deep_chain_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "work"
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("work", dir_fd=fd)
    # 1,500 levels: deeper than a recursive walk can go, longer than PATH_MAX.
    for _ in range(1500):
        new = os.open("work" if _ == 0 else "d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = new
        os.mkdir("d", dir_fd=fd)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
            f.write("x")
    os.symlink(outside, "link", dir_fd=fd)
    os.close(fd)
    assert remove_tree(root) == 1500 + len(str(outside))  # files, and the link itself
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "keep"


# -------------------------------------------------- agent-chosen text, for real

HOSTILE = """
def main(ctx, args):
    print("log \\x1b[2J line\\rforged", flush=True)
    try:
        ctx.fs.write_text("x\\n     9 00:00:00.000 pid=1    allow fs.write     "
                          "fs:write:/etc/shadow\\x1b[2J", "y")
    except Exception:
        pass
    raise RuntimeError("bad \\x1b[31m red \\u202e")
"""


INTERLEAVED = """
import sys
def main(ctx, args):
    print("one to stdout")
    print("two to stderr", file=sys.stderr)
    print("three to stdout")
    return "ok"
"""


@pytest.mark.privileged
@needs_root
def test_an_agents_stdout_and_stderr_reach_its_log_in_the_order_written(
    home: Path, make_image: MakeImage
) -> None:
    # A block-buffered stdout used to reach the log after stderr, at exit.
    img = make_image("interleaved", INTERLEAVED)
    assert cli(home, "run", str(img)).returncode == 0
    raw = cli(home, "logs", "1", "--raw", check=True).stdout
    lines = [ln for ln in raw.splitlines() if " to std" in ln]
    assert lines == ["one to stdout", "two to stderr", "three to stdout"], raw


@pytest.mark.privileged
@needs_root
def test_agent_chosen_text_never_reaches_the_terminal_raw(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("hostile", HOSTILE, caps=["fs:rw:./**"])
    run = cli(home, "run", str(img))
    assert run.returncode == 1
    assert "\x1b" not in run.stderr and "\u202e" not in run.stderr
    assert "bad \\x1b[31m red \\u202e" in run.stderr
    # (A note about stale cgroups another test's killed supervisor left on this host is
    # the host's business, not this run's output.)
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("agentlibos:")
            and not ln.startswith("agentlibos: note: removed ")]
    assert len(ours) == 2, run.stderr  # started ..., error: ...
    audit = cli(home, "audit", check=True).stdout
    assert "\x1b" not in audit
    lines = audit.splitlines()
    assert len(lines) == len(json.loads(cli(home, "audit", "--json").stdout))
    forged = [ln for ln in lines if "/etc/shadow" in ln]
    assert forged and all("x\\n     9 00:00:00.000" in ln for ln in forged)
    assert not any(ln.lstrip().startswith("9 ") for ln in lines)
    logs = cli(home, "logs", "1", check=True).stdout
    assert "\x1b" not in logs and "\r" not in logs
    assert "log \\x1b[2J line\\rforged" in logs
    raw = cli(home, "logs", "1", "--raw", check=True).stdout
    assert "log \x1b[2J line" in raw  # --raw is for pipes, and says so in --help
    as_json = cli(home, "logs", "1", "--json", check=True).stdout
    assert "\x1b" not in as_json and as_json.count("\n") == 1
    assert json.loads(as_json)["pid"] == 1
    assert "log \x1b[2J line\rforged" in json.loads(as_json)["log"]


@pytest.mark.privileged
@needs_root
@pytest.mark.slow
def test_audit_of_a_home_where_nothing_ran_is_an_empty_sound_log(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    assert json.loads(cli(home, "audit", "--json", check=True).stdout) == []
    assert cli(home, "audit", check=True).stdout == ""
    verified = json.loads(cli(home, "audit", "--verify", "--json", check=True).stdout)
    assert verified == {"ok": True, "count": 0, "first_bad_seq": None, "problem": None,
                        "head": None}
    assert "0 records" in cli(home, "audit", "--verify", check=True).stdout
    for bad in (["--limit", "-1"], ["--limit", "x"], ["--verdict", "maybe"]):
        p = cli(home, "audit", *bad)
        assert p.returncode == 2, (bad, p)
    assert not home.exists()  # looking created nothing


def test_audit_filters_follow_and_verify_head(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("w", """
        def main(ctx, args):
            ctx.fs.write_text("a.txt", "a")
            return 1
    """, caps=["fs:rw:./**"])
    cli(home, "run", str(img), check=True)
    every = json.loads(cli(home, "audit", "--json", check=True).stdout)
    writes = json.loads(cli(home, "audit", "--json", "--call", "fs.*", check=True).stdout)
    assert [r["call"] for r in writes] == ["fs.write"]
    infos = json.loads(cli(home, "audit", "--json", "--verdict", "info", check=True).stdout)
    assert infos and all(r["verdict"] == "info" for r in infos)
    assert cli(home, "audit", "--verdict", "maybe").returncode == 2
    # The queue's answers are verdicts too: none here, so an empty list, not an error.
    assert json.loads(cli(home, "audit", "--json", "--verdict", "approved",
                          check=True).stdout) == []
    head = json.loads(cli(home, "audit", "--verify", "--json", check=True).stdout)
    assert head["ok"] and head["head"] == {"seq": every[-1]["seq"], "hash": every[-1]["hash"]}
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    follow = subprocess.Popen(
        [sys.executable, "-m", "agentlibos", "audit", "--follow", "--json", "--call",
         "proc.exit"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())
        assert (first["call"], first["pid"]) == ("proc.exit", 1)
        cli(home, "run", str(img), check=True)
        second = json.loads(follow.stdout.readline())
        assert (second["call"], second["pid"]) == ("proc.exit", 2)
        follow.send_signal(signal.SIGINT)
        assert follow.wait(20) == 130
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.communicate()


@pytest.mark.privileged
@needs_root
def test_image_add_and_show_print_json_and_unknown_names_exit_2(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("shown", "def main(ctx, args):\n    return 1\n", caps=["fs:read:./**"],
                     limits={"memory": "64MiB", "tokens": 5000})
    added = json.loads(cli(home, "image", "add", str(img), "--json", check=True).stdout)
    assert (added["name"], added["path"]) == ("shown", str(home / "images/shown"))
    shown = json.loads(cli(home, "image", "show", "shown", "--json", check=True).stdout)
    assert shown == added
    assert shown["requested"] == ["fs:read:./**"]
    assert shown["limits"]["memory_max_bytes"] == 64 << 20
    text = cli(home, "image", "show", "shown", check=True).stdout
    assert "mem=64MiB,tokens=5000" in text and "fs:read:./**" in text
    assert cli(home, "image", "show", "nosuch").returncode == 2
    assert cli(home, "run", "nosuch").returncode == 2
    assert cli(home, "run", "./nosuch").returncode == 2
    # A registered name runs; the pid and where the output went are on stderr.
    run = cli(home, "run", "shown", check=True)
    assert "agentlibos: started pid 1 (log: " in run.stderr
    assert f"output: {home / 'logs/1.log'}" in run.stderr


@pytest.mark.slow
def test_demo_json_says_it_ignores_the_home(home: Path) -> None:
    p = cli(home, "demo", "--json", timeout=180)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is True and out["audit"]["ok"] is True
    assert out["coordinator"]["exit_reason"] == "returned"
    assert "the demo runs in a fresh temporary state directory" in p.stderr
    assert not (home / "state.db").exists()


def test_a_config_error_names_the_file_once(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("[sandbox]\nnosuch = 1\n")
    img = tmp_path / "img"
    img.mkdir()
    (img / "image.toml").write_text('[image]\nname = "x"\nentry = "agent:main"\n')
    (img / "agent.py").write_text("def main(ctx, args):\n    return 1\n")
    for argv in (["run", str(img)], ["doctor"], ["--config", str(home / "config.toml"),
                                                  "doctor"]):
        p = cli(home, *argv)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("config.toml") == 1, p.stderr


def test_ctrl_c_while_the_command_line_still_loads_is_130_without_a_traceback(
    home: Path
) -> None:
    # The interrupt is raised from inside the import of the command line's modules, where
    # a real Ctrl-C in a command's first ~0.2 s lands; the console script's own entry.
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Interrupt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "agentlibos.cli.common":
                    raise KeyboardInterrupt
                return None
        sys.meta_path.insert(0, Interrupt())
        from agentlibos.entry import main
        main(["ps"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "AGENTLIBOS_HOME": str(home)}, timeout=60,
                          check=False)
    assert proc.returncode == 130
    assert proc.stderr == "agentlibos: error: interrupted\n"


def test_a_result_in_text_mode_keeps_letters_and_escapes_control_and_format_characters(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("intl", r"""
        def main(ctx, args):
            return {"city": "Zürich", "jp": "日本", "tricks": "\u202e\x85\x1b[2J\u2028\ue000"}
    """)
    proc = cli(home, "run", str(img))
    assert proc.returncode == 0, proc.stderr
    assert "Zürich" in proc.stdout and "日本" in proc.stdout
    assert all(c.isprintable() or c in "\n " for c in proc.stdout)
    assert json.loads(proc.stdout) == {"city": "Zürich", "jp": "日本",
                                       "tricks": "\u202e\x85\x1b[2J\u2028\ue000"}
