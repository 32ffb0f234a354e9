"""The one loader of the operator's config.toml: every table, frozen dataclasses, errors
that name the file once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlibos.config import (
    OperatorConfig,
    Paths,
    SupervisorConfig,
    load_operator_config,
    operator_config,
    parse_operator_config,
)
from agentlibos.errors import PolicyError
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.supervisor import Supervisor


def test_an_empty_file_gives_every_default() -> None:
    cfg = parse_operator_config("", "c.toml")
    assert cfg.supervisor == SupervisorConfig()
    assert cfg.sandbox == SandboxConfig()
    assert cfg.source == "c.toml"


def test_the_supervisor_table_takes_units() -> None:
    cfg = parse_operator_config(
        '[supervisor]\nkill_grace = "500ms"\nmax_children = 3\nlog_max = "1MiB"\n'
        'start_timeout = "1m"\nmax_result = "64KiB"\n', "c.toml")
    s = cfg.supervisor
    assert (s.kill_grace_s, s.max_children, s.log_max_bytes) == (0.5, 3, 1 << 20)
    assert (s.start_timeout_s, s.max_result_bytes) == (60.0, 64 << 10)


@pytest.mark.parametrize(("text", "words"), [
    ("[supervisor]\nkill_graze = 1\n", "unknown key(s) in [supervisor]: kill_graze"),
    ("[supervisor]\nmax_children = -1\n", "max_children must be a whole number"),
    ("[supervisor]\nkill_grace = \"soon\"\n", "kill_grace"),
    ("[supervisr]\n", "unknown section(s) supervisr"),
    ("[supervisor\n", "not valid TOML"),
    # A result and spawn args travel in one message header: more could never be used.
    ('[supervisor]\nmax_result = "8MiB"\n', "max_result is at most 1MiB"),
    ('[supervisor]\nmax_args = "2MiB"\n', "max_args is at most 1MiB"),
])
def test_a_bad_file_is_refused_naming_the_file_once(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_operator_config(text, "/etc/alos.toml")
    assert words in info.value.message
    assert info.value.message.count("/etc/alos.toml") == 1


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_operator_config(tmp_path / "nope.toml")
    assert load_operator_config(None) == OperatorConfig()


def test_the_supervisor_reads_its_limits_from_the_homes_config(paths: Paths) -> None:
    paths.ensure()
    (paths.home / "config.toml").write_text(
        '[supervisor]\nmax_children = 5\n\n[sandbox]\noptional = ["landlock"]\n')
    assert operator_config(paths).supervisor.max_children == 5
    sup = Supervisor(paths)
    assert sup.config.max_children == 5
    assert "landlock" in sup.sandbox.config.optional


def test_the_supervisor_sizes_its_jit_pool_from_the_homes_config(paths: Paths) -> None:
    paths.ensure()
    for size in (0, 3):
        (paths.home / "config.toml").write_text(f"[jit]\npool_size = {size}\n")
        with Supervisor(paths) as sup:
            assert sup.jit.pool_size == size


def test_every_operator_key_the_contract_names_is_accepted() -> None:
    # DESIGN.md "Shapes the checks rely on": [durable] evict_after, [approvals] timeout,
    # [models.NAME], [secrets.NAME], [limits] tokens, [limits.ceiling].
    cfg = parse_operator_config(
        '[durable]\nevict_after = "45s"\n\n[approvals]\ntimeout = "1h"\n\n'
        '[limits]\ntokens = 200000\n\n[limits.ceiling]\nmemory = "2GiB"\n\n'
        '[models.script]\nkind = "scripted"\nscript = "/tmp/s.json"\n\n'
        '[secrets.gh]\nmatch = "https://api.github.com/**"\nheader = "Authorization"\n'
        'value_env = "GITHUB_TOKEN"\nprefix = "Bearer "\n', "c.toml")
    assert (cfg.evict_after_s, cfg.approvals_timeout_s, cfg.default_tokens) == (
        45.0, 3600.0, 200000)
    assert cfg.sandbox.ceiling_limits.memory_max_bytes == 2 << 30
    assert "script" in cfg.models and len(cfg.secrets) == 1
    assert parse_operator_config("", "c.toml").evict_after_s == 30.0
    with pytest.raises(PolicyError, match=r"\[limits\] tokens"):
        parse_operator_config("[limits]\ntokens = 0\n", "c.toml")
