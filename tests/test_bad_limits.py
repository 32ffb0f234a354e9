"""Limits and sizes the kernel or the store cannot hold are refused where they are written
(an image, config.toml, a flag), with exit 2 and nothing started, never at a spawn that
would leave a process record behind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agentlibos.config import Paths, parse_operator_config
from agentlibos.errors import ImageError, InvalidArgument, PolicyError
from agentlibos.kernel.image import load_image
from agentlibos.kernel.units import parse_size
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, write_image
from tests.test_cli import assert_one_line_error, cli
from tests.test_durable_inflight import ALLOW


@pytest.mark.parametrize("cpu", ["0.005", "nan", "inf", "0", "-1", "true", '"1"'])
def test_an_image_cpu_no_cgroup_can_enforce_is_refused_when_loaded(
    tmp_path: Path, home: Path, cpu: str
) -> None:
    d = tmp_path / "slow"
    d.mkdir()
    (d / "image.toml").write_text(
        f'[image]\nname = "slow"\nentry = "agent:main"\n[limits]\ncpu = {cpu}\n')
    (d / "agent.py").write_text("def main(ctx, args):\n    return 1\n")
    with pytest.raises(ImageError, match=r"\[limits\] cpu"):
        load_image(d)
    proc = cli(home, "image", "add", str(d))
    assert proc.returncode == 2
    assert_one_line_error(proc, "[limits] cpu")
    proc = cli(home, "run", str(d), "--json")
    assert proc.returncode == 2
    assert_one_line_error(proc, "[limits] cpu")
    assert not Paths(home).db.exists() or not _process_rows(home)


def _process_rows(home: Path) -> list[tuple[int]]:
    db = sqlite3.connect(Paths(home).db)
    try:
        return list(db.execute("select pid from processes"))
    finally:
        db.close()


def test_the_smallest_enforceable_cpu_share_is_accepted(tmp_path: Path) -> None:
    d = write_image(tmp_path, "small", "def main(ctx, args):\n    return 1\n",
                    limits={"cpu": 0.01})
    assert load_image(d).limits.cpu_max_cores == 0.01


@pytest.mark.parametrize("table", ["cpu = 0.001", "cpu = nan", "pids = 0", "pids = -3",
                                   'memory = "100000000TiB"'])
def test_config_limits_that_cannot_be_enforced_are_config_errors(table: str) -> None:
    with pytest.raises(PolicyError, match=r"\[limits\]"):
        parse_operator_config(f"[limits]\n{table}\n", "config.toml")


def test_sizes_past_what_the_store_holds_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="more than 8 EiB"):
        parse_size("100000000TiB")
    with pytest.raises(InvalidArgument, match="more than 8 EiB"):
        parse_size(1 << 63)
    assert parse_size((1 << 63) - 1) == (1 << 63) - 1


@pytest.mark.parametrize("flags", [
    ["--tokens", "99999999999999999999999"],
    ["--tokens", "0"],
    ["--cwd", ""],
])
def test_run_refuses_bad_flags_with_exit_2_before_starting_anything(
    home: Path, make_image: MakeImage, flags: list[str]
) -> None:
    img = make_image("echo", "def main(ctx, args):\n    return args\n")
    for extra in ([], ["--detach"]):
        proc = cli(home, "run", str(img), *flags, *extra)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc)
        assert "daemon" not in proc.stderr
    assert not Paths(home).db.exists() or not _process_rows(home)


def test_run_of_an_empty_image_name_is_bad_input(home: Path) -> None:
    proc = cli(home, "run", "")
    assert proc.returncode == 2
    assert_one_line_error(proc, "names nothing")


def test_args_over_the_supervisors_limit_are_bad_input_naming_arg(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("echo", "def main(ctx, args):\n    return len(args)\n")
    big = [a for i in range(10) for a in ("--arg", f"k{i}=" + "a" * 120_000)]  # 1.2 MB
    for extra in ([], ["--detach"]):
        proc = cli(home, "run", str(img), *big, *extra)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc, "--arg", "max_args")
        assert "daemon" not in proc.stderr
    (home / "config.toml").write_text('[supervisor]\nmax_args = "1KiB"\n')
    proc = cli(home, "run", str(img), "--arg", "k=" + "a" * 1100)
    assert_one_line_error(proc, "more than the 1024")
    proc = cli(home, "run", str(img), "--arg", "k=" + "a" * 900, "--json")
    assert proc.returncode == 0, proc.stderr


def test_a_launch_that_fails_unexpectedly_ends_the_process_instead_of_leaving_it(
    paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = write_image(tmp_path, "any", "def main(ctx, args):\n    return 1\n")
    sup = Supervisor(paths, sandbox=default_sandbox())
    sup.start()
    try:
        def broken(*a: object, **k: object) -> None:
            raise ValueError("a bug in the sandbox's preparation")

        monkeypatch.setattr(sup.table.sandbox, "prepare", broken)
        pid = sup.submit_run(str(img), {}, policy=ALLOW)
        assert sup.run_until(lambda: not sup.tree_live(pid), 10)
        rec = sup.store.get_process(pid)
        assert (rec.state, rec.exit_reason) == ("failed", "start-failed")
        assert rec.error is not None and "ValueError: a bug" in rec.error
    finally:
        sup.stop()


def test_args_count_utf8_bytes_as_results_and_objects_do(home: Path, make_image: MakeImage) -> None:
    # 200,000 CJK characters: 600 kB of UTF-8, 1.2 MB as \u escapes. Counted in UTF-8
    # (as a result or an object is), they fit the 1 MiB; twice as many do not.
    img = make_image("echo", "def main(ctx, args):\n    return sum(map(len, args.values()))\n")

    def cjk(n: int) -> list[str]:  # an argv string holds at most 128 KiB
        return [a for i in range(n) for a in ("--arg", f"k{i}=" + "漢" * 40_000)]

    proc = cli(home, "run", str(img), *cjk(5), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == 200_000
    proc = cli(home, "run", str(img), *cjk(10))
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, "--arg", "max_args")
