"""A JIT tool call's intent is held in memory until its tool could act.

docs/durability.md, "JIT tools": the tool can act only by asking the broker, so the
intent of the `tool.call` running it needs to be on disk only before the tool's first
syscall. A call whose tool asks nothing of the broker therefore commits once, with its
outcome; one whose tool writes a file has its intent committed -- seen from another
SQLite connection -- before the write acts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.providers.base import Providers
from agentlibos.providers.fs import LocalFs
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.durable_helpers import counting_commits
from tests.helpers import MakeImage, run_proc
from tests.test_jit import call_tool, tool_image

PURE = """
    export default function (args: { n: number }, libos: Libos): number {
      return args.n * 2;
    }
"""

WRITER = """
    export default async function (args: { text: string }, libos: Libos): Promise<number> {
      return await libos.fs.writeText("out.txt", args.text);
    }
"""


def _commits(sup: Supervisor, img: Path, calls: list[dict[str, Any]]) -> int:
    with counting_commits(sup.store) as commits:
        out = call_tool(sup, img, calls)
    assert out == [{"ok": True, "value": c["n"] * 2} for c in calls]
    return commits[0]


def test_a_tool_that_asks_nothing_commits_once_per_call(
        sup: Supervisor, make_image: MakeImage) -> None:
    img = tool_image(make_image, "pure", PURE)
    calls = [{"n": i} for i in range(40)]
    held = _commits(sup, img, calls)
    # With deferral off every turn commits: the intent's, then the outcome's.
    sup.journal.may_defer = None
    every = _commits(sup, img, calls)
    assert every >= 2 * len(calls), every
    assert held <= len(calls) + 15, (held, every)
    # Each call's entry is settled, as if it had been written as an intent first.
    rows = sqlite3.connect(sup.paths.db).execute(
        "SELECT status, COUNT(*) FROM journal WHERE call = 'tool.call' GROUP BY status"
    ).fetchall()
    assert rows == [("ok", 2 * len(calls))], rows


class _Watching(LocalFs):
    """The real file provider, which looks at the journal -- from a connection of its
    own, so only what was committed -- as a tool's write is about to act."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db
        self.seen: list[list[tuple[str, str]]] = []

    def write(self, real: str, data: bytes, *, append: bool = False) -> int:
        with sqlite3.connect(self.db) as c:
            self.seen.append(c.execute(
                "SELECT call, status FROM journal WHERE call = 'tool.call' ORDER BY seq"
            ).fetchall())
        return super().write(real, data, append=append)


@pytest.fixture
def watched(paths: Paths) -> Iterator[tuple[Supervisor, _Watching]]:
    files = _Watching(paths.db)
    s = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(files=files))
    s.start()
    try:
        yield s, files
    finally:
        s.stop()


def test_the_intent_is_on_disk_before_the_tools_first_syscall_acts(
        watched: tuple[Supervisor, _Watching], make_image: MakeImage, tmp_path: Path) -> None:
    sup, files = watched
    img = tool_image(make_image, "writer", WRITER)
    rec = run_proc(sup, img, {"tool": "t", "calls": [{"text": "a"}, {"text": "bc"}]},
                   cwd=tmp_path, timeout_s=90)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == [{"ok": True, "value": 1}, {"ok": True, "value": 2}]
    assert (tmp_path / "out.txt").read_text() == "bc"
    # At each write, the call running the tool was committed as an intent (and the
    # call before it settled).
    assert files.seen == [[("tool.call", "intent")],
                          [("tool.call", "ok"), ("tool.call", "intent")]], files.seen
