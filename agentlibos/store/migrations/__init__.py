"""The schema's history: numbered SQL files, applied in order at open (docs/store.md).

``NNNN_name.sql`` takes a database from version ``NNNN - 1`` to ``NNNN``. A file, once
released, is never edited: a change is a new file with the next number. The numbers must
run 1, 2, 3 ... with no gap or duplicate; :func:`migrations` checks it.

The SQL is SQLite's. The PostgreSQL store will keep its own numbered files beside these
with the same numbers, so one version means one schema on both.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from agentlibos.errors import InternalError, UnsupportedStore

__all__ = [
    "Migration",
    "check_version",
    "latest_version",
    "migrate",
    "migrations",
    "read_version",
    "statements",
]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name, for messages
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this code, in order."""
    found: list[Migration] = []
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise InternalError(f"migration file {entry.name!r} is not named NNNN_name.sql")
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise InternalError(f"migrations must be numbered 1, 2, 3 ... without gaps or "
                               f"duplicates; found {mig.name} where {expected:04d} belongs")
    if not found:
        raise InternalError("no migration files found: the package was installed without them")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code creates and understands."""
    return migrations()[-1].version


def statements(sql: str) -> Iterator[str]:
    """Split a migration into single statements, the way SQLite's own parser would.

    Executed one by one (not with ``executescript``, which commits whatever is open)
    so that a migration and its version bump share one transaction.
    """
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    rest = [ln for ln in buf.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if rest:
        raise InternalError(f"migration ends in an unfinished statement: {rest[0]!r}")


# ------------------------------------------------------------------ applying (SQLite)


def read_version(db: sqlite3.Connection, where: object) -> int:
    """The schema version recorded in ``meta`` (0: a new, empty database)."""
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        # Version 1 created its tables, then wrote this row: a crash in between leaves
        # tables without a version. 0001 is idempotent (CREATE ... IF NOT EXISTS).
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise UnsupportedStore(
            f"the database {where} records schema version {row[0]!r}, which no "
            "agentlibos writes: it is not an agentlibos state database"
        ) from None


def check_version(version: int, where: object) -> int:
    """``version``, unless it is newer than this code knows: then refuse, naming both."""
    known = latest_version()
    if version > known:
        raise UnsupportedStore(
            f"the database {where} is at schema version {version}, but this agentlibos "
            f"knows schema versions up to {known}: a newer agentlibos wrote it. Upgrade "
            "agentlibos to open it (the database was left unchanged).",
            db_version=version, code_version=known,
        )
    return version


def migrate(db: sqlite3.Connection, where: object) -> int:
    """Apply every migration above the database's version; returns the version reached.

    Each migration and its version bump are one transaction: a crash leaves the database
    at the version before or after, never between. The version is read again inside
    each transaction, so two processes opening one database at once (the CLI and the
    supervisor) apply each migration once. ``db`` must be in autocommit mode
    (``isolation_level=None``) with no transaction open.
    """
    version = check_version(read_version(db, where), where)
    for mig in migrations():
        if mig.version <= version:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            version = check_version(read_version(db, where), where)
            if version < mig.version:
                for stmt in statements(mig.sql):
                    db.execute(stmt)
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(mig.version),),
                )
                version = mig.version
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:  # some errors (disk full) already rolled it back
                db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise InternalError(
                    f"migration {mig.name} failed on {where}: {e}; the database was left "
                    f"at schema version {version}",
                    migration=mig.name, db_version=version,
                ) from e
            raise
    return version
