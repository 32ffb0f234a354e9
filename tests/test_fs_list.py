"""`fs.list`: the first `limit` entries in name order, whatever order the directory
keeps them in, and a large directory listed off the supervisor's loop (one agent's
10,000-entry listings stalled every other agent's calls for 0.2 s each). Real files,
a real supervisor and agent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentlibos.providers.fs import LocalFs
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage

LISTER = """
def main(ctx, args):
    return {name: [e["name"] for e in ctx.fs.list(name, limit=args["limit"])]
            for name in ("big", "small")}
"""


def _fill(d: Path, n: int) -> list[str]:
    d.mkdir()
    # Created in an order unlike the names' (the directory's own order is the hash's).
    names = [f"f{(i * 7919) % n:05d}-{'x' * 40}" for i in range(n)]
    for name in names:
        (d / name).touch()
    return sorted(names)


def test_a_limited_listing_is_the_first_names_in_order(tmp_path: Path) -> None:
    names = _fill(tmp_path / "d", 3000)
    fs = LocalFs()
    assert [e["name"] for e in fs.listdir(str(tmp_path / "d"), 10)] == names[:10]
    assert [e["name"] for e in fs.listdir(str(tmp_path / "d"), 5000)] == names


def test_a_large_directory_is_listed_off_the_loop_and_a_small_one_on_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _fill(tmp_path / "big", 3000)
    small = _fill(tmp_path / "small", 5)
    assert (tmp_path / "big").stat().st_size > 64 << 10
    submitted: list[Callable[[], Any]] = []
    real_submit = sup.file_io.submit

    def submit(work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        submitted.append(work)
        real_submit(work, done)

    monkeypatch.setattr(sup.file_io, "submit", submit)
    image = make_image("lister", LISTER, caps=["fs:read:./**"])
    pid = sup.submit_run(str(image), {"limit": 10_000}, cwd=str(tmp_path))
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"big": big, "small": small}
    assert len(submitted) == 1  # the big one only

    pid = sup.submit_run(str(image), {"limit": 3}, cwd=str(tmp_path))
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    assert sup.store.get_process(pid).result == {"big": big[:3], "small": small[:3]}


def test_a_limit_outside_1_to_10000_is_refused_not_clamped(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image("limits", """
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            out = {}
            for limit in (0, -5, 10_001, 20_000, 1):
                try:
                    out[str(limit)] = len(ctx.fs.list(".", limit=limit))
                except InvalidArgument as e:
                    out[str(limit)] = e.message
            return out
    """, caps=["fs:read:./**"])
    (tmp_path / "a").touch()
    pid = sup.submit_run(str(image), {}, cwd=str(tmp_path))
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    for bad in ("0", "-5", "10001", "20000"):
        assert rec.result[bad] == f"fs.list: limit must be from 1 to 10000, not {bad}"
    assert rec.result["1"] == 1


def test_a_file_named_with_a_trailing_slash_is_refused_by_read_and_write(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image("slash", """
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            out = []
            for call in (lambda: ctx.fs.read_text("afile/"),
                         lambda: ctx.fs.write_text("afile/", "x"),
                         lambda: ctx.fs.write_text("new/", "x")):
                try:
                    call()
                    out.append("done")
                except InvalidArgument as e:
                    out.append(e.message)
            return out + [ctx.fs.read_text("afile")]
    """, caps=["fs:rw:./**"])
    (tmp_path / "afile").write_text("regular file\\n")
    pid = sup.submit_run(str(image), {}, cwd=str(tmp_path))
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == [
        "fs.read: 'afile/' ends with '/': it names a directory, not a file",
        "fs.write: 'afile/' ends with '/': it names a directory, not a file",
        "fs.write: 'new/' ends with '/': it names a directory, not a file",
        "regular file\\n"]
    assert not (tmp_path / "new").exists()
