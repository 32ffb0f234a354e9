"""The operator's policy from config.toml (DESIGN.md, "Policy": `run --policy FILE`, or
the daemon's config): ``[policy]`` holds a policy's own keys or names a policy file, and
is what every run given no ``--policy`` gets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentlibos.config import Paths, parse_operator_config
from agentlibos.errors import PolicyError
from agentlibos.kernel.policy import BUILTIN_POLICY, parse_policy
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, run_proc


def test_a_policy_table_is_parsed_like_a_policy_file() -> None:
    cfg = parse_operator_config(
        '[policy]\ndeny = ["fs:*:**/.env"]\nallow = ["fs:*:./**", "fs:read:/data/\U0001f600/**"]\n'
        'default = "deny"\n',
        "/etc/alos.toml")
    assert cfg.policy is not None
    assert [str(p) for p in cfg.policy.deny] == ["fs:*:**/.env"]
    assert cfg.policy.default == "deny"
    # What each process keeps of it (its record, a restore) parses back the same.
    again = parse_policy(cfg.policy.text, "again")
    assert (again.deny, again.ask, again.allow, again.default) == (
        cfg.policy.deny, cfg.policy.ask, cfg.policy.allow, cfg.policy.default)
    assert parse_operator_config("", "c.toml").policy is None


def test_a_policy_file_is_named_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "pol.toml").write_text('ask = ["shell:exec:*"]\ndefault = "allow"\n')
    cfg = parse_operator_config('[policy]\nfile = "pol.toml"\n', str(tmp_path / "c.toml"))
    assert cfg.policy is not None and cfg.policy.default == "allow"


@pytest.mark.parametrize(("text", "words"), [
    ('[policy]\nfile = "p.toml"\ndefault = "deny"\n', "not both"),
    ('[policy]\nallow = ["fs:frob:/x"]\n', "frob"),
    ('[policy]\nsometimes = ["fs:*:/x"]\n', "unknown key(s) sometimes"),
    ('[policy]\ndefault = "maybe"\n', "default must be one of"),
    ('[policy]\nfile = "missing.toml"\n', "does not exist"),
    ("policy = 3\n", "[policy] must be a table"),
])
def test_a_bad_policy_table_is_refused_naming_the_file(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_operator_config(text, "/etc/alos.toml")
    assert words in info.value.message and "/etc/alos.toml" in info.value.message


WRITER = """
    def main(ctx, args):
        ctx.fs.write_text("out.txt", "x")
        return "wrote"
"""


def test_a_run_given_no_policy_gets_the_configs_and_an_explicit_one_wins(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    paths.ensure()
    (paths.home / "config.toml").write_text(
        '[policy]\ndeny = ["fs:write:**/out.txt"]\nallow = ["fs:*:./**"]\n')
    img = make_image("writer", WRITER, caps=["fs:rw:./**"])
    cwd = tmp_path / "work"
    cwd.mkdir()
    with Supervisor(paths, sandbox=default_sandbox()) as sup:
        assert sup.default_policy.source.endswith("config.toml [policy]")
        denied = run_proc(sup, img, cwd=cwd)
        assert denied.exit_reason == "error" and "denied by policy" in str(denied.error)
        assert not (cwd / "out.txt").exists()
        allowed = run_proc(sup, img, cwd=cwd, policy=BUILTIN_POLICY)
        assert allowed.result == "wrote", allowed.error


def test_run_with_config_takes_its_policy(
    home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("writer", WRITER, caps=["fs:rw:./**"])
    cwd = tmp_path / "work"
    cwd.mkdir()
    conf = tmp_path / "alos.toml"
    conf.write_text('[policy]\ndeny = ["fs:write:**/out.txt"]\nallow = ["fs:*:./**"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "agentlibos", "--home", str(home), "--config", str(conf),
         "run", str(img), "--cwd", str(cwd), "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "denied by policy" in json.loads(out.stdout)["error"]
    assert not (cwd / "out.txt").exists()
