"""No way out of the cwd through the file syscalls: symlinks, ``..``, absolute paths, races.

Two levels. Real agents holding ``fs:rw:./**`` in a project directory try every escape
through the SDK and report the typed error they get (the test asserts on what came back
and on the disk). Then :mod:`agentlibos.providers.fs` directly: a symlink anywhere in a
path makes ``safe_open`` fail with ELOOP, and a directory swapped for a symlink between
the check (``LocalFs.resolve``) and the operation is refused rather than followed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from agentlibos.errors import InvalidArgument, LibOSError, PermissionDenied
from agentlibos.providers import fspath as fsmod
from agentlibos.providers.fs import LocalFs, remove_tree, safe_open
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

HIDDEN = "TOP-HIDDEN-7c1e0d9a"

# Runs a list of [op, path, ...] and reports each outcome; never lets an error escape,
# so one run checks many escapes and the test sees exactly what the agent saw.
FS_AGENT = """
    from agentlibos.errors import LibOSError

    def run(ctx, op, path, extra):
        if op == "read":
            return ctx.fs.read_text(path)
        if op == "write":
            return ctx.fs.write_text(path, extra)
        if op == "append":
            return ctx.fs.write_text(path, extra, append=True)
        if op == "list":
            return [[e["name"], e["type"]] for e in ctx.fs.list(path)]
        if op == "stat":
            st = ctx.fs.stat(path)
            return [st["name"], st["type"], st["size"]]
        if op == "mkdir":
            return ctx.fs.mkdir(path, parents=True)
        if op == "delete":
            return ctx.fs.delete(path, recursive=bool(extra))
        raise ValueError(op)

    def main(ctx, args):
        out = []
        for op, path, extra in args["ops"]:
            try:
                out.append({"ok": True, "value": run(ctx, op, path, extra)})
            except LibOSError as e:
                out.append({"ok": False, "type": type(e).__name__, "code": e.code,
                            "message": e.message})
        return out
