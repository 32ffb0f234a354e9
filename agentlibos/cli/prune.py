"""``agentlibos prune``: remove ended processes' work directories and logs.

Only what the runtime made for a process is removed: ``work/<pid>/`` (its default cwd;
never a directory given with ``--cwd``) and ``logs/<pid>.log``, ``logs/<pid>.<tool>.log``.
A process the store records as live is never touched, even when no supervisor runs
(the next one to start marks it failed; prune it after that).
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import Any

from agentlibos.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    err,
    paths_of,
    print_json,
    readonly_store,
)
from agentlibos.ui import format_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "prune", help="remove ended processes' work directories and logs",
                func=cmd_prune, example="""
        agentlibos prune
        agentlibos prune --json    # [{"pid", "removed": [paths], "bytes"}]
    """)


def remove_tree(path: Path) -> int:
    """Remove ``path`` without recursion or following links; the bytes freed.

    Iterative and relative to directory fds: an agent's work dir may hold a chain of
    thousands of directories (too deep for a recursive walk, too long for a path) and
    symbolic links pointing anywhere (unlinked, never followed).
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return st.st_size
    freed = 0
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    depth = 0
    try:
        while True:
            child = None
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        child = entry.name
                        break
                    freed += entry.stat(follow_symlinks=False).st_size
                    os.unlink(entry.name, dir_fd=fd)
            if child is not None:  # go down one level
                new = os.open(child, flags, dir_fd=fd)
                os.close(fd)
                fd, depth = new, depth + 1
                continue
            if depth == 0:
                break
            # This directory is empty: go up and remove it. ".." of a directory opened
            # with O_NOFOLLOW is its real parent; an ended process can move nothing.
            parent = os.open("..", flags, dir_fd=fd)
            name = _name_in(parent, os.fstat(fd))
            os.close(fd)
            fd, depth = parent, depth - 1
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)
    return freed


def _name_in(parent_fd: int, st: os.stat_result) -> str:
    with os.scandir(parent_fd) as it:
        for entry in it:
            est = entry.stat(follow_symlinks=False)
            if (est.st_ino, est.st_dev) == (st.st_ino, st.st_dev):
                return entry.name
    raise FileNotFoundError("a directory vanished while it was being removed")


def cmd_prune(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    store = readonly_store(paths)
    try:
        ended = [r for r in (store.list_processes() if store else []) if not r.live]
    finally:
        if store is not None:
            store.close()
    report: list[dict[str, Any]] = []
    failed = False
    logs = sorted(paths.logs.iterdir()) if paths.logs.is_dir() else []
    for rec in ended:
        # logs/<pid>.log and each JIT tool's logs/<pid>.<tool>.log
        targets = [p for p in logs if p.name.startswith(f"{rec.pid}.")]
        work = paths.work / str(rec.pid)
        if work.is_dir() and Path(rec.cwd) == work:
            targets.append(work)
        removed: list[str] = []
        freed = 0
        for t in targets:
            try:
                freed += remove_tree(t)
                removed.append(str(t))
            except OSError as e:
                err(f"cannot remove {t}: {e.strerror}")
                failed = True
        if removed:
            report.append({"pid": rec.pid, "removed": removed, "bytes": freed})
    if ns.json:
        print_json(report)
    elif report:
        rows: list[tuple[str, ...]] = [("PID", "BYTES", "REMOVED")]
        rows += [(str(r["pid"]), str(r["bytes"]), " ".join(r["removed"])) for r in report]
        print(format_table(rows), flush=True)
    else:
        print("nothing to prune", flush=True)
    return EXIT_FAILED if failed else EXIT_OK
