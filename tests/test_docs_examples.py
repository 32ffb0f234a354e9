"""The examples a user would copy from README.md and docs/*.md, run as written.

Shell blocks (```sh) that call `agentlibos` run in one bash session per file, in a
scratch directory holding the README's minimal image as `./my-image`, with `~` and
`$AGENTLIBOS_HOME` pointing at fresh directories. An `image.toml` block followed by an
`agent.py` block is an image: it must load and run. A block preceded by
`<!-- not-run: why -->` is a reference, not an example, and says why.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL: Final = frozenset({"sh", "bash", "shell"})
NOT_RUN: Final = re.compile(r"<!--\s*not-run:\s*\S.*-->")
FENCE: Final = re.compile(r"^```(\w*)\s*$")

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs agents with every sandbox layer "
                                                  "required, which needs root"),
]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        out.append(Block(path, start + 1, lang, "\n".join(body) + "\n",
                         bool(NOT_RUN.search(prev))))
        i += 1
    return out


def shell_examples(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in SHELL and not b.not_run
            and re.search(r"(^|\$\()agentlibos ", b.text, re.MULTILINE)]


def image_examples(path: Path) -> list[tuple[Block, Block]]:
    bs = blocks(path)
    return [(t, p) for t, p in itertools.pairwise(bs)
            if t.lang == "toml" and "[image]" in t.text and not t.not_run
            and p.lang == "python" and "def main" in p.text]


def write_image(where: Path, toml: Block, agent: Block) -> Path:
    where.mkdir(parents=True)
    (where / "image.toml").write_text(toml.text)
    (where / "agent.py").write_text(agent.text)
    return where


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch cwd with ./my-image, a fresh ~ and a short $AGENTLIBOS_HOME."""
    home = Path(tempfile.mkdtemp(prefix="alos-doc-", dir="/tmp"))
    user = tmp_path / "user"
    user.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (toml, agent), *_ = image_examples(ROOT / "README.md")
    write_image(work / "my-image", toml, agent)
    env = {**os.environ, "HOME": str(user), "AGENTLIBOS_HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        yield work, env
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_every_toml_block_is_valid_toml_even_a_reference_not_run() -> None:
    # A reader copies a reference block too; `image add` would refuse it as not TOML.
    bad = []
    for path in DOCS:
        for b in blocks(path):
            if b.lang == "toml":
                try:
                    tomllib.loads(b.text)
                except tomllib.TOMLDecodeError as e:
                    bad.append(f"{b.where()}: {e}")
    assert bad == []


def test_the_extractor_finds_the_examples() -> None:
    # Never pass silently: an extractor that finds nothing would test nothing.
    assert len(shell_examples(ROOT / "README.md")) >= 2
    assert len(image_examples(ROOT / "README.md")) == 1
    assert shell_examples(ROOT / "docs/cli.md")
    assert shutil.which("agentlibos", path=str(Path(sys.executable).parent))


def test_every_image_example_loads_and_runs(tmp_path: Path) -> None:
    pairs = [pair for doc in DOCS for pair in image_examples(doc)]
    home = Path(tempfile.mkdtemp(prefix="alos-img-", dir="/tmp"))
    try:
        for n, (toml, agent) in enumerate(pairs):
            img = write_image(tmp_path / f"img{n}", toml, agent)
            project = tmp_path / f"project{n}"
            project.mkdir()
            (project / "notes.txt").write_text("The keeper counted ships by night.\n")
            p = subprocess.run(
                [sys.executable, "-m", "agentlibos", "run", str(img), "--cwd", str(project)],
                capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "AGENTLIBOS_HOME": str(home)})
            assert p.returncode == 0, f"{toml.where()} + {agent.where()}:\n{p.stderr}"
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if shell_examples(d)],
                         ids=lambda d: str(d.relative_to(ROOT)))
def test_every_shell_example_runs_as_written(
    doc: Path, session: tuple[Path, dict[str, str]]
) -> None:
    work, env = session
    if doc.name != "README.md":
        # Other pages assume the README's first steps were taken.
        for block in shell_examples(ROOT / "README.md")[:1]:
            subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300, check=True)
    for block in shell_examples(doc):
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300, check=False)
        assert p.returncode == 0, (f"{block.where()} failed ({p.returncode}):\n{block.text}\n"
                                   f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
