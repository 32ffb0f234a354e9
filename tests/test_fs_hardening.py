"""The broker's file provider holds against hostile trees and names (providers/fs.py).

Each test builds the attack on the real disk -- a 2,000-level chain, a hard link to a
file outside, a name with a lone surrogate, /proc paths that name this very process --
and calls the provider as the broker does. The test process stands in for the
supervisor: /proc/self here is what it would be there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlibos.errors import InvalidArgument, LibOSError, NotFound, PermissionDenied
from agentlibos.providers.fs import MAX_PATH, LocalFs, remove_tree


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    r = Path(os.path.realpath(tmp_path)) / "r"
    r.mkdir()
    yield r
    # Whatever the test left (it may fail half-way through a 2,000-level chain) goes
    # now: pytest removes old temporary directories with shutil.rmtree, which would
    # die of RecursionError on it -- in this run or in anybody's next one.
    remove_tree(str(r))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_chain(top: Path, depth: int, *, every: int = 100) -> None:
    """A chain top/d/d/.../d of ``depth`` directories, a file every ``every`` levels,
    built by descriptor: its paths go far past PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            if i % every == 0:
                os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def chain_depth(top: Path) -> int:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    try:
        while True:
            try:
                nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return n
            os.close(fd)
            fd = nfd
            n += 1
    finally:
        os.close(fd)


# ------------------------------------------------------------------ deep trees


def test_remove_tree_deletes_a_2000_deep_chain_beyond_path_max(root: Path) -> None:
    top = root / "scratch"
    top.mkdir()
    make_chain(top, 2000)
    assert chain_depth(top) == 2000  # about 4,000 bytes of "d/" below top: past PATH_MAX
    before = open_fds()
    remove_tree(str(top))
    assert not top.exists()
    assert open_fds() == before


def test_remove_tree_never_follows_a_symlink_out_of_the_tree(root: Path) -> None:
    outside = root / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "keep2.txt").write_text("keep")
    top = root / "scratch"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "to-dir").symlink_to(outside)
    (top / "a" / "to-file").symlink_to(outside / "keep.txt")
    (top / "dangling").symlink_to(root / "nowhere")
    make_chain(top / "a", 1200, every=300)
    remove_tree(str(top))
    assert not top.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert (outside / "sub" / "keep2.txt").read_text() == "keep"


def test_remove_tree_of_a_symlink_removes_the_link_not_its_target(root: Path) -> None:
    outside = root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    link = root / "scratch"
    link.symlink_to(outside)
    remove_tree(str(link))
    assert not link.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep"


def test_remove_tree_handles_wide_directories_and_plain_files(root: Path) -> None:
    top = root / "wide"
    for i in range(50):
        (top / f"d{i}" / "x").mkdir(parents=True)
        (top / f"d{i}" / "x" / "f").write_text("f")
        (top / f"f{i}").write_text("f")
    remove_tree(str(top))
    assert not top.exists()
    (root / "file").write_text("x")
    remove_tree(str(root / "file"))
    assert not (root / "file").exists()


def test_remove_tree_of_nothing_is_quiet_unless_asked_otherwise(root: Path) -> None:
    remove_tree(str(root / "missing"))
    remove_tree(str(root / "no" / "such" / "parent"))
    with pytest.raises(NotFound):
        remove_tree(str(root / "missing"), missing_ok=False)
    with pytest.raises(InvalidArgument):
        remove_tree("/")


def test_a_recursive_delete_through_the_provider_removes_a_deep_chain(root: Path) -> None:
    fs = LocalFs()
    top = root / "proj" / "tree"
    top.mkdir(parents=True)
    make_chain(top, 2100, every=700)
    entries = fs.walk(str(top), limit=10_000)
    assert len(entries) == 2100 + 3  # every directory and the three files
    assert max(len(e) for e in entries) > MAX_PATH  # walked whole, past PATH_MAX
    fs.delete(str(top), recursive=True)
    assert not top.exists()


def test_walk_bounds_the_number_of_entries(root: Path) -> None:
    top = root / "t"
    top.mkdir()
    make_chain(top, 50, every=1)
    before = open_fds()
    with pytest.raises(LibOSError, match="more than 20 entries"):
        LocalFs().walk(str(top), limit=20)
    assert open_fds() == before


def test_a_1500_level_mkdir_with_parents_succeeds_without_recursion(root: Path) -> None:
    fs = LocalFs()
    cwd = root / "proj"
    cwd.mkdir()
    r = fs.resolve(str(cwd), "/".join(["a"] * 1500))
    fs.mkdir(r.real, parents=True, exist_ok=False)
    assert chain_depth_named(cwd, "a") == 1500
    fs.mkdir(r.real, parents=True, exist_ok=True)
    with pytest.raises(LibOSError, match="exists"):
        fs.mkdir(r.real, parents=True, exist_ok=False)


def chain_depth_named(top: Path, name: str) -> int:
    p, n = top, 0
    while (p / name).is_dir():
        p, n = p / name, n + 1
    return n


def test_a_path_past_the_limit_is_refused_naming_the_limit(root: Path) -> None:
    fs = LocalFs()
    deep = "/".join(["a"] * 2100)  # within the argument limit alone, not once joined
    with pytest.raises(InvalidArgument, match=f"limit of {MAX_PATH} bytes") as e:
        fs.resolve(str(root), deep)
    assert e.value.details["limit"] == MAX_PATH
    with pytest.raises(InvalidArgument, match=f"limit of {MAX_PATH}"):
        fs.mkdir(str(root) + "/" + deep, parents=True, exist_ok=True)
    assert not (root / "a").exists()