"""
CAPS = ["fs:rw:./**", "fs:delete:./**"]


@dataclass
class Layout:
    root: Path  # tmp_path, symlink-free
    proj: Path  # the agent's cwd
    secret: Path  # a file outside the cwd
    outside: Path  # a directory outside the cwd


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    root = Path(os.path.realpath(tmp_path))
    proj, outside = root / "proj", root / "outside"
    (proj / "sub").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    secret = root / "secret.txt"
    secret.write_text(HIDDEN)
    (outside / "inner.txt").write_text(HIDDEN + "-inner")
    (outside / "deep" / "file.txt").write_text(HIDDEN + "-deep")
    (proj / "notes.txt").write_text("my notes")
    (proj / "sub" / "readme.txt").write_text("read me")
    return Layout(root, proj, secret, outside)


def _snapshot(d: Path) -> dict[str, str]:
    """Every entry below ``d`` (not following links) with its content or link target."""
    out: dict[str, str] = {}
    for top, dirs, files in os.walk(d):
        if top == str(d) and "images" in dirs:
            dirs.remove("images")  # the test's image directories (conftest.images)
        for n in dirs + files:
            p = Path(top) / n
            rel = str(p.relative_to(d))
            out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink()
                        else "<dir>" if p.is_dir() else p.read_text())
    return out


def _run(sup: Supervisor, make_image: MakeImage, lay: Layout,
         ops: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    img = make_image("fsagent", FS_AGENT, caps=CAPS)
    rec = run_proc(sup, img, {"ops": [list(op) for op in ops]}, cwd=lay.proj)
    assert (rec.state, rec.exit_reason) == ("exited", "returned"), rec.error
    result = rec.result
    assert isinstance(result, list) and len(result) == len(ops)
    # Whatever happened, not a byte of what lies outside came back.
    assert HIDDEN not in json.dumps(result)
    return result


def _assert_all_refused(ops: list[tuple[str, str, Any]], out: list[dict[str, Any]]) -> None:
    for op, got in zip(ops, out, strict=True):
        assert (got["ok"], got.get("type"), got.get("code")) == (
            False, "PermissionDenied", "EPERM"), (op, got)


# ------------------------------------------------------------------ through agents


def test_a_planted_symlink_to_a_file_outside_cannot_be_read_or_written_through(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    (lay.proj / "leak.txt").symlink_to(lay.secret)
    (lay.proj / "rel-leak.txt").symlink_to("../secret.txt")
    (lay.proj / "chain.txt").symlink_to("leak.txt")  # inside -> inside -> outside
    (lay.proj / "sub" / "up.txt").symlink_to("../../secret.txt")
    (lay.proj / "dangling").symlink_to(lay.root / "not-yet.txt")
    before = _snapshot(lay.root)
    ops: list[tuple[str, str, Any]] = [
        ("read", "leak.txt", None),
        ("read", "rel-leak.txt", None),
        ("read", "chain.txt", None),
        ("read", "sub/up.txt", None),
        ("write", "leak.txt", "overwritten"),
        ("append", "chain.txt", "appended"),
        ("write", "dangling", "created outside"),
    ]
    out = _run(sup, make_image, lay, [*ops, ("stat", "leak.txt", None)])
    _assert_all_refused(ops, out[:-1])
    # stat does not follow the last symlink: it describes the link, which is inside.
    assert out[-1] == {"ok": True, "value": ["leak.txt", "symlink", len(str(lay.secret))]}
    assert str(lay.secret) in out[0]["message"]  # says what was asked, on the real path
    assert "fs:read" in out[0]["message"]
    assert _snapshot(lay.root) == before
    assert lay.secret.read_text() == HIDDEN
    assert not (lay.root / "not-yet.txt").exists()


def test_a_symlinked_directory_pointing_outside_is_no_way_out(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    (lay.proj / "ext").symlink_to(lay.outside)
    (lay.proj / "sub" / "ext-rel").symlink_to("../../outside")
    before = _snapshot(lay.outside)
    ops: list[tuple[str, str, Any]] = [
        ("write", "ext/new.txt", "dropped"),
        ("write", "sub/ext-rel/new.txt", "dropped"),
        ("write", "ext/inner.txt", "overwritten"),
        ("append", "ext/inner.txt", "appended"),
        ("mkdir", "ext/newdir/deeper", None),
        ("read", "ext/inner.txt", None),
        ("read", "sub/ext-rel/deep/file.txt", None),
        ("list", "ext", None),
        ("list", "ext/deep", None),
        ("stat", "ext/deep/file.txt", None),
        ("delete", "ext/inner.txt", False),
        ("delete", "ext/deep", True),
    ]
    out = _run(sup, make_image, lay, ops)
    _assert_all_refused(ops, out)
    assert _snapshot(lay.outside) == before


@pytest.mark.parametrize("path", [
    "../secret.txt",
    "sub/../../secret.txt",
    "./../proj/../secret.txt",
    "../outside/inner.txt",
    "sub/../../outside/deep/file.txt",
])
def test_dot_dot_escapes_are_refused(
    sup: Supervisor, make_image: MakeImage, lay: Layout, path: str
) -> None:
    before = _snapshot(lay.root)
    ops: list[tuple[str, str, Any]] = [
        ("read", path, None),
        ("stat", path, None),
        ("write", path, "overwritten"),
        ("append", path, "appended"),
        ("delete", path, False),
        ("write", path + ".new", "created"),
        ("mkdir", path + ".d", None),
        ("list", os.path.dirname(path), None),
    ]
    out = _run(sup, make_image, lay, ops)
    _assert_all_refused(ops, out)
    assert _snapshot(lay.root) == before


def test_absolute_paths_outside_are_refused_and_inside_allowed(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    before = _snapshot(lay.root)
    refused: list[tuple[str, str, Any]] = [
        ("read", str(lay.secret), None),
        ("read", "/" + str(lay.secret), None),  # '//' is not a way around the check
        ("read", "/etc/passwd", None),
        ("list", "/", None),
        ("list", str(lay.root), None),
        ("write", str(lay.root / "abs.txt"), "created"),
        ("write", str(lay.outside / "inner.txt"), "overwritten"),
        ("mkdir", str(lay.outside / "made"), None),
        ("delete", str(lay.secret), False),
    ]
    allowed: list[tuple[str, str, Any]] = [("read", str(lay.proj / "notes.txt"), None)]
    out = _run(sup, make_image, lay, refused + allowed)
    _assert_all_refused(refused, out[:len(refused)])
    assert out[len(refused):] == [{"ok": True, "value": "my notes"}]
    assert _snapshot(lay.root) == before


def test_a_symlink_inside_pointing_inside_is_followed(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    (lay.proj / "alias.txt").symlink_to("notes.txt")
    (lay.proj / "abs-alias.txt").symlink_to(lay.proj / "sub" / "readme.txt")
    (lay.proj / "docs").symlink_to("sub")
    out = _run(sup, make_image, lay, [
        ("read", "alias.txt", None),
        ("read", "abs-alias.txt", None),
        ("read", "docs/readme.txt", None),
        ("list", "docs", None),
        ("write", "docs/new.txt", "through an inside link"),
    ])
    assert [o["ok"] for o in out] == [True] * 5, out
    assert [o["value"] for o in out[:4]] == [
        "my notes", "read me", "read me", [["readme.txt", "file"]]]
    assert (lay.proj / "sub" / "new.txt").read_text() == "through an inside link"


def test_a_recursive_delete_removes_links_to_outside_not_their_targets(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    trash = lay.proj / "trash"
    (trash / "nested").mkdir(parents=True)
    (trash / "a.txt").write_text("junk")
    (trash / "to-file").symlink_to(lay.secret)
    (trash / "to-dir").symlink_to(lay.outside)
    (trash / "nested" / "to-file").symlink_to("../../../secret.txt")
    (trash / "nested" / "to-deep").symlink_to(lay.outside / "deep")
    before = _snapshot(lay.outside)
    out = _run(sup, make_image, lay, [("delete", "trash", True), ("list", ".", None)])
    assert out[0] == {"ok": True, "value": None}, out
    assert not trash.exists() and not trash.is_symlink()
    assert sorted(name for name, _ in out[1]["value"]) == ["notes.txt", "sub"]
    assert lay.secret.read_text() == HIDDEN
    assert _snapshot(lay.outside) == before


def test_deleting_a_symlink_removes_the_link_itself(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    (lay.proj / "alias.txt").symlink_to("notes.txt")
    out = _run(sup, make_image, lay, [("delete", "alias.txt", False)])
    assert out == [{"ok": True, "value": None}]
    assert (lay.proj / "notes.txt").read_text() == "my notes"
    assert not (lay.proj / "alias.txt").is_symlink()


def test_reading_a_fifo_is_refused_without_blocking_the_broker(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    # The broker serves every process from one thread: an open() that waits for a FIFO
    # writer would stop them all. (Today an agent can make the FIFO itself; with
    # Landlock it can still meet one in a user's project.)
    os.mkfifo(lay.proj / "pipe")
    with _must_finish_within(20):
        out = _run(sup, make_image, lay, [
            ("read", "pipe", None),
            ("append", "pipe", "data"),
            ("read", "notes.txt", None),
        ])
    assert [(o["ok"], o.get("code")) for o in out[:2]] == [(False, "EINVAL"), (False, "EINVAL")]
    assert out[2] == {"ok": True, "value": "my notes"}


def test_hostile_trees_links_and_names_get_typed_errors_and_the_broker_lives(
    sup: Supervisor, make_image: MakeImage, lay: Layout
) -> None:
    # Each of these once raised RecursionError or UnicodeEncodeError in the supervisor,
    # or reached outside the tree: a 1,500-level mkdir and recursive delete, a hard
    # link to a file outside, a link through /proc/self, a name that is not text.
    os.link(lay.secret, lay.proj / "linked.txt")
    (lay.proj / "env").symlink_to("/proc/self/environ")
    deep = "/".join(["a"] * 1500)
    try:
        out = _run(sup, make_image, lay, [
            ("mkdir", deep, None),
            ("stat", deep, None),
            ("delete", "a", True),
            ("append", "linked.txt", "pwned"),
            ("write", "linked.txt", "pwned"),
            ("read", "env", None),
            ("read", "bad\udc80.txt", None),
            ("write", "bad\ud800", "x"),
            ("read", "notes.txt", None),
        ])
    finally:
        remove_tree(str(lay.proj / "a"))  # pytest's own cleanup would recurse on it
    assert out[0]["ok"] and out[1]["ok"] and out[2]["ok"], out[:3]
    assert not (lay.proj / "a").exists()
    assert [(o["ok"], o.get("type")) for o in out[3:8]] == [
        (False, "PermissionDenied"), (False, "PermissionDenied"), (False, "PermissionDenied"),
        (False, "InvalidArgument"), (False, "InvalidArgument")], out[3:8]
    assert "hard links" in out[3]["message"] and "hard links" in out[4]["message"]
    assert "supervisor's own process" in out[5]["message"]
    assert "not valid text" in out[6]["message"]
    assert out[8] == {"ok": True, "value": "my notes"}
    assert lay.secret.read_text() == HIDDEN


# ------------------------------------------------------------------ the provider


class Hung(BaseException):
    """Raised by the alarm: a call that had to return promptly was still blocked.

    A BaseException so that no ``except Exception`` on the way (the broker's) eats it.
    """


@contextmanager
def _must_finish_within(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _openat2_available() -> bool:
    fd = safe_open("/", os.O_PATH | os.O_DIRECTORY)
    os.close(fd)
    return fsmod._openat2_state.get("available", True)


@pytest.fixture(params=["openat2", "o_nofollow-walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a provider test with openat2, then with the fallback for older kernels."""
    mode = str(request.param)
    if mode == "openat2":
        if not _openat2_available():
            pytest.skip("this kernel has no openat2 (5.6+)")
    else:
        monkeypatch.setitem(fsmod._openat2_state, "available", False)
    return mode


@pytest.mark.parametrize("link_at", [0, 1, 2, 3])
def test_safe_open_refuses_a_symlink_at_any_component(
    resolver: str, lay: Layout, link_at: int
) -> None:
    # proj/a/b/c/f.txt, with component `link_at` replaced by a link to an identical
    # tree outside: the path names a real file, but only through a link.
    parts = ["a", "b", "c", "f.txt"]
    inside = lay.proj.joinpath(*parts[:-1])
    inside.mkdir(parents=True)
    (inside / "f.txt").write_text("inside")
    mirror = lay.outside.joinpath(*parts[:-1])
    mirror.mkdir(parents=True)
    (mirror / "f.txt").write_text(HIDDEN)
    swapped = lay.proj.joinpath(*parts[:link_at + 1])
    target = lay.outside.joinpath(*parts[:link_at + 1])
    if swapped.is_dir():
        os.rename(swapped, swapped.with_name(swapped.name + ".orig"))
    else:
        swapped.unlink()
    swapped.symlink_to(target)
    path = str(lay.proj.joinpath(*parts))
    assert Path(path).read_text() == HIDDEN  # the plain open() follows it out
    cases = [(path, os.O_RDONLY), (path, os.O_WRONLY | os.O_APPEND), (path, os.O_PATH),
             (path, os.O_PATH | os.O_DIRECTORY)]
    if link_at < len(parts) - 1:  # the link is a directory: opening that is refused too
        cases.append((os.path.dirname(path), os.O_PATH | os.O_DIRECTORY))
    for p, flags in cases:
        with pytest.raises(OSError) as info:
            os.close(safe_open(p, flags))
        assert info.value.errno == errno.ELOOP, (p, flags, info.value)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        LocalFs().read(path, None)
    assert (mirror / "f.txt").read_text() == HIDDEN


def test_safe_open_opens_a_symlink_free_path(resolver: str, lay: Layout) -> None:
    fd = safe_open(str(lay.proj / "notes.txt"), os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"my notes"
    finally:
        os.close(fd)


def _ops(lfs: LocalFs) -> dict[str, Callable[[str], object]]:
    return {
        "read": lambda p: lfs.read(p, None),
        "write": lambda p: lfs.write(p, b"overwritten"),
        "append": lambda p: lfs.write(p, b"appended", append=True),
        "stat": lfs.stat,
        "listdir": lambda p: lfs.listdir(os.path.dirname(p), 100),
        "mkdir": lambda p: lfs.mkdir(p + ".d/deeper", parents=True, exist_ok=False),
        "delete": lambda p: lfs.delete(p, recursive=False),
    }


@pytest.mark.parametrize("op", list(_ops(LocalFs())))
def test_a_directory_swapped_for_a_symlink_after_resolve_is_refused(
    resolver: str, lay: Layout, op: str
) -> None:
    """The race: resolve and check the path, swap a directory for a link, operate."""
    (lay.outside / "sub").mkdir()
    (lay.outside / "sub" / "readme.txt").write_text(HIDDEN)
    lfs = LocalFs()
    r = lfs.resolve(str(lay.proj), "sub/readme.txt")
    assert r.real == str(lay.proj / "sub" / "readme.txt")  # what the capability check saw
    os.rename(lay.proj / "sub", lay.proj / "sub.orig")
    (lay.proj / "sub").symlink_to(lay.outside / "sub")  # the attacker wins the race
    before = _snapshot(lay.outside)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        _ops(lfs)[op](r.real)
    assert _snapshot(lay.outside) == before


@pytest.mark.parametrize("op", ["read", "append", "listdir"])
def test_a_file_or_directory_swapped_for_a_symlink_after_resolve_is_not_followed(
    resolver: str, lay: Layout, op: str
) -> None:
    lfs = LocalFs()
    name = "sub" if op == "listdir" else "notes.txt"
    r = lfs.resolve(str(lay.proj), name)
    os.rename(lay.proj / name, lay.proj / (name + ".orig"))
    (lay.proj / name).symlink_to(lay.outside if op == "listdir" else lay.secret)
    before = _snapshot(lay.outside)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        if op == "read":
            lfs.read(r.real, None)
        elif op == "append":
            lfs.write(r.real, b"appended", append=True)
        else:
            lfs.listdir(r.real, 100)
    assert lay.secret.read_text() == HIDDEN
    assert _snapshot(lay.outside) == before


def test_writing_over_a_swapped_in_symlink_replaces_the_link_not_its_target(
    resolver: str, lay: Layout
) -> None:
    lfs = LocalFs()
    r = lfs.resolve(str(lay.proj), "notes.txt")
    (lay.proj / "notes.txt").unlink()
    (lay.proj / "notes.txt").symlink_to(lay.secret)
    assert lfs.write(r.real, b"replaced") == 8
    assert not (lay.proj / "notes.txt").is_symlink()
    assert (lay.proj / "notes.txt").read_text() == "replaced"
    assert lay.secret.read_text() == HIDDEN


def test_stat_and_delete_of_a_swapped_in_symlink_act_on_the_link(
    resolver: str, lay: Layout
) -> None:
    lfs = LocalFs()
    r = lfs.resolve(str(lay.proj), "notes.txt")
    (lay.proj / "notes.txt").unlink()
    (lay.proj / "notes.txt").symlink_to(lay.secret)
    st = lfs.stat(r.real)
    assert (st["name"], st["type"], st["size"]) == ("notes.txt", "symlink",
                                                    len(str(lay.secret)))
    lfs.delete(r.real, recursive=False)
    assert not (lay.proj / "notes.txt").is_symlink()
    assert lay.secret.read_text() == HIDDEN


def test_a_recursive_delete_never_follows_links_out_of_the_tree(
    resolver: str, lay: Layout
) -> None:
    tree = lay.proj / "tree"
    (tree / "x").mkdir(parents=True)
    (tree / "x" / "out").symlink_to(lay.outside)
    (tree / "secret").symlink_to(lay.secret)
    before = _snapshot(lay.outside)
    walked = LocalFs().walk(str(tree), limit=100)
    assert sorted(os.path.relpath(p, tree) for p in walked) == ["secret", "x", "x/out"]
    LocalFs().delete(str(tree), recursive=True)
    assert not tree.exists()
    assert _snapshot(lay.outside) == before and lay.secret.read_text() == HIDDEN


def test_resolve_collapses_dot_dot_and_resolves_links(lay: Layout) -> None:
    (lay.proj / "leak").symlink_to(lay.secret)
    r = LocalFs.resolve(str(lay.proj), "sub/../leak")
    assert (r.lexical, r.real) == (str(lay.proj / "leak"), str(lay.secret))
    assert r.aliases == (str(lay.proj / "leak"),)
    assert LocalFs.resolve(str(lay.proj), "//" + str(lay.secret)[1:]).lexical == str(lay.secret)
    for bad in ("", "a\x00b", "x" * 5000):
        with pytest.raises(InvalidArgument):
            LocalFs.resolve(str(lay.proj), bad)


@pytest.mark.parametrize("op", ["read", "append"])
def test_a_fifo_is_refused_promptly_not_waited_on(lay: Layout, op: str) -> None:
    fifo = lay.proj / "pipe"
    os.mkfifo(fifo)
    lfs = LocalFs()
    with _must_finish_within(10), pytest.raises(LibOSError) as info:
        if op == "read":
            lfs.read(str(fifo), None)
        else:
            lfs.write(str(fifo), b"x", append=True)
    assert isinstance(info.value, InvalidArgument), info.value
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # left as it was
