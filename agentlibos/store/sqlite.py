"""SQLite in WAL mode: the one :class:`~agentlibos.store.base.Store` implementation today.

Concurrency model: the supervisor's broker loop is the only writer while it runs (it
holds ``run/supervisor.lock``); the CLI opens the database read-only for ``ps`` and
``audit``. Writes are grouped: the broker handles every message that is ready, then
commits once, then sends the replies, so no agent ever sees an answer whose state is not
on disk (group commit).

The schema is built by the numbered files in ``migrations/``, applied at open (see
:func:`agentlibos.store.migrations.migrate` and docs/store.md).

Long because every SQL statement of the runtime lives here (habit: nothing outside
``store/`` writes SQL), one section per table; it splits by section when the PostgreSQL
store arrives and the sections can be shared.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agentlibos.errors import Conflict, LibOSError, LimitExceeded, NoSuchProcess, NotFound
from agentlibos.kernel import budgets
from agentlibos.kernel.audit import (
    GENESIS,
    NO_HEAD,
    AuditRecord,
    VerifyResult,
    record_hash,
    verify_chain,
)
from agentlibos.kernel.budgets import TreeQuota, Usage
from agentlibos.kernel.journal import SETTLED, JournalEntry, JournalStatus
from agentlibos.kernel.process import ProcessRecord, State
from agentlibos.kernel.text import is_text, storable
from agentlibos.kernel.tokens import TokenUsage
from agentlibos.store.base import ImageRecord, ObjectQuota, ObjectRecord, Store
from agentlibos.store.durable import DurableTables
from agentlibos.store.migrations import check_version, migrate, read_version
from agentlibos.store.waiting import WaitingTables
from agentlibos.store.walcheckpoint import SAFETY_PAGES, WalCheckpointer

# The records and the protocol live in base.py; they are re-exported here only for
# callers that still import them from this module (import them from agentlibos.store).
__all__ = ["ImageRecord", "ObjectQuota", "ObjectRecord", "SQLiteStore", "Store"]

# The first schema version with the journal table. A read-only store on an older
# database (it never migrates) reads the journal as empty: see __init__.
_JOURNAL_VERSION: Final = 2

_WAIT_VERSION: Final = 3  # processes.wait and processes.evicted
_BUDGETS_VERSION: Final = 4  # objects.root_pid and tree_usage
_TOKENS_VERSION: Final = 6  # processes.tree_tokens_*
_DURABLE_VERSION: Final = 7  # processes.resumes, processes.attention, checkpoints
_JOURNAL_BYTES_VERSION: Final = 9  # processes.tree_journal_bytes
_BUDGET_COLS_TOKENS: Final = ("tree_tokens_limit, tree_tokens_used, tree_prompt_tokens, "
                      "tree_completion_tokens, tree_model_calls")
_PROC_COLS_V1: Final = (
    "pid, ppid, root_pid, host_pid, image, image_path, state, exit_reason, result, error, "
    "cwd, args, limits, layers, missing_layers, policy_id, created_at, started_at, "
    "ready_at, ended_at"
)


_NO_CUT = 1 << 62  # storable() for encoding only: never shorten what is stored


BUSY_TIMEOUT_S: Final = 5.0


def _enter_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, retried: while another connection is switching a
    new database to WAL, SQLite answers "database is locked" at once, without the busy
    handler (4 stores opening one new database together: about 1 open in 90 failed).
    The supervisor and a CLI command may both be the first to open a new home."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# An audit record's detail, canonical (sorted keys) so its hash is stable; built once
# (json.dumps with options builds an encoder per call, and this runs per audited call).
_DETAIL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


class SQLiteStore(WaitingTables, DurableTables):
    """SQLite in WAL mode. One instance per thread; the broker loop owns the writer."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise NotFound(f"no state database at {self.path}: nothing has run yet")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                       check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
        try:
            # busy_timeout: the CLI reading while the broker commits must wait, not fail.
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Checked before anything writes, WAL mode included: a database from a newer
            # agentlibos is left exactly as it was.
            self.schema_version = check_version(read_version(self._db, self.path), self.path)
            self._proc_cols = _PROC_COLS_V1 + ", wait, evicted"
            if readonly:
                # A read-only open never migrates (it cannot write). It reads what this
                # version's tables allow; what an older schema lacks reads as empty.
                if self.schema_version == 0:
                    raise NotFound(f"{self.path} holds no agentlibos state yet")
            else:
                _enter_wal(self._db)
                # NORMAL in WAL mode: a power loss may lose the last commits but never
                # corrupts; a kill -9 of the supervisor loses nothing that was committed.
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.execute("PRAGMA foreign_keys = ON")
                # Checkpoints run on their own thread (walcheckpoint.py), not inside the
                # commit that precedes a reply; this bound is the writer's fallback.
                self._db.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_PAGES}")
                self.schema_version = migrate(self._db, self.path)
            if self.schema_version < _WAIT_VERSION:  # an older database, read only
                self._proc_cols = _PROC_COLS_V1 + ", NULL, 0"
            self._proc_cols += (", " + _BUDGET_COLS_TOKENS if self.schema_version >= _TOKENS_VERSION
                                else ", NULL, 0, 0, 0, 0")
            self._proc_cols += (", resumes, attention" if self.schema_version >= _DURABLE_VERSION
                                else ", 0, NULL")
            self._proc_cols += (", tree_object_bytes, tree_objects, tree_write_bytes"
                                if self.schema_version >= _BUDGETS_VERSION else ", 0, 0, 0")
            self._proc_cols += (", tree_journal_bytes"
                                if self.schema_version >= _JOURNAL_BYTES_VERSION else ", 0")
        except BaseException:
            self._db.close()
            raise
        self._depth = 0  # nesting of batch()/transaction() contexts
        self._begun = False  # BEGIN IMMEDIATE issued, COMMIT pending
        self._changes_at = 0  # the connection's total_changes when the batch began
        self._defer = False  # defer_commit(): the batch ends without its commit
        self._sp_wanted = False  # inside savepoint(): open one at the first write
        self._sp_active = False
        self._audit_head: tuple[int, str] | None = None
        self._head_dirty = False
        # Audit records appended inside a batch, written at its commit (or before
        # anything reads the audit table): (ts, pid, call, request, verdict, detail).
        # A turn of reads then runs no SQL write, and takes no lock, before its replies
        # leave (docs/store.md, "When a reply leaves").
        self._audit_buf: list[tuple[float, int | None, str, str, str, str]] = []
        # Journal entries a deferred turn left with their owner (StoreJournal), taken
        # and written before anything reads the journal: set by the supervisor.
        self.pending_journal: Callable[[], list[JournalEntry]] | None = None
        self.on_journal_conflict: Callable[[list[tuple[JournalEntry, str]]], None] | None = None
        self._sp_journal: list[JournalEntry] = []  # written inside the open savepoint
        self._sp_mark = 0  # the buffer's length when the current savepoint began
        self.checkpointer = None if readonly else WalCheckpointer(self.path)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self._db.close()

    # ------------------------------------------------------------------ transactions
    #
    # batch() groups everything one turn of the broker loop writes into one commit; it
    # starts the SQLite transaction lazily, at the first write, so a turn that only
    # reads costs no lock. transaction() is a write transaction that joins an open
    # batch; savepoint() scopes one syscall so a handler *bug* can be rolled back
    # without losing the rest of the batch (typed errors keep their writes: the audit
    # record of a refusal must survive the refusal).

    def _begin(self) -> None:
        if not self._begun:
            # IMMEDIATE takes the write lock now, so reads inside the transaction see
            # the state they will write over (the audit head above all).
            self._db.execute("BEGIN IMMEDIATE")
            self._begun = True

    def _ensure_begun(self) -> None:
        self._begin()
        if self._sp_wanted and not self._sp_active:
            self._db.execute("SAVEPOINT handler")
            self._sp_active = True

    def _commit(self) -> None:
        if self._defer:
            # defer_commit(): the audit records stay buffered for the next batch that
            # ends, or commit_now(). A transaction begun for reads (it changed nothing)
            # ends now: a deferral never holds the write lock another process may want.
            self._defer = False
            if self._begun:
                self._db.execute("COMMIT")
                self._begun = False
            return
        if self._audit_buf:
            self._begin()  # (never a savepoint here: the batch is ending)
            self._flush_audit()
        if not self._begun:
            return
        if self._head_dirty:
            # _head() re-reads the table when a rolled-back savepoint dropped the cache;
            # skipping the write then would leave a stale head (a false tamper alarm).
            seq, h = self._head()
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_head', ?)",
                (f"{seq}:{h}",),
            )
        self._db.execute("COMMIT")
        self._begun = False
        self._head_dirty = False
        if self.checkpointer is not None:
            self.checkpointer.poke()
        # Another writer (the CLI's `image add`) may append after us: re-read the head
        # inside the next write transaction rather than trusting this cache.
        self._audit_head = None

    def _rollback(self) -> None:
        # (Deferred turns' records go too: only a BaseException escaping a turn gets
        # here -- the loop catches the rest -- and the supervisor is going down with it.)
        self._defer = False
        self._audit_buf.clear()
        if self._begun:
            self._db.execute("ROLLBACK")
        self._begun = False
        self._head_dirty = False
        self._audit_head = None

    @contextmanager
    def _scope(self, *, begin: bool) -> Iterator[None]:
        if self._depth == 0:
            self._changes_at = self._db.total_changes
        if begin:
            self._ensure_begun()
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._rollback()
            raise
        self._depth -= 1
        if self._depth == 0:
            self._commit()

    def commit_now(self) -> None:
        """Commit what the open batch wrote so far, now; the batch goes on (its next
        write begins a new transaction). For an intent, which must be on disk before the
        effect it announces acts. Never inside a handler's savepoint."""
        if self._sp_active or self._sp_wanted:
            raise RuntimeError("commit_now() inside a savepoint")
        self._commit()

    def wrote(self) -> bool:
        """Whether the open batch has changed a row so far."""
        return self._db.total_changes != self._changes_at

    def defer_commit(self) -> None:
        """End the open batch, which changed no row (:meth:`wrote`), leaving its audit
        records buffered until the next batch that ends normally, or :meth:`commit_now`.
        Only for records that may be lost with the supervisor -- a turn of reads
        (docs/store.md, "Deferred commits")."""
        self._defer = True

    def uncommitted(self) -> bool:
        """Outside a batch: whether deferred batches left audit records to commit."""
        return self._depth == 0 and bool(self._audit_buf)

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction; joins an open batch or transaction."""
        return self._scope(begin=True)

    def batch(self) -> AbstractContextManager[None]:
        """Group every write until the end of the block into one commit (lazily begun)."""
        return self._scope(begin=False)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Scope one syscall: roll its writes back if it fails with a non-typed error."""
        if self._depth == 0:
            # Outside a batch, open one so that a typed error still commits the writes
            # made before it (the refusal's audit record); only a bug rolls back.
            refusal: LibOSError | None = None
            with self.batch():
                try:
                    with self.savepoint():
                        yield
                except LibOSError as e:
                    refusal = e
            if refusal is not None:
                raise refusal
            return
        self._sp_wanted = True
        self._sp_mark = len(self._audit_buf)
        try:
            yield
        except LibOSError:
            raise
        except BaseException:
            del self._audit_buf[self._sp_mark:]  # the handler's own records go with it
            if self._sp_active:
                self._db.execute("ROLLBACK TO handler")
                self._audit_head = None  # reloaded from the table at the next append
                # Earlier turns' entries written while the handler read the journal are
                # not the handler's: they are written again.
                self._insert_journal(self._sp_journal)
            raise
        finally:
            if self._sp_active:
                self._db.execute("RELEASE handler")
            self._sp_wanted = self._sp_active = False
            self._sp_journal = []

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        # Any text may come from an agent (an error message, a path, a tool's output):
        # a lone surrogate would make SQLite's UTF-8 encoding raise in the one loop
        # every agent shares. Stored safely here, in the one place every write passes.
        safe = tuple(storable(p, _NO_CUT) if isinstance(p, str) and not is_text(p) else p
                     for p in params)
        with self.transaction():
            return self._db.execute(sql, safe)

    # --------------------------------------------------------------------- policies

    def policy_id(self, source: str, text: str) -> int:
        row = self._db.execute(
            "SELECT id FROM policies WHERE source = ? AND text = ?", (source, text)
        ).fetchone()
        if row:
            return int(row[0])
        cur = self._write("INSERT INTO policies (source, text) VALUES (?, ?)", (source, text))
        return int(cur.lastrowid or 0)

    # -------------------------------------------------------------------- processes

    def create_process(self, rec: ProcessRecord) -> ProcessRecord:
        """Insert ``rec`` (its pid is ignored) and return it with the allocated pid."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO processes (ppid, root_pid, image, image_path, state, cwd, args,"
                " limits, policy_id, created_at) VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.ppid,
                    rec.image,
                    rec.image_path,
                    rec.state,
                    rec.cwd,
                    json.dumps(rec.args),
                    json.dumps(rec.limits),
                    rec.policy_id,
                    rec.created_at or time.time(),
                ),
            )
            pid = int(cur.lastrowid or 0)
            root = rec.root_pid if rec.ppid is not None else pid
            self._db.execute("UPDATE processes SET root_pid = ? WHERE pid = ?", (root, pid))
        return self.get_process(pid)

    _JSON_FIELDS: Final = frozenset({"result", "args", "limits", "layers", "missing_layers",
                                     "approved", "attention"})
    _UPDATABLE: Final = frozenset(
        {
            "host_pid", "state", "exit_reason", "result", "error", "cwd", "layers",
            "missing_layers", "started_at", "ready_at", "ended_at", "limits", "wait",
            "evicted", "ask_mode", "approved", "resumes", "attention", "wall_used",
            "stretch_at",
        }
    )

    def update_process(self, pid: int, **fields: Any) -> None:
        if not fields:
            return
        bad = set(fields) - self._UPDATABLE
        if bad:
            raise ValueError(f"cannot update process fields {bad}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        values = tuple(
            json.dumps(v) if k in self._JSON_FIELDS else v for k, v in fields.items()
        )
        self._write(f"UPDATE processes SET {cols} WHERE pid = ?", (*values, pid))  # noqa: S608

    @staticmethod
    def _proc(row: tuple[Any, ...]) -> ProcessRecord:
        (pid, ppid, root_pid, host_pid, image, image_path, state, exit_reason, result,
         error, cwd, args, limits, layers, missing, policy_id, created_at, started_at,
         ready_at, ended_at, wait, evicted, t_limit, t_used, t_prompt, t_completion,
         t_calls, resumes, attention, *tree) = row
        tokens = None
        if pid == root_pid and (t_limit is not None or t_calls):
            tokens = TokenUsage(t_limit, t_used, t_prompt, t_completion, t_calls).to_json()
        usage = Usage(*(int(v) for v in tree)).to_json() if pid == root_pid else None
        return ProcessRecord(
            pid=pid, ppid=ppid, root_pid=root_pid, host_pid=host_pid, image=image,
            image_path=image_path, state=state, exit_reason=exit_reason,
            result=json.loads(result) if result is not None else None, error=error,
            cwd=cwd, args=json.loads(args), limits=json.loads(limits),
            layers=json.loads(layers), missing_layers=json.loads(missing),
            policy_id=policy_id, created_at=created_at, started_at=started_at,
            ready_at=ready_at, ended_at=ended_at, wait=wait, evicted=bool(evicted),
            tokens=tokens, usage=usage, resumes=int(resumes or 0),
            attention=json.loads(attention) if attention else None,
        )

    def get_process(self, pid: int) -> ProcessRecord:
        row = self._db.execute(
            f"SELECT {self._proc_cols} FROM processes WHERE pid = ?", (pid,)  # noqa: S608
        ).fetchone()
        if not row:
            raise NoSuchProcess(f"no process with pid {pid}")
        return self._proc(row)

    def list_processes(self, *, live_only: bool = False) -> list[ProcessRecord]:
        where = (" WHERE state IN ('created', 'running', 'waiting', 'attention')"
                 if live_only else "")
        rows = self._db.execute(
            f"SELECT {self._proc_cols} FROM processes{where} ORDER BY pid"  # noqa: S608
        ).fetchall()
        return [self._proc(r) for r in rows]

    def children(self, pid: int) -> list[ProcessRecord]:
        rows = self._db.execute(
            f"SELECT {self._proc_cols} FROM processes WHERE ppid = ? ORDER BY pid", (pid,)  # noqa: S608
        ).fetchall()
        return [self._proc(r) for r in rows]

    def mark_orphans(self, reason: str, now: float) -> list[int]:
        """Processes left live by a supervisor that died: mark them failed."""
        rows = self._db.execute(
            "SELECT pid FROM processes WHERE state IN ('created', 'running', 'waiting')"
        ).fetchall()
        pids = [int(r[0]) for r in rows]
        state: State = "failed"
        for pid in pids:
            self.update_process(pid, state=state, exit_reason=reason, ended_at=now,
                                error="the supervisor stopped while this process was live")
        return pids

    # ------------------------------------------------------------------ capabilities

    def set_caps(self, pid: int, caps: list[str]) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM capabilities WHERE pid = ?", (pid,))
            self._db.executemany(
                "INSERT OR IGNORE INTO capabilities (pid, cap) VALUES (?, ?)",
                [(pid, c) for c in caps],
            )

    def get_caps(self, pid: int) -> list[str]:
        rows = self._db.execute(
            "SELECT cap FROM capabilities WHERE pid = ? ORDER BY rowid", (pid,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    # ------------------------------------------------------------------ object memory

    @staticmethod
    def _obj(row: tuple[Any, ...]) -> ObjectRecord:
        ns, name, type_, version, value, size, created, updated, by = row
        return ObjectRecord(ns, name, type_, version, json.loads(value), size, created,
                            updated, by)

    _OBJ_COLS: Final = "ns, name, type, version, value, size, created_at, updated_at, updated_by"

    def get_object(self, ns: str, name: str) -> ObjectRecord:
        row = self._db.execute(
            f"SELECT {self._OBJ_COLS} FROM objects WHERE ns = ? AND name = ?",  # noqa: S608
            (ns, name),
        ).fetchone()
        if not row:
            raise NotFound(f"no object {name!r} in namespace {ns!r}")
        return self._obj(row)

    def put_object(
        self,
        ns: str,
        name: str,
        type_: str,
        value_json: str,
        pid: int | None,
        expect_version: int | None,
        quota: ObjectQuota,
        *,
        root_pid: int | None = None,
        tree_quota: TreeQuota | None = None,
    ) -> ObjectRecord:
        """Create or replace an object; charge ``root_pid``'s tree in the same transaction.

        Every check (version, type, the namespace's quota, the tree's) comes before the
        first write, so a refused put changes nothing.
        """
        now = time.time()
        size = len(value_json.encode("utf-8"))
        with self.transaction():
            row = self._db.execute(
                "SELECT type, version, size, root_pid FROM objects WHERE ns = ? AND name = ?",
                (ns, name),
            ).fetchone()
            current = int(row[1]) if row else 0
            if expect_version is not None and expect_version != current:
                raise Conflict(
                    f"object {name!r} in {ns!r} is at version {current}, "
                    f"not the expected {expect_version}",
                    current_version=current,
                )
            if row and row[0] != type_:
                raise Conflict(
                    f"object {name!r} in {ns!r} has type {row[0]!r}; cannot put a {type_!r} "
                    "(delete it first to change its type)",
                    current_type=row[0],
                )
            count, total = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE ns = ?", (ns,)
            ).fetchone()
            old_size = int(row[2]) if row else 0
            if not row and count >= quota.max_objects_per_ns:
                raise LimitExceeded(
                    f"namespace {ns!r} already holds {count} objects "
                    f"(limit {quota.max_objects_per_ns})"
                )
            if total - old_size + size > quota.max_bytes_per_ns:
                raise LimitExceeded(
                    f"namespace {ns!r} would hold {total - old_size + size} bytes "
                    f"(limit {quota.max_bytes_per_ns})"
                )
            charges: dict[int, Usage] = {}
            if root_pid is not None:
                charges = budgets.put_charges(root_pid, size, old_size if row else None,
                                              row[3] if row else None)
                if tree_quota is not None:
                    over = budgets.overrun(root_pid, tree_quota, self.tree_usage(root_pid),
                                           charges[root_pid])
                    if over is not None:
                        raise over.error()
            elif row and row[3] is not None:
                # Written over by nobody's tree (the operator): its old owner is refunded.
                charges = budgets.delete_charges(old_size, int(row[3]))
            # Charged before the object is written: a refusal must leave nothing behind
            # (a typed error keeps the writes made before it; see savepoint()).
            for tree, charge in charges.items():
                self.charge_tree(tree, charge)
            if row:
                self._db.execute(
                    "UPDATE objects SET version = ?, value = ?, size = ?, updated_at = ?,"
                    " updated_by = ?, root_pid = ? WHERE ns = ? AND name = ?",
                    (current + 1, value_json, size, now, pid, root_pid, ns, name),
                )
            else:
                self._db.execute(
                    "INSERT INTO objects (ns, name, type, version, value, size, created_at,"
                    " updated_at, updated_by, root_pid) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                    (ns, name, type_, value_json, size, now, now, pid, root_pid),
                )
        return self.get_object(ns, name)

    def list_objects(self, ns: str, prefix: str, limit: int) -> list[ObjectRecord]:
        # GLOB-free prefix match: escape nothing, compare the prefix substring.
        rows = self._db.execute(
            f"SELECT {self._OBJ_COLS} FROM objects WHERE ns = ? "  # noqa: S608
            "AND substr(name, 1, ?) = ? ORDER BY name LIMIT ?",
            (ns, len(prefix), prefix, limit),
        ).fetchall()
        return [self._obj(r) for r in rows]

    def delete_object(self, ns: str, name: str, expect_version: int | None) -> None:
        """Delete an object; the tree it was charged to gets its bytes and count back."""
        with self.transaction():
            row = self._db.execute(
                "SELECT version, size, root_pid FROM objects WHERE ns = ? AND name = ?",
                (ns, name),
            ).fetchone()
            if not row:
                raise NotFound(f"no object {name!r} in namespace {ns!r}")
            if expect_version is not None and int(row[0]) != expect_version:
                raise Conflict(
                    f"object {name!r} in {ns!r} is at version {row[0]}, "
                    f"not the expected {expect_version}",
                    current_version=int(row[0]),
                )
            self._db.execute("DELETE FROM objects WHERE ns = ? AND name = ?", (ns, name))
            owner = None if row[2] is None else int(row[2])
            for tree, charge in budgets.delete_charges(int(row[1]), owner).items():
                self.charge_tree(tree, charge)

    # ----------------------------------------------------------------- tree budgets
    #
    # Kept on the root's process row (kernel/budgets.py has the arithmetic). Object puts
    # and deletes charge here inside their own transaction; fs writes call charge_tree
    # before they act, and refund when the effect fails.

    def tree_usage(self, root_pid: int) -> Usage:
        """What the tree rooted at ``root_pid`` holds and has spent (zeros if unknown)."""
        if self.schema_version < _BUDGETS_VERSION:
            return Usage()  # read-only on an older database: nothing was ever charged
        journal = (", tree_journal_bytes" if self.schema_version >= _JOURNAL_BYTES_VERSION
                   else "")
        row = self._db.execute(
            f"SELECT tree_object_bytes, tree_objects, tree_write_bytes{journal}"  # noqa: S608
            " FROM processes WHERE pid = ? AND root_pid = pid", (root_pid,),
        ).fetchone()
        return Usage(*(int(v) for v in row)) if row else Usage()

    def charge_tree(
        self, root_pid: int, charge: Usage, quota: TreeQuota | None = None
    ) -> Usage:
        """Add ``charge`` to the tree's usage and return the new usage.

        With ``quota``, a charge that would break it raises LimitExceeded and changes
        nothing (see :func:`agentlibos.kernel.budgets.overrun`). A negative charge is a
        refund; usage never goes below zero. Charging a tree that has no root record
        is NoSuchProcess (a refund to one is dropped: nobody is left to hold it).
        """
        with self.transaction():
            usage = self.tree_usage(root_pid)
            if quota is not None:
                over = budgets.overrun(root_pid, quota, usage, charge)
                if over is not None:
                    raise over.error()
            if not charge:
                return usage
            after = budgets.apply(usage, charge)
            cur = self._db.execute(
                "UPDATE processes SET tree_object_bytes = ?, tree_objects = ?,"
                " tree_write_bytes = ?, tree_journal_bytes = ? WHERE pid = ? AND root_pid = pid",
                (after.object_bytes, after.objects, after.write_bytes, after.journal_bytes,
                 root_pid),
            )
            if cur.rowcount == 0 and charge.grows:
                raise NoSuchProcess(f"no process tree with root pid {root_pid} to charge")
        return after

    # ------------------------------------------------------------------ token budgets
    # On the root's row too (kernel/tokens.py has the arithmetic). Only settled usage is
    # stored; what calls in flight reserve is the model service's, in memory.

    def tokens_usage(self, root_pid: int) -> TokenUsage:
        """The tree's token limit and settled usage (zeros and no limit if unknown)."""
        if self.schema_version < _TOKENS_VERSION:
            return TokenUsage()
        row = self._db.execute(
            f"SELECT {_BUDGET_COLS_TOKENS} FROM processes WHERE pid = ? AND root_pid = pid",  # noqa: S608
            (root_pid,),
        ).fetchone()
        return TokenUsage(*row) if row else TokenUsage()

    def tokens_set_limit(self, root_pid: int, limit: int | None) -> None:
        """Set (or clear) the tree's token budget."""
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"a token limit is a whole number >= 0, not {limit!r}")
        cur = self._write("UPDATE processes SET tree_tokens_limit = ?"
                          " WHERE pid = ? AND root_pid = pid", (limit, root_pid))
        if cur.rowcount == 0:
            raise NoSuchProcess(f"no process tree with root pid {root_pid}")

    def tokens_settle(self, root_pid: int, prompt: int, completion: int) -> TokenUsage:
        """Add one finished model call's usage to the tree; the new usage."""
        self._write(
            "UPDATE processes SET tree_tokens_used = tree_tokens_used + ?,"
            " tree_prompt_tokens = tree_prompt_tokens + ?,"
            " tree_completion_tokens = tree_completion_tokens + ?,"
            " tree_model_calls = tree_model_calls + 1 WHERE pid = ? AND root_pid = pid",
            (prompt + completion, prompt, completion, root_pid))
        return self.tokens_usage(root_pid)

    # ------------------------------------------------------------------------ images

    def put_image(self, rec: ImageRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO images (name, version, path, description, registered_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (rec.name, rec.version, rec.path, rec.description, rec.registered_at),
        )

    def get_image(self, name: str) -> ImageRecord | None:
        row = self._db.execute(
            "SELECT name, version, path, description, registered_at FROM images WHERE name = ?",
            (name,),
        ).fetchone()
        return ImageRecord(*row) if row else None

    def list_images(self) -> list[ImageRecord]:
        rows = self._db.execute(
            "SELECT name, version, path, description, registered_at FROM images ORDER BY name"
        ).fetchall()
        return [ImageRecord(*r) for r in rows]

    def delete_image(self, name: str) -> ImageRecord | None:
        with self.transaction():
            rec = self.get_image(name)
            self._write("DELETE FROM images WHERE name = ?", (name,))
        return rec

    # ----------------------------------------------------------------------- journal
    #
    # Written through transaction() like the audit, so a syscall's journal entry and its
    # audit record commit in the same batch and roll back with the same savepoint. The
    # store enforces one entry per (pid, seq); the broker owns the numbering.

    _JOURNAL_COLS: Final = "pid, seq, call, digest, status, result"

    def journal_append_many(self, entries: list[JournalEntry]) -> None:
        """Record a turn's syscalls in one statement (the broker batches them: one insert
        per call was most of what journaling cost). A duplicate seq is a Conflict."""
        if entries:
            with self.transaction():
                self._insert_journal(entries)

    _INSERT_JOURNAL: Final = (
        "INSERT INTO journal (pid, seq, call, digest, status, result, created_at,"
        " settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

    def _insert_journal(self, entries: list[JournalEntry]) -> None:
        if not entries:
            return
        now = time.time()
        rows = [(e.pid, e.seq, e.call, e.digest, e.status, e.result, now,
                 None if e.status == "intent" else now) for e in entries]
        # A savepoint: executemany runs one statement per row, so a duplicate leaves the
        # rows before it written; the batch is undone and written again row by row.
        self._db.execute("SAVEPOINT journal_rows")
        try:
            self._db.executemany(self._INSERT_JOURNAL, rows)
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK TO journal_rows")
            self._insert_journal_apart(entries, rows)
        finally:
            self._db.execute("RELEASE journal_rows")

    def _insert_journal_apart(self, entries: list[JournalEntry],
                              rows: list[tuple[Any, ...]]) -> None:
        """Each entry alone: one whose (pid, seq) is taken is a Conflict naming it, or,
        with ``on_journal_conflict`` set (a supervisor), left out and reported there,
        so that one process's broken journal does not stop every other's turn."""
        conflicts: list[tuple[JournalEntry, str]] = []
        for e, row in zip(entries, rows, strict=True):
            try:
                self._db.execute(self._INSERT_JOURNAL, row)
            except sqlite3.IntegrityError as err:
                held = self._db.execute("SELECT call FROM journal WHERE pid = ? AND seq = ?",
                                        (e.pid, e.seq)).fetchone()
                if held is None:
                    raise
                if self.on_journal_conflict is None:
                    raise Conflict(
                        f"process {e.pid} already has journal entry {e.seq} ({held[0]}); "
                        f"cannot record {e.call} there", pid=e.pid, seq=e.seq) from err
                conflicts.append((e, str(held[0])))
        if conflicts:
            assert self.on_journal_conflict is not None
            self.on_journal_conflict(conflicts)

    def _journal_visible(self) -> None:
        """Before reading the journal: write the entries deferred turns left.

        Into the batch's transaction, ahead of any savepoint a handler has yet to open
        (they are not the handler's writes); if one is open, they are written inside it
        and again should it roll back."""
        entries = self.pending_journal() if self.pending_journal is not None else []
        if not entries:
            return
        if self._depth == 0:
            with self.transaction():
                self._insert_journal(entries)
            return
        self._begin()
        self._insert_journal(entries)
        if self._sp_active:
            self._sp_journal += entries

    def journal_append(self, entry: JournalEntry) -> None:
        """Record one syscall of ``entry.pid``; a second entry at the same seq is a Conflict
        (or, with ``on_journal_conflict`` set, reported there)."""
        with self.transaction():
            self._insert_journal([entry])

    def journal_settle(self, pid: int, seq: int, status: JournalStatus, result: str) -> None:
        """Turn the intent at ``(pid, seq)`` into ``ok`` or ``error`` with its result."""
        if status not in SETTLED:
            raise ValueError(f"an intent settles as 'ok' or 'error', not {status!r}")
        with self.transaction():
            row = self._db.execute(
                "SELECT status FROM journal WHERE pid = ? AND seq = ?", (pid, seq)
            ).fetchone()
            if row is None:
                raise NotFound(f"process {pid} has no journal entry {seq}")
            if row[0] != "intent":
                raise Conflict(
                    f"journal entry {seq} of process {pid} is already settled ({row[0]})",
                    status=row[0],
                )
            self._db.execute(
                "UPDATE journal SET status = ?, result = ?, settled_at = ?"
                " WHERE pid = ? AND seq = ?",
                (status, result, time.time(), pid, seq),
            )

    def journal_entries(
        self, pid: int, *, after_seq: int = 0, limit: int = 1000
    ) -> list[JournalEntry]:
        """``pid``'s entries with seq > ``after_seq``, in order, at most ``limit``."""
        self._journal_visible()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        if self.schema_version < _JOURNAL_VERSION:
            return []  # read-only on an older database: it has no journal
        rows = self._db.execute(
            f"SELECT {self._JOURNAL_COLS} FROM journal WHERE pid = ? AND seq > ?"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (pid, after_seq, limit),
        ).fetchall()
        return [JournalEntry(*r) for r in rows]

    def journal_last_seq(self, pid: int) -> int:
        """The highest journaled seq of ``pid``; 0 if it has none."""
        self._journal_visible()
        if self.schema_version < _JOURNAL_VERSION:
            return 0
        row = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE pid = ?", (pid,)
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------------- audit

    def audit_head_seq(self) -> int:
        """The last audit record's sequence number (0 for an empty chain)."""
        return self._head()[0] + len(self._audit_buf)

    def _head(self) -> tuple[int, str]:
        if self._audit_head is None:
            row = self._db.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._audit_head = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        return self._audit_head

    def append_audit(
        self, pid: int | None, call: str, request: str, verdict: str, detail: dict[str, Any]
    ) -> None:
        """Append one record to the chain.

        Inside a batch the record joins the batch's buffer and is chained, hashed and
        written at the batch's commit, under the write lock (or earlier, when something
        reads the audit table). Outside one it is written and committed now.
        """
        detail_json = _DETAIL_JSON.encode(detail)
        self._audit_buf.append((time.time(), pid, call, request, verdict, detail_json))
        if self._depth == 0:
            with self.transaction():
                pass  # the commit writes the buffer

    def _flush_audit(self) -> None:
        """Write the buffered records, chained onto the head as it is now (inside the
        write transaction: no other writer can append in between)."""
        buf, self._audit_buf = self._audit_buf, []
        self._sp_mark = 0
        self._audit_head = None  # re-read under the lock: another writer may have appended
        last_seq, last_hash = self._head()
        rows = []
        for ts, pid, call, request, verdict, detail_json in buf:
            last_seq += 1
            h = record_hash(last_seq, ts, pid, call, request, verdict, detail_json, last_hash)
            rows.append((last_seq, ts, pid, call, request, verdict, detail_json, last_hash, h))
            last_hash = h
        self._db.executemany(
            "INSERT INTO audit (seq, ts, pid, call, request, verdict, detail, prev, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        # The head row in meta is written once, at commit (see _commit).
        self._audit_head = (last_seq, last_hash)
        self._head_dirty = True

    def _audit_visible(self) -> None:
        """Before reading the audit table: write what this batch buffered."""
        if self._audit_buf:
            with self.transaction():
                self._flush_audit()

    def audit_records(
        self, *, pid: int | None = None, since_seq: int = 0, limit: int | None = None
    ) -> list[AuditRecord]:
        self._audit_visible()
        sql = "SELECT seq, ts, pid, call, request, verdict, detail, prev, hash FROM audit"
        sql += " WHERE seq > ?"
        params: list[Any] = [since_seq]
        if pid is not None:
            sql += " AND pid = ?"
            params.append(pid)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_audit_record(*row) for row in self._db.execute(sql, params)]

    def verify_audit(self) -> VerifyResult:
        self._audit_visible()
        row = self._db.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
        head: tuple[int, str] | None = None
        unreadable = None
        if row:
            seq_s, _, h = str(row[0]).partition(":")
            try:
                head = (int(seq_s), h)
            except ValueError:
                unreadable = str(row[0])
        # Ordered by rowid (= seq, an INTEGER PRIMARY KEY): a record moved to another
        # seq shows up as a broken link.
        cur = self._db.execute(
            "SELECT seq, ts, pid, call, request, verdict, detail, prev, hash FROM audit "
            "ORDER BY seq"
        )
        res = verify_chain(cur, head)
        if unreadable is None or (not res.ok and res.problem != NO_HEAD):
            return res
        return VerifyResult(False, res.count, res.count or None,
                            f"the chain's head ({unreadable[:40]!r}) is unreadable: it was "
                            "altered")


def _audit_record(seq: int, ts: Any, pid: Any, call: Any, request: Any, verdict: Any,
                  detail: Any, prev: Any, h: Any) -> AuditRecord:
    """A row as a record. A row edited behind the store's back (`audit --verify` says
    which) still lists: what does not parse is shown as found, under ``unreadable``."""
    bad: dict[str, Any] = {}
    try:
        value = json.loads(detail)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        bad["detail"], value = detail, {}
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        bad["ts"], ts = ts, 0.0
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        bad["pid"], pid = pid, None
    if bad:
        value = {**value, "unreadable": {k: v if isinstance(v, str | int | float) else repr(v)
                                         for k, v in bad.items()}}
    call, request, verdict, prev, h = (str(x) for x in (call, request, verdict, prev, h))
    return AuditRecord(seq, float(ts), pid, call, request, verdict, value, prev, h)


if TYPE_CHECKING:
    # mypy proves here that SQLiteStore provides everything callers type against.
    _satisfies_store: type[Store] = SQLiteStore