def test_mkdir_with_parents_refuses_a_symlink_on_the_way(root: Path) -> None:
    outside = root / "outside"
    outside.mkdir()
    (root / "proj").mkdir()
    (root / "proj" / "link").symlink_to(outside)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        LocalFs().mkdir(str(root / "proj" / "link" / "x" / "y"), parents=True, exist_ok=True)
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------- names


@pytest.mark.parametrize("path", ["bad\udc80.txt", "dir\ud800/x", "\udfff"])
def test_a_path_with_a_lone_surrogate_is_an_invalid_argument(root: Path, path: str) -> None:
    with pytest.raises(InvalidArgument, match="not valid text"):
        LocalFs.resolve(str(root), path)


@pytest.mark.parametrize("path", ["a\x00b", "\x00", "dir/\x00/x"])
def test_a_path_with_nul_is_an_invalid_argument(root: Path, path: str) -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        LocalFs.resolve(str(root), path)


def test_a_path_through_a_host_name_that_is_not_utf8_is_refused(root: Path) -> None:
    # The agent's own path is text; a symlink leads through a host name that is not.
    broot = os.fsencode(root)
    os.mkdir(os.path.join(broot, b"host\xff"))
    os.symlink(b"host\xff", os.path.join(broot, b"hostlink"))
    with pytest.raises(InvalidArgument, match="not text"):
        LocalFs.resolve(str(root), "hostlink/x")


# ------------------------------------------------------------------- hard links


@pytest.fixture
def linked(root: Path) -> tuple[Path, Path]:
    """A file outside the granted tree, and a hard link to it planted inside."""
    outside = root / "outside.txt"
    outside.write_text("precious")
    proj = root / "proj"
    proj.mkdir()
    link = proj / "innocent.txt"
    os.link(outside, link)
    return outside, link


def test_appending_to_a_hard_linked_file_is_refused(linked: tuple[Path, Path]) -> None:
    outside, link = linked
    with pytest.raises(PermissionDenied, match="2 hard links") as e:
        LocalFs().write(str(link), b" appended", append=True)
    assert "outside the granted tree" in e.value.message
    assert outside.read_text() == "precious"


def test_writing_a_hard_linked_file_is_refused(linked: tuple[Path, Path]) -> None:
    outside, link = linked
    with pytest.raises(PermissionDenied, match="hard links"):
        LocalFs().write(str(link), b"replaced")
    assert outside.read_text() == "precious"
    assert link.read_text() == "precious"
    assert sorted(p.name for p in link.parent.iterdir()) == ["innocent.txt"]  # no temp left


def test_writing_and_appending_a_singly_linked_file_still_works(root: Path) -> None:
    fs = LocalFs()
    f = root / "plain.txt"
    fs.write(str(f), b"one")
    fs.write(str(f), b" two", append=True)
    assert f.read_text() == "one two"
    fs.write(str(f), b"three")
    assert f.read_text() == "three"


# ---------------------------------------------------------------- /proc of self


@pytest.fixture
def thread_id() -> Iterator[int]:
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    yield tid[0]
    done.set()
    t.join()


@pytest.mark.parametrize("path", [
    "/proc/self", "/proc/self/environ", "/proc/self/mem", "/proc/thread-self/status",
    "/proc/self/task", "/proc/net/tcp", "/dev/fd/0", "/dev/stdin", "/proc/self/root/etc",
    "/proc/self/cwd/x", "/proc/thread-self",
])
def test_proc_self_never_names_the_supervisor(path: str) -> None:
    with pytest.raises(PermissionDenied, match="supervisor's own process"):
        LocalFs.resolve("/", path)


def test_the_supervisors_pid_and_threads_are_refused_by_number(thread_id: int) -> None:
    pid = os.getpid()
    for path in [f"/proc/{pid}", f"/proc/{pid}/environ", f"/proc/{pid}/task/{thread_id}",
                 f"/proc/{thread_id}/environ", f"/proc/{thread_id}"]:
        with pytest.raises(PermissionDenied, match="supervisor's own process"):
            LocalFs.resolve("/", path)
    with pytest.raises(PermissionDenied):
        LocalFs.resolve(f"/proc/{pid}", "environ")  # relative to a cwd there
    with pytest.raises(PermissionDenied):
        LocalFs.resolve("/", "/proc/self", follow_last=False)


def test_other_proc_paths_are_left_to_capabilities_and_policy() -> None:
    assert LocalFs.resolve("/", "/proc/cpuinfo").real == "/proc/cpuinfo"
    assert LocalFs.resolve("/", "/proc/1/status").real == "/proc/1/status"
    assert LocalFs.resolve("/", "/proc").real == "/proc"


def test_a_planted_symlink_into_proc_self_is_refused(root: Path) -> None:
    proj = root / "proj"
    proj.mkdir()
    (proj / "escape").symlink_to("/proc/self/root")
    (proj / "fds").symlink_to("/dev/fd")
    (proj / "env").symlink_to("/proc/self/environ")
    for path in ["escape/etc/hostname", "escape", "fds/0", "env"]:
        with pytest.raises(PermissionDenied, match="supervisor's own process"):
            LocalFs.resolve(str(proj), path)


def test_a_chain_of_1500_symlinks_gives_a_typed_error_not_recursion(root: Path) -> None:
    (root / "target.txt").write_text("t")
    n = 1500
    for i in range(n):
        os.symlink(f"l{i + 1}" if i + 1 < n else "target.txt", root / f"l{i}")
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        LocalFs.resolve(str(root), "l0")
