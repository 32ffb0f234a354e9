"""The broker's two-syscall realpath must agree with os.path.realpath everywhere."""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlibos.errors import InvalidArgument, PermissionDenied
from agentlibos.providers.fs import LocalFs, realpath, stat_dict


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


def _reference(lexical: str, follow_last: bool) -> str:
    """What LocalFs.resolve answered before it resolved in one walk: the standard
    library's realpath of the path, or of its parent joined to the last name."""
    if follow_last or lexical == "/":
        return os.path.realpath(lexical)
    parent, name = os.path.split(lexical)
    return os.path.join(os.path.realpath(parent), name)


@pytest.mark.parametrize("follow_last", [True, False])
@pytest.mark.parametrize("rel", [*CASES, "a/lb", "l/lb"])
def test_one_walk_resolve_agrees_with_the_reference(tree: Path, rel: str,
                                                     follow_last: bool) -> None:
    """The one-walk fast path (open O_PATH, readlink, and an fstat for a path whose last
    link is not followed) names what the slow composition names, and its status is the
    lstat of that very name."""
    lexical = os.path.normpath(str(tree / rel) if rel else str(tree))
    try:
        r = LocalFs.resolve("/", lexical, follow_last=follow_last)
    except InvalidArgument:
        assert "loop" in rel  # too many levels of links, either way
        return
    assert r.real == _reference(lexical, follow_last)
    if r.st is not None:
        assert not follow_last
        ref = os.lstat(r.real)
        assert (r.st.st_ino, r.st.st_mode, r.st.st_size) == (ref.st_ino, ref.st_mode,
                                                            ref.st_size)
        assert stat_dict(os.path.basename(r.real), r.st) == LocalFs().stat(r.real)
    elif not follow_last and os.path.lexists(_reference(lexical, False)):
        pytest.fail("an existing path resolved without its status")


@pytest.mark.parametrize("path", ["/dev/fd/0", "/proc/self/fd/0", "/proc/self/root/etc",
                                  "/proc/thread-self/cwd", "/dev/stdin/x"])
@pytest.mark.parametrize("follow_last", [True, False])
def test_the_fast_path_still_refuses_the_supervisors_own_proc(path: str,
                                                              follow_last: bool) -> None:
    with pytest.raises(PermissionDenied):
        LocalFs.resolve("/", path, follow_last=follow_last)


def test_a_last_link_not_followed_is_the_link_itself() -> None:
    """``/dev/stdin`` leads into the supervisor's /proc only when followed: as lstat and
    unlink see it (follow_last=False) it is a symlink in /dev, and names nothing there."""
    with pytest.raises(PermissionDenied):
        LocalFs.resolve("/", "/dev/stdin", follow_last=True)
    r = LocalFs.resolve("/", "/dev/stdin", follow_last=False)
    assert r.real == "/dev/stdin"
    assert r.st is not None and stat_mod.S_ISLNK(r.st.st_mode)
