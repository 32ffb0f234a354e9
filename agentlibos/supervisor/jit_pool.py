"""The pool of pre-started Deno workers (docs/jit.md, "The pool"): what may be pooled.

A pooled worker is started before anyone needs it, in the tool sandbox minus every
tool-specific part: its mount tree and Landlock rules hold Deno, its libraries and the
runner, and no tool's directory at all. On assignment it receives the text of exactly
one tool over its stdin, imports it from a data: URL, and serves that one (process,
tool) until it ends, like a cold worker. Since no tool's files are ever visible to it,
it can see neither another tool's files nor another agent's, before or after.

Two things decide whether a tool may take a pooled worker, both here and both
conservative (a "no" only means the cold path, which is always correct):

* :func:`self_contained`: the tool's module loads no other module. A data: module
  has no directory, so a relative import would fail where the cold path finds it.
* :func:`read_checked`: the exact bytes sent are those that passed `deno check` (their
  digest is the checked one), read from a regular file, not through a symlink. The
  supervisor reads them as itself, so a file swapped after the check, or a link to one
  the tool's sandbox would not show, must never be what is sent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable
from typing import Final

# A tool larger than this takes the cold path (its text travels in one protocol line).
MAX_SOURCE_BYTES: Final = 1 << 20
# Anything that may load a module: `import` in any form (static, dynamic, import.meta),
# and `export ... from "x"` (comments may stand between `from` and its string).
_LOADS_MODULES: Final = re.compile(
    r"import|\bfrom(?:\s|/\*.*?\*/|//[^\n]*(?:\n|$))*[\"'`]", re.DOTALL)
# How long after a worker is taken its replacement is started: not at once, so the
# replacement's fork and Deno start do not compete with the call that took a worker;
# sooner once that call is answered (REFILL_SOON_S: the turn after the reply).
REFILL_DELAY_S: Final = 0.05
REFILL_SOON_S: Final = 0.001
# Pooled workers that died before they were ready (or could not be moved into their
# caller's cgroup), in a row, before the pool stops refilling (the host cannot do it;
# every call then takes the cold path).
MAX_FAILURES: Final = 3


def self_contained(source: str) -> bool:
    """Whether ``source`` (a tool module) can load no other module. Pure; a false
    "no" (the word "import" in a comment) costs only a cold start."""
    return _LOADS_MODULES.search(source) is None


def read_checked(path: str, digest_ok: Callable[[str], bool]) -> str | None:
    """The text of the tool at ``path`` if it may be sent to a pooled worker: a regular
    file (not a symlink), at most MAX_SOURCE_BYTES, UTF-8, whose sha256 (hex)
    ``digest_ok`` accepts, and self-contained; otherwise None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SOURCE_BYTES:
            return None
        data = b""
        while len(data) <= MAX_SOURCE_BYTES and (chunk := os.read(fd, MAX_SOURCE_BYTES + 1)):
            data += chunk
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if len(data) > MAX_SOURCE_BYTES or not digest_ok(hashlib.sha256(data).hexdigest()):
        return None
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return source if self_contained(source) else None


def move_into(procs_files: tuple[str, ...], host_pid: int) -> None:
    """Move process ``host_pid`` (every thread of it) into a cgroup, one hierarchy after
    another; raises OSError naming the file that refused it.

    Run off the loop: the kernel may wait for an RCU grace period before the first
    migration after a quiet spell (cgroup_threadgroup_rwsem), about 10 ms on a VM."""
    pid = str(host_pid).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, pid)
        except OSError as e:
            raise OSError(e.errno, f"cannot move {host_pid} into {path}: {e.strerror}") from None
        finally:
            os.close(fd)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def check_pids_room(pids_dir: str | None, host_pid: int) -> None:
    """Raise OSError (EAGAIN) unless every cgroup from ``pids_dir`` up has room under its
    pids.max for the threads of ``host_pid``.

    A move charges the pids controller whatever its limit (a fork would have been
    refused): without this check, a tree at its limit would gain a Deno's threads past
    it, where a cold start would have failed. A fork in the tree between this check and
    the move can still overshoot, by at most those threads, once."""
    if pids_dir is None:
        return
    status = _read(f"/proc/{host_pid}/status") or ""
    need = next((int(line.split()[1]) for line in status.splitlines()
                 if line.startswith("Threads:")), 1)
    d = pids_dir.rstrip("/")
    while d.count("/") > 3:  # /sys/fs/cgroup/<hierarchy>: the host's root has no limit
        limit, current = _read(f"{d}/pids.max"), _read(f"{d}/pids.current")
        if limit is not None and limit != "max" and current is not None \
                and int(current) + need > int(limit):
            raise OSError(errno.EAGAIN, f"no room for {need} more tasks under {d} "
                                        f"({current} of {limit})")
        d = os.path.dirname(d)
