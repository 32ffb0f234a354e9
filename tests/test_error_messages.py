"""Errors a new user meets say what is wrong, once, with the right exit status: each case
here was a misleading message or exit status a contract audit found."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentlibos.config import parse_operator_config
from agentlibos.errors import PolicyError, SandboxError
from agentlibos.sandbox.cgroups import CgroupLimits, CgroupManager
from tests.helpers import write_image
from tests.test_cgroups import OWN, _v2_fake, _v2_host


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentlibos", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_file_given_as_an_image_is_not_a_directory(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "agent.py"
    f.write_text("def main(ctx, args):\n    return 1\n")
    for args in (("run", str(f)), ("image", "add", str(f))):
        out = cli(home, *args)
        assert out.returncode == 2, out
        assert "is not a directory" in out.stderr and "does not exist" not in out.stderr


def test_an_image_past_the_size_limit_is_bad_input_naming_the_limit(
    home: Path, tmp_path: Path
) -> None:
    img = write_image(tmp_path, "big", "def main(ctx, args):\n    return 1\n")
    with open(img / "data.bin", "wb") as f:  # sparse: 65 MiB counted, nothing written
        f.truncate(65 << 20)
    out = cli(home, "image", "add", str(img))
    assert out.returncode == 2, out
    assert "larger than 64 MiB" in out.stderr, out.stderr


def test_a_bad_ceiling_names_the_file_once() -> None:
    with pytest.raises(PolicyError) as info:
        parse_operator_config('[limits.ceiling]\nmemory = "lots"\n', "/etc/alos.toml")
    assert info.value.message.count("/etc/alos.toml") == 1
    assert "[limits.ceiling] memory" in info.value.message


def test_a_memory_limit_below_what_the_process_uses_says_so() -> None:
    fake = _v2_fake()
    m = CgroupManager(_v2_host(), "agentlibos-7", fs=fake)
    m.setup()
    fake.fail[f"{OWN}/agentlibos-7/agents/9/memory.max"] = errno.EBUSY
    with pytest.raises(SandboxError) as info:
        m.create("9", CgroupLimits(1024, 8, 1.0))
    assert "1KiB is below what the process already uses" in info.value.message
    assert os.strerror(errno.EBUSY) not in info.value.message
