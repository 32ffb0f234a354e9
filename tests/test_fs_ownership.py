"""An agent's writes leave the user's files theirs: owner and mode (providers/fs.py).

A whole-file write goes through a new file and a rename, so without care a private
0600 file came back root-owned and 0644 -- world-readable -- and a script lost its
executable bit. These tests make the files on the real disk, owned by another uid, and
write them through the provider as the broker does, then through an agent end to end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agentlibos.providers.fs import LocalFs
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

USER = (1234, 1235)  # an ordinary user's uid and gid, as in a home directory

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
pytestmark = [pytest.mark.privileged, needs_root]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory owned by USER, as a user's project is."""
    d = Path(os.path.realpath(tmp_path)) / "project"
    d.mkdir()
    os.chown(d, *USER)
    return d


def owner_and_mode(p: Path) -> tuple[int, int, int]:
    st = p.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_a_rewrite_keeps_the_owner_and_mode_of_a_private_file(tree: Path) -> None:
    f = tree / "secret.txt"
    f.write_text("old")
    os.chown(f, *USER)
    f.chmod(0o600)
    LocalFs().write(str(f), b"new secret")
    assert f.read_bytes() == b"new secret"
    assert owner_and_mode(f) == (*USER, 0o600)


def test_a_rewrite_keeps_an_executable_bit_and_drops_set_id_bits(tree: Path) -> None:
    script, setuid = tree / "run.sh", tree / "tool"
    for p in (script, setuid):
        p.write_text("#!/bin/sh\n")
        os.chown(p, *USER)
    script.chmod(0o750)
    setuid.chmod(0o4755)
    fs = LocalFs()
    fs.write(str(script), b"#!/bin/sh\necho hi\n")
    fs.write(str(setuid), b"agent bytes")
    assert owner_and_mode(script) == (*USER, 0o750)
    # An agent's bytes never become a set-id program, whoever owned the old file.
    assert owner_and_mode(setuid) == (*USER, 0o755)


def test_new_files_and_directories_belong_to_the_directorys_owner(tree: Path) -> None:
    fs = LocalFs()
    fs.write(str(tree / "new.txt"), b"x")
    fs.write(str(tree / "log.txt"), b"a\n", append=True)
    fs.write(str(tree / "log.txt"), b"b\n", append=True)
    fs.mkdir(str(tree / "out"), parents=False, exist_ok=False)
    fs.mkdir(str(tree / "deep" / "er" / "est"), parents=True, exist_ok=False)
    for rel in ("new.txt", "log.txt", "out", "deep", "deep/er", "deep/er/est"):
        assert owner_and_mode(tree / rel)[:2] == USER, rel
    assert (tree / "log.txt").read_text() == "a\nb\n"


def test_a_root_owned_directory_keeps_making_root_owned_files(tmp_path: Path) -> None:
    LocalFs().write(str(tmp_path / "f"), b"x")
    assert owner_and_mode(tmp_path / "f")[:2] == (0, 0)


def test_an_appended_file_keeps_its_owner_and_mode(tree: Path) -> None:
    f = tree / "notes.md"
    f.write_text("1\n")
    os.chown(f, 4321, 4321)
    f.chmod(0o640)
    LocalFs().write(str(f), b"2\n", append=True)
    assert f.read_text() == "1\n2\n"
    assert owner_and_mode(f) == (4321, 4321, 0o640)


def test_an_agents_rewrite_of_a_users_private_file_stays_private(
    sup: Supervisor, make_image: MakeImage, tree: Path
) -> None:
    f = tree / "private.txt"
    f.write_text("old")
    os.chown(f, *USER)
    f.chmod(0o600)
    img = make_image("rewriter", """
        def main(ctx, args):
            ctx.fs.write_text("private.txt", "rewritten")
            ctx.fs.mkdir("out")
            ctx.fs.write_text("out/report.txt", "made")
            return "ok"
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img, cwd=tree)
    assert rec.state == "exited", rec.error
    assert f.read_text() == "rewritten"
    assert owner_and_mode(f) == (*USER, 0o600)
    assert owner_and_mode(tree / "out")[:2] == USER
    assert owner_and_mode(tree / "out" / "report.txt")[:2] == USER


def test_a_write_into_a_directory_not_made_yet_makes_it_the_users_as_design_shows(
    sup: Supervisor, make_image: MakeImage, tree: Path
) -> None:
    # DESIGN's SDK example writes out/summary.txt with fs:write:./out/** and no mkdir.
    # The directories are made as mkdir(parents=True) makes them -- the user's -- and a
    # write the capability does not cover makes nothing.
    img = make_image("deepwriter", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.fs.write_text("out/summary.txt", "whole")
            ctx.fs.write_text("out/logs/run.log", "line\\n", append=True)
            try:
                ctx.fs.write_text("elsewhere/x.txt", "no")
            except PermissionDenied:
                return "refused"
            return "written"
    """, caps=["fs:read:./**", "fs:write:./out/**"])
    rec = run_proc(sup, img, cwd=tree)
    assert (rec.state, rec.result) == ("exited", "refused"), rec.error
    assert (tree / "out" / "summary.txt").read_text() == "whole"
    assert (tree / "out" / "logs" / "run.log").read_text() == "line\n"
    assert owner_and_mode(tree / "out")[:2] == USER
    assert owner_and_mode(tree / "out" / "logs")[:2] == USER
    assert not (tree / "elsewhere").exists()
