"""The broker's two-syscall realpath must agree with os.path.realpath everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlibos.providers.fs import realpath


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/f.txt").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "a")
    (tmp_path / "a/lb").symlink_to("b")
    (tmp_path / "dang").symlink_to(tmp_path / "gone")
    (tmp_path / "dd").symlink_to("dang")
    (tmp_path / "up").symlink_to("..")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    return tmp_path


CASES = ["", "a", "l/b", "l/lb/f.txt", "l/lb/new.txt", "nope/x/y", "dang", "dang/x", "dd",
         "dd/y/z", "up", "up/up", "a/b/f.txt/x", "loop1", "loop1/x", "l/../a"]


@pytest.mark.parametrize("rel", CASES)
def test_realpath_matches_the_standard_library(tree: Path, rel: str) -> None:
    p = str(tree / rel) if rel else str(tree)
    assert realpath(p) == os.path.realpath(p)


def test_realpath_of_the_root() -> None:
    assert realpath("/") == "/"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "l", "lb", "dang", "up", "..", "new", "f.txt"]),
                min_size=1, max_size=6))
def test_realpath_matches_on_random_walks(tree_factory: Path, parts: list[str]) -> None:
    p = os.path.join(str(tree_factory), *parts)
    assert realpath(p) == os.path.realpath(p)


@pytest.fixture(scope="module")
def tree_factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rp")
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/f.txt").write_text("x")
    (root / "l").symlink_to(root / "a")
    (root / "a/lb").symlink_to("b")
    (root / "a/b/up").symlink_to("../..")
    (root / "dang").symlink_to(root / "gone")
    return root
