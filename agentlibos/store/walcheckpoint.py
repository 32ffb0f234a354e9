"""Checkpoints of the write-ahead log, on a thread of their own.

SQLite copies the WAL back into the database file inside the COMMIT that crosses
``wal_autocheckpoint`` pages (1,000 by default): with ``synchronous = NORMAL`` that
commit also runs two ``fdatasync`` calls. The broker loop commits before every reply, so
one call in about 170 paid for it (4-15 ms here): the p99 of a syscall, and a third of
the mean cost of a commit (a loop of audit + journal commits: mean 170 -> 120 us). The
writer now leaves it to this thread: after a commit it pokes the checkpointer, which
waits a moment for more commits and runs a PASSIVE checkpoint on its own connection (it
copies what it can without blocking the writer or any reader; the WAL restarts from the
top at the next write once everything was copied). Nothing changes about durability: a
commit is in the WAL before the reply goes out, as before; the checkpoint only moves
committed pages.

The writer keeps a high ``wal_autocheckpoint`` (:data:`SAFETY_PAGES`) as a bound if this
thread ever falls behind. Idle, the thread blocks on an event: no polling.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

SAFETY_PAGES: Final = 10_000  # ~40 MiB of WAL before the writer checkpoints itself
# Wait this long after a poke, so one checkpoint (two fdatasyncs) covers many commits;
# 0.05 s left more commits stalled behind a sync of the same file (p99 4 ms vs 0.3-1.6).
GATHER_S: Final = 0.25


class WalCheckpointer:
    def __init__(self, path: Path, *, gather_s: float = GATHER_S) -> None:
        self._path = path
        self._gather_s = gather_s
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # completed runs (for tests and the bench)
        # Opened now, with the store, not lazily on the thread: the supervisor's set of
        # open files is then the same before and after its first commit.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 1000")
        # A first read opens the WAL (and its index) now too, not at the first checkpoint.
        self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()

    def poke(self) -> None:
        """A commit happened: checkpoint soon (cheap; called on the loop thread)."""
        if self._wanted.is_set() or self._stopping.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alos-wal-checkpoint",
                                            daemon=True)
            self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._db.close()

    def _run(self) -> None:
        # The connection is closed by close(), once this thread has ended.
        while not self._stopping.is_set():  # checked after each clear(): a close() that
            self._wanted.wait()  # came during the gather is not lost
            if self._stopping.is_set():
                return
            # Gather: commits keep arriving while the loop is busy; one checkpoint (and
            # its two fdatasyncs) serves them all.
            time.sleep(self._gather_s)
            self._wanted.clear()
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error as e:  # busy or gone: the next poke tries again
                log.debug("WAL checkpoint of %s did not run: %s", self._path, e)
