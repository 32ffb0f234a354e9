"""Schema migrations and the version check (store/migrations/, docs/store.md).

Old and future databases are built the way those versions of agentlibos would have left
them: with a separate sqlite3 connection running their SQL, never through the store.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import tomllib
from contextlib import closing
from fnmatch import fnmatch
from pathlib import Path

import pytest

from agentlibos.errors import InternalError, NotFound, UnsupportedStore
from agentlibos.kernel.audit import GENESIS, record_hash
from agentlibos.kernel.journal import JournalEntry, args_digest
from agentlibos.store.migrations import latest_version, migrations, statements
from agentlibos.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parent.parent
V1_TABLES = {"meta", "policies", "processes", "capabilities", "objects", "images", "audit"}


def run_sql(db: Path, *scripts: str) -> None:
    with closing(sqlite3.connect(db)) as con:
        for script in scripts:
            con.executescript(script)
        con.commit()


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(sql).fetchall()


def version_of(db: Path) -> int:
    return int(str(query(db, "SELECT value FROM meta WHERE key = 'schema_version'")[0][0]))


def tables(db: Path) -> set[str]:
    return {str(r[0]) for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'"
                                         " AND name NOT LIKE 'sqlite_%'")}


def make_v1_db(db: Path) -> str:
    """A database as agentlibos 0.1.0 left it: one process and one audit record.

    Returns the audit record's hash.
    """
    ts = 1_700_000_000.25
    detail = json.dumps({"reason": "run"}, sort_keys=True, separators=(",", ":"))
    h = record_hash(1, ts, 1, "proc.run", "proc:spawn:hello", "info", detail, GENESIS)
    run_sql(db, migrations()[0].sql)
    with closing(sqlite3.connect(db)) as con:
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("schema_version", "1"), ("audit_head", f"1:{h}")])
        con.execute("INSERT INTO policies (source, text) VALUES ('builtin', 'allow = []')")
        con.execute(
            "INSERT INTO processes (ppid, root_pid, image, image_path, state, cwd, args,"
            " limits, policy_id, created_at) VALUES (NULL, 1, 'hello', '/img/hello',"
            " 'exited', '/w', ?, '{}', 1, 1700000000.0)",
            (json.dumps({"n": 3}),),
        )
        con.execute("INSERT INTO capabilities (pid, cap) VALUES (1, 'fs:read:/w/**')")
        con.execute(
            "INSERT INTO audit (seq, ts, pid, call, request, verdict, detail, prev, hash)"
            " VALUES (1, ?, 1, 'proc.run', 'proc:spawn:hello', 'info', ?, ?, ?)",
            (ts, detail, GENESIS, h),
        )
        con.commit()
    return h


def file_digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


# ====================================================================== the files


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    migs = migrations()
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    assert latest_version() == migs[-1].version >= 2
    assert migs[0].name == "0001_initial.sql"
    assert migs[1].name == "0002_journal.sql"


def test_every_migration_splits_into_complete_statements() -> None:
    for mig in migrations():
        stmts = list(statements(mig.sql))
        assert stmts, mig.name
        assert all(sqlite3.complete_statement(s) for s in stmts), mig.name


def test_a_migration_ending_in_an_unfinished_statement_is_refused() -> None:
    assert list(statements("CREATE TABLE a (x);\n-- a comment\n")) == ["CREATE TABLE a (x);"]
    with pytest.raises(InternalError, match="unfinished statement"):
        list(statements("CREATE TABLE a (x);\nCREATE TABLE b (y)\n"))


def test_the_wheel_ships_every_migration_file() -> None:
    # setuptools copies package data by these globs; a migration missing from the wheel
    # would leave installed databases at an older schema than the code expects.
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["agentlibos"]
    for mig in migrations():
        rel = f"store/migrations/{mig.name}"
        assert any(fnmatch(rel, g) for g in globs), f"{rel} is not in package-data"


# ================================================================ fresh and old databases


def test_a_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with closing(SQLiteStore(db)) as s:
        assert s.schema_version == latest_version()
    assert version_of(db) == latest_version()
    assert tables(db) == V1_TABLES | {"journal", "asks", "events", "checkpoints"}
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("round_", range(50))
def test_stores_opening_one_new_database_at_once_migrate_it_once(
        tmp_path: Path, round_: int) -> None:
    # The supervisor and a CLI command may both be the first to open a new home. Many
    # rounds: the switch to WAL failed about once in 90 opens before it was retried.
    db = tmp_path / "state.db"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            SQLiteStore(db).close()
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert version_of(db) == latest_version()
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert tables(db) == V1_TABLES | {"journal", "asks", "events", "checkpoints"}


def test_reopening_a_current_database_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with closing(SQLiteStore(db)) as s:
        s.append_audit(None, "supervisor.start", "-", "info", {})
    schema = query(db, "SELECT sql FROM sqlite_master ORDER BY name")
    with closing(SQLiteStore(db)) as s:
        assert s.verify_audit().count == 1
    assert query(db, "SELECT sql FROM sqlite_master ORDER BY name") == schema
    assert version_of(db) == latest_version()


def test_a_version_1_database_is_migrated_and_keeps_its_data_and_chain(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    h = make_v1_db(db)
    assert "journal" not in tables(db)
    with closing(SQLiteStore(db)) as s:
        assert s.schema_version == latest_version()
        p = s.get_process(1)
        assert (p.image, p.state, p.args, p.root_pid) == ("hello", "exited", {"n": 3}, 1)
        assert s.get_caps(1) == ["fs:read:/w/**"]
        assert s.process_resume_info(1)["wall_used"] == 0.0  # 0008: no stretch counted
        (rec,) = s.audit_records()
        assert (rec.seq, rec.hash, rec.call) == (1, h, "proc.run")
        res = s.verify_audit()
        assert (res.ok, res.count) == (True, 1), res.problem
        # The new table works, and the chain continues from the old head.
        assert s.journal_last_seq(1) == 0
        s.journal_append(JournalEntry(1, 1, "fs.read", args_digest("fs.read", {}), "ok", "1"))
        s.append_audit(1, "fs.read", "fs:read:/w/a", "allow", {})
        assert s.audit_head_seq() == 2
        assert s.verify_audit().ok
    assert version_of(db) == latest_version()
    assert "journal" in tables(db)


def test_a_migration_that_fails_leaves_the_database_at_its_version(tmp_path: Path) -> None:
    # A v1 database where someone already made a table named journal: 0002 cannot
    # create it. Nothing of 0002 may stay behind, and the version must still say 1.
    db = tmp_path / "state.db"
    make_v1_db(db)
    run_sql(db, "CREATE TABLE journal (x TEXT);")
    with pytest.raises(InternalError, match=r"0002_journal\.sql failed") as e:
        SQLiteStore(db)
    assert "already exists" in str(e.value)
    assert e.value.details == {"migration": "0002_journal.sql", "db_version": 1}
    assert version_of(db) == 1
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'journal_intents'") == []
    assert query(db, "SELECT COUNT(*) FROM processes") == [(1,)]


def test_a_read_only_open_of_an_old_database_does_not_migrate_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    h = make_v1_db(db)
    before = file_digest(db)
    with closing(SQLiteStore(db, readonly=True)) as ro:
        assert ro.schema_version == 1
        assert ro.get_process(1).image == "hello"
        assert ro.audit_records()[0].hash == h
        assert ro.verify_audit().ok
        # It reads what it can: the journal a v1 database cannot have reads as empty.
        assert ro.journal_entries(1) == []
        assert ro.journal_last_seq(1) == 0
    assert file_digest(db) == before
    assert version_of(db) == 1


def test_a_read_only_open_of_an_empty_file_says_nothing_has_run(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch()
    with pytest.raises(NotFound, match="holds no agentlibos state yet"):
        SQLiteStore(db, readonly=True)


# ========================================================================= newer databases


def make_future_db(db: Path, version: int) -> None:
    """A database as a newer agentlibos would leave it: our tables, one more, its version."""
    run_sql(
        db,
        *(m.sql for m in migrations()),
        "CREATE TABLE from_the_future (x INTEGER);",
    )
    with closing(sqlite3.connect(db)) as con:
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(version),))
        con.commit()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_database_from_a_newer_agentlibos_refuses_to_open_and_is_left_unchanged(
    tmp_path: Path, readonly: bool
) -> None:
    db = tmp_path / "state.db"
    newer = latest_version() + 7
    make_future_db(db, newer)
    before = file_digest(db)
    with pytest.raises(UnsupportedStore) as e:
        SQLiteStore(db, readonly=readonly)
    msg = str(e.value)
    assert f"schema version {newer}" in msg
    assert f"up to {latest_version()}" in msg
    assert "upgrade agentlibos" in msg.lower()
    assert e.value.details == {"db_version": newer, "code_version": latest_version()}
    assert e.value.code == "ESTORE"
    assert file_digest(db) == before
    assert version_of(db) == newer
    # Not even switched to WAL: that would rewrite the header a newer reader relies on.
    assert query(db, "PRAGMA journal_mode") == [("delete",)]


def test_a_database_whose_version_is_not_a_number_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_sql(db, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "INSERT INTO meta VALUES ('schema_version', 'banana');")
    with pytest.raises(UnsupportedStore, match="not an agentlibos state database"):
        SQLiteStore(db)
