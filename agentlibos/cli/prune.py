"""``agentlibos prune``: remove ended processes' work directories, logs and journals.

Only what the runtime made for a process is removed: ``work/<pid>/`` (its default cwd;
never a directory given with ``--cwd``), ``logs/<pid>.log``, ``logs/<pid>.<tool>.log``,
and its syscall journal past its last checkpoint (which a restore still replays). A
process the store records as live is never touched, even when no supervisor runs: its
journal is how it resumes. The audit chain is never pruned; the prune itself is audited.
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
)
from agentlibos.errors import LibOSError
from agentlibos.store import open_store
from agentlibos.ui import format_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "prune",
                help="remove ended processes' work directories, logs and journals",
                func=cmd_prune, example="""
        agentlibos prune
        agentlibos prune --json    # [{"pid", "removed": [paths], "bytes", "journal_entries"}]
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


def _prune_journals(db: Path, report: list[dict[str, Any]]) -> bool:
    """Delete each ended process's journal past its last checkpoint; note the rows in
    its report entry. One audit record for the whole prune. True if one failed."""
    if not report or not db.exists():
        return False
    failed, total = False, 0
    store = open_store(db)  # a second writer beside a daemon, like `image add`
    try:
        with store.batch():  # one commit for every process and the audit record
            for entry in report:
                try:
                    entry["journal_entries"] = n = store.journal_prune(entry["pid"])
                except LibOSError as e:  # it was resumed or restored meanwhile
                    err(f"pid {entry['pid']}: {e.message}")
                    failed = True
                    continue
                total += n
            if total:
                store.append_audit(None, "journal.prune", "-", "info", {
                    "processes": sum(1 for r in report if r["journal_entries"]),
                    "entries": total})
    finally:
        store.close()
    return failed


def _name_in(parent_fd: int, st: os.stat_result) -> str:
    with os.scandir(parent_fd) as it:
        for entry in it:
            est = entry.stat(follow_symlinks=False)
            if (est.st_ino, est.st_dev) == (st.st_ino, st.st_dev):
                return entry.name
    raise FileNotFoundError("a directory vanished while it was being removed")


def cmd_prune(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    # Opened to write (a database of an older version is migrated): the prune writes
    # to it anyway, and only a current one lists checkpoints.
    store = open_store(paths.db) if paths.db.exists() else None
    try:
        procs = store.list_processes() if store else []
        ended = [r for r in procs if not r.live]
        # A work directory still in use stays: a live process may work in another's
        # (a restored process keeps its source's cwd), and `restore` of a checkpoint runs
        # in its source's cwd again.
        checkpointed = {c.pid for c in store.checkpoint_list()} if store else set()
        in_use = {Path(r.cwd) for r in procs if r.live or r.pid in checkpointed}
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
        if work.is_dir() and Path(rec.cwd) == work and not any(
                c == work or work in c.parents for c in in_use):
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
        report.append({"pid": rec.pid, "removed": removed, "bytes": freed,
                       "journal_entries": 0})
    try:
        failed |= _prune_journals(paths.db, report)
    except (LibOSError, OSError) as e:
        err(f"cannot prune the journals: {e}")
        failed = True
    report = [r for r in report if r["removed"] or r["journal_entries"]]
    if ns.json:
        print_json(report)
    elif report:
        rows: list[tuple[str, ...]] = [("PID", "BYTES", "JOURNAL", "REMOVED")]
        rows += [(str(r["pid"]), str(r["bytes"]), str(r["journal_entries"]),
                  " ".join(r["removed"]) or "-") for r in report]
        print(format_table(rows), flush=True)
    else:
        print("nothing to prune", flush=True)
    return EXIT_FAILED if failed else EXIT_OK
