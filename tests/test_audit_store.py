"""The audit hash chain and the SQLite store (kernel/audit.py, store/sqlite.py).

Tampering is done the way an attacker with the file would do it: a separate sqlite3
connection that edits rows directly, never through the store's API.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agentlibos.errors import Conflict, LimitExceeded, NotFound, PermissionDenied
from agentlibos.kernel.audit import GENESIS, canonical_json, record_hash, verify_chain
from agentlibos.store.sqlite import ObjectQuota, SQLiteStore

QUOTA = ObjectQuota()


def append(store: SQLiteStore, n: int, *, pid: int | None = 1) -> list[int]:
    """Append ``n`` records; their seqs."""
    seqs = []
    for i in range(n):
        store.append_audit(pid, "fs.read", f"fs:read:/p/{i}", "allow", {"reason": f"r{i}"})
        seqs.append(store.audit_head_seq())
    return seqs


def tamper(db: Path, *statements: str) -> None:
    """Edit the database file behind the store's back."""
    with closing(sqlite3.connect(db)) as con:
        for sql in statements:
            con.execute(sql)
        con.commit()


def count(db: Path, sql: str) -> int:
    with closing(sqlite3.connect(db)) as con:
        return int(con.execute(sql).fetchone()[0])


def reopened(db: Path) -> SQLiteStore:
    return SQLiteStore(db)


def put(store: SQLiteStore, name: str, value: Any, *, ns: str = "self", type_: str = "T",
        expect: int | None = None, quota: ObjectQuota = QUOTA, pid: int | None = 1) -> int:
    return store.put_object(ns, name, type_, json.dumps(value), pid, expect, quota).version


# ============================================================ the chain, pure functions


def test_a_record_hash_depends_on_every_field() -> None:
    base: tuple[Any, ...] = (1, 1.5, 7, "fs.read", "fs:read:/a", "allow", "{}", GENESIS)
    h = record_hash(*base)
    assert len(h) == 64
    assert record_hash(*base) == h
    for i, changed in enumerate([2, 1.25, 8, "fs.write", "fs:read:/b", "deny", '{"x":1}',
                                 "1" * 64]):
        fields = list(base)
        fields[i] = changed
        assert record_hash(*fields) != h, f"field {i} is not covered by the hash"
    assert record_hash(1, 1.5, None, "fs.read", "fs:read:/a", "allow", "{}", GENESIS) != h


def test_canonical_json_sorts_keys_and_has_no_spaces() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


def test_an_empty_chain_without_a_head_verifies() -> None:
    res = verify_chain([], None)
    assert (res.ok, res.count, res.first_bad_seq, res.problem) == (True, 0, None, None)


def test_a_chain_with_records_but_no_head_does_not_verify() -> None:
    h = record_hash(1, 1.0, None, "c", "r", "info", "{}", GENESIS)
    res = verify_chain([(1, 1.0, None, "c", "r", "info", "{}", GENESIS, h)], None)
    assert not res.ok
    assert res.problem == "the chain has records but no head"
    assert verify_chain([(1, 1.0, None, "c", "r", "info", "{}", GENESIS, h)], (1, h)).ok


# ======================================================================= store: audit


def test_appended_records_are_numbered_and_verify(store: SQLiteStore, db: Path) -> None:
    assert append(store, 5) == [1, 2, 3, 4, 5]
    res = store.verify_audit()
    assert (res.ok, res.count, res.first_bad_seq) == (True, 5, None)
    recs = store.audit_records()
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(recs))
    with closing(sqlite3.connect(db)) as con:
        head = con.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()[0]
    assert head == f"5:{recs[-1].hash}"


def test_an_audit_record_keeps_its_fields(store: SQLiteStore) -> None:
    before = time.time()
    store.append_audit(9, "obj.put", "obj:write:shared/x", "deny",
                       {"reason": "no", "n": [1, 2], "path": Path("/p")})
    (r,) = store.audit_records()
    assert (r.pid, r.call, r.request, r.verdict) == (9, "obj.put", "obj:write:shared/x", "deny")
    assert r.detail == {"reason": "no", "n": [1, 2], "path": "/p"}  # non-JSON via str()
    assert before <= r.ts <= time.time()
    assert r.public()["hash"] == r.hash


def test_audit_records_filter_by_pid_since_and_limit(store: SQLiteStore) -> None:
    append(store, 2, pid=1)
    append(store, 2, pid=2)
    append(store, 1, pid=None)
    assert [r.seq for r in store.audit_records(pid=2)] == [3, 4]
    assert [r.seq for r in store.audit_records(since_seq=3)] == [4, 5]
    assert [r.seq for r in store.audit_records(limit=2)] == [1, 2]
    assert store.audit_records(pid=3) == []


def test_an_empty_audit_verifies(store: SQLiteStore) -> None:
    res = store.verify_audit()
    assert (res.ok, res.count) == (True, 0)


def test_the_chain_continues_across_reopening_the_database(db: Path) -> None:
    with closing(SQLiteStore(db)) as a:
        append(a, 3)
    with closing(SQLiteStore(db)) as b:
        assert append(b, 2) == [4, 5]
        assert b.verify_audit().ok


def test_two_writers_taking_turns_keep_one_chain(db: Path) -> None:
    # The CLI's `image add` may append while a supervisor's store is open.
    with closing(SQLiteStore(db)) as a, closing(SQLiteStore(db)) as b:
        seqs = []
        for _ in range(3):
            seqs += append(a, 1) + append(b, 1)
        assert seqs == [1, 2, 3, 4, 5, 6]
        assert a.verify_audit().ok
        assert b.verify_audit().count == 6


def test_a_read_only_store_verifies_and_refuses_a_missing_database(db: Path) -> None:
    with closing(SQLiteStore(db)) as s:
        append(s, 3)
    with closing(SQLiteStore(db, readonly=True)) as ro:
        assert ro.verify_audit().ok
        assert len(ro.audit_records()) == 3
    with pytest.raises(NotFound, match="nothing has run yet"):
        SQLiteStore(db.parent / "absent.db", readonly=True)


# ===================================================================== audit: tampering


@pytest.mark.parametrize(
    "assignment",
    [
        "request = 'fs:read:/innocent'",
        "verdict = 'deny'",
        "pid = 99",
        "pid = NULL",
        "call = 'fs.write'",
        "detail = '{\"reason\":\"fine\"}'",
        "ts = ts + 1",
        "prev = '" + "0" * 64 + "'",
        "hash = '" + "f" * 64 + "'",
    ],
)
def test_modifying_a_middle_record_is_detected_and_names_it(
    store: SQLiteStore, db: Path, assignment: str
) -> None:
    append(store, 5)
    tamper(db, f"UPDATE audit SET {assignment} WHERE seq = 3")  # noqa: S608
    res = reopened(db).verify_audit()
    assert not res.ok
    assert res.first_bad_seq == 3
    assert res.problem is not None and "record 3" in res.problem


def test_rewriting_a_record_with_its_own_values_is_not_reported(
    store: SQLiteStore, db: Path
) -> None:
    # No false alarms: a REAL ts and a JSON detail survive a rewrite byte for byte.
    append(store, 3)
    tamper(db, "UPDATE audit SET ts = ts + 0.0, detail = detail || '', verdict = verdict")
    assert reopened(db).verify_audit().ok


def test_a_modified_record_whose_hash_was_recomputed_breaks_the_next_link(
    store: SQLiteStore, db: Path
) -> None:
    append(store, 5)
    r3 = store.audit_records()[2]
    forged = record_hash(3, r3.ts, r3.pid, r3.call, "fs:read:/innocent", r3.verdict,
                         json.dumps(r3.detail, sort_keys=True, separators=(",", ":")), r3.prev)
    tamper(db, f"UPDATE audit SET request = 'fs:read:/innocent', hash = '{forged}' "  # noqa: S608
               "WHERE seq = 3")
    res = reopened(db).verify_audit()
    assert (res.ok, res.first_bad_seq) == (False, 4)
    assert res.problem == "record 4 does not link to the record before it"


def test_deleting_a_middle_record_is_detected(store: SQLiteStore, db: Path) -> None:
    append(store, 5)
    tamper(db, "DELETE FROM audit WHERE seq = 3")
    res = reopened(db).verify_audit()
    assert not res.ok
    assert res.first_bad_seq == 3  # the first record missing from its place
    assert res.problem is not None and "3..3 are missing" in res.problem


def test_deleting_the_first_record_is_detected(store: SQLiteStore, db: Path) -> None:
    append(store, 5)
    tamper(db, "DELETE FROM audit WHERE seq = 1")
    res = reopened(db).verify_audit()
    assert (res.ok, res.first_bad_seq) == (False, 1)


def test_deleting_the_last_record_is_caught_by_the_stored_head(
    store: SQLiteStore, db: Path
) -> None:
    append(store, 5)
    tamper(db, "DELETE FROM audit WHERE seq = 5")
    res = reopened(db).verify_audit()
    assert not res.ok
    assert res.first_bad_seq == 5
    assert res.problem is not None
    assert "ends at record 4 but its head says 5" in res.problem


def test_deleting_every_record_is_caught_by_the_stored_head(
    store: SQLiteStore, db: Path
) -> None:
    append(store, 3)
    tamper(db, "DELETE FROM audit")
    res = reopened(db).verify_audit()
    assert (res.ok, res.count, res.first_bad_seq) == (False, 0, 1)


def test_swapping_two_records_is_detected_at_the_first_of_them(
    store: SQLiteStore, db: Path
) -> None:
    append(store, 5)
    cols = "ts, pid, call, request, verdict, detail, prev, hash"
    # Move row 2 aside, copy row 3's contents into seq 2, then the old row 2 into seq 3.
    tamper(
        db,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        f"INSERT INTO audit (seq, {cols}) SELECT 2, {cols} FROM audit WHERE seq = 3",  # noqa: S608
        "DELETE FROM audit WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    assert count(db, "SELECT COUNT(*) FROM audit") == 5
    assert reopened(db).audit_records()[1].request == "fs:read:/p/2"  # really swapped
    res = reopened(db).verify_audit()
    assert (res.ok, res.first_bad_seq) == (False, 2)
    assert res.problem == "record 2 does not link to the record before it"


def test_altering_the_stored_head_is_detected(store: SQLiteStore, db: Path) -> None:
    append(store, 3)
    tamper(db, "UPDATE meta SET value = '3:" + "a" * 64 + "' WHERE key = 'audit_head'")
    assert not reopened(db).verify_audit().ok


def test_removing_the_stored_head_is_detected(store: SQLiteStore, db: Path) -> None:
    append(store, 3)
    tamper(db, "DELETE FROM meta WHERE key = 'audit_head'")
    res = reopened(db).verify_audit()
    assert (res.ok, res.problem) == (False, "the chain has records but no head")


# ====================================================================== object memory


def test_an_object_is_put_and_got_back(store: SQLiteStore) -> None:
    rec = store.put_object("self", "summary", "Summary", json.dumps({"text": "hé"}), 7, None,
                           QUOTA)
    assert (rec.ns, rec.name, rec.type, rec.version) == ("self", "summary", "Summary", 1)
    assert rec.value == {"text": "hé"}
    assert rec.size == len(json.dumps({"text": "hé"}).encode("utf-8"))
    assert rec.updated_by == 7
    got = store.get_object("self", "summary")
    assert got == rec
    assert got.stat()["version"] == 1
    assert "value" not in got.stat()


def test_getting_a_missing_object_is_not_found(store: SQLiteStore) -> None:
    with pytest.raises(NotFound, match="no object 'x' in namespace 'self'"):
        store.get_object("self", "x")


def test_each_put_increments_the_version(store: SQLiteStore) -> None:
    assert [put(store, "x", i) for i in range(4)] == [1, 2, 3, 4]
    rec = store.get_object("self", "x")
    assert rec.value == 3
    assert rec.updated_at >= rec.created_at


def test_namespaces_are_separate(store: SQLiteStore) -> None:
    put(store, "x", "a", ns="proc/1")
    put(store, "x", "b", ns="proc/2")
    assert store.get_object("proc/1", "x").value == "a"
    assert store.get_object("proc/2", "x").version == 1


def test_expect_version_zero_means_the_object_must_not_exist(store: SQLiteStore) -> None:
    assert put(store, "x", 1, expect=0) == 1
    with pytest.raises(Conflict, match="at version 1, not the expected 0") as e:
        put(store, "x", 2, expect=0)
    assert e.value.details == {"current_version": 1}
    assert store.get_object("self", "x").value == 1


def test_expect_version_is_a_compare_and_set(store: SQLiteStore) -> None:
    put(store, "x", "v1")
    put(store, "x", "v2")
    with pytest.raises(Conflict):
        put(store, "x", "lost update", expect=1)
    assert store.get_object("self", "x").value == "v2"
    assert put(store, "x", "v3", expect=2) == 3
    with pytest.raises(Conflict, match="at version 0"):
        put(store, "y", "v", expect=1)


def test_changing_an_objects_type_is_a_conflict(store: SQLiteStore) -> None:
    put(store, "x", 1, type_="Plan")
    with pytest.raises(Conflict, match="has type 'Plan'; cannot put a 'Note'") as e:
        put(store, "x", 2, type_="Note")
    assert e.value.details == {"current_type": "Plan"}
    store.delete_object("self", "x", None)
    assert put(store, "x", 2, type_="Note") == 1


def test_the_object_count_quota_is_per_namespace(store: SQLiteStore) -> None:
    q = ObjectQuota(max_objects_per_ns=2, max_bytes_per_ns=1 << 20)
    put(store, "a", 1, quota=q)
    put(store, "b", 1, quota=q)
    with pytest.raises(LimitExceeded, match="already holds 2 objects"):
        put(store, "c", 1, quota=q)
    assert put(store, "a", 2, quota=q) == 2  # updating an existing one is fine
    assert put(store, "c", 1, ns="other", quota=q) == 1
    with pytest.raises(NotFound):
        store.get_object("self", "c")


def test_the_byte_quota_counts_the_replaced_value_only_once(store: SQLiteStore) -> None:
    q = ObjectQuota(max_objects_per_ns=100, max_bytes_per_ns=20)
    put(store, "a", "x" * 8, quota=q)  # 10 bytes of JSON
    put(store, "b", "y" * 8, quota=q)  # 20 bytes in the namespace: exactly the limit
    assert put(store, "a", "z" * 8, quota=q) == 2  # same size: still 20
    with pytest.raises(LimitExceeded, match="would hold 21 bytes"):
        put(store, "a", "z" * 9, quota=q)
    with pytest.raises(LimitExceeded):
        put(store, "c", "", quota=q)
    assert store.get_object("self", "a").value == "z" * 8


def test_listing_objects_by_prefix(store: SQLiteStore) -> None:
    for name in ["plans/b", "plans/a", "notes/1", "plans", "plansx", "pl%ns/x", "pl_ns/y"]:
        put(store, name, name)
    put(store, "plans/c", 0, ns="elsewhere")
    names = [r.name for r in store.list_objects("self", "plans/", 100)]
    assert names == ["plans/a", "plans/b"]
    assert [r.name for r in store.list_objects("self", "plans", 100)] == [
        "plans", "plans/a", "plans/b", "plansx",
    ]
    # The prefix is literal text, not a LIKE or GLOB pattern.
    assert [r.name for r in store.list_objects("self", "pl%", 100)] == ["pl%ns/x"]
    assert [r.name for r in store.list_objects("self", "pl_", 100)] == ["pl_ns/y"]
    assert len(store.list_objects("self", "", 100)) == 7
    assert [r.name for r in store.list_objects("self", "", 2)] == ["notes/1", "pl%ns/x"]
    assert store.list_objects("self", "zzz", 100) == []


def test_deleting_an_object(store: SQLiteStore) -> None:
    put(store, "x", 1)
    put(store, "x", 2)
    with pytest.raises(Conflict, match="at version 2, not the expected 1"):
        store.delete_object("self", "x", 1)
    assert store.get_object("self", "x").version == 2
    store.delete_object("self", "x", 2)
    with pytest.raises(NotFound):
        store.get_object("self", "x")
    with pytest.raises(NotFound):
        store.delete_object("self", "x", None)
    put(store, "y", 1)
    store.delete_object("self", "y", None)
    assert store.list_objects("self", "", 10) == []


def test_a_deleted_object_starts_again_at_version_one(store: SQLiteStore) -> None:
    put(store, "x", 1)
    put(store, "x", 2)
    store.delete_object("self", "x", None)
    assert put(store, "x", 3, expect=0) == 1


# ======================================================================= transactions


def test_a_batch_groups_its_writes_into_one_commit(store: SQLiteStore, db: Path) -> None:
    with store.batch():
        append(store, 2)
        put(store, "x", 1)
        # Another connection (the CLI) sees nothing until the batch commits.
        assert count(db, "SELECT COUNT(*) FROM audit") == 0
        assert count(db, "SELECT COUNT(*) FROM objects") == 0
        append(store, 1)
        assert count(db, "SELECT COUNT(*) FROM audit") == 0
    assert count(db, "SELECT COUNT(*) FROM audit") == 3
    assert count(db, "SELECT COUNT(*) FROM objects") == 1
    assert store.verify_audit().ok


def test_writes_outside_a_batch_commit_one_by_one(store: SQLiteStore, db: Path) -> None:
    append(store, 1)
    assert count(db, "SELECT COUNT(*) FROM audit") == 1
    put(store, "x", 1)
    assert count(db, "SELECT COUNT(*) FROM objects") == 1


def test_a_batch_that_raises_rolls_back_all_its_writes(store: SQLiteStore) -> None:
    append(store, 2)
    with pytest.raises(RuntimeError), store.batch():
        append(store, 3)
        put(store, "x", 1)
        raise RuntimeError("supervisor bug")
    assert [r.seq for r in store.audit_records()] == [1, 2]
    with pytest.raises(NotFound):
        store.get_object("self", "x")
    # The cached head was discarded: the chain continues from what is on disk.
    assert append(store, 1) == [3]
    assert store.verify_audit().ok


def test_a_batch_that_only_reads_takes_no_write_lock(store: SQLiteStore, db: Path) -> None:
    put(store, "x", 1)
    with store.batch():
        store.get_object("self", "x")
        store.audit_records()
        with closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # would raise "database is locked"
            other.execute("ROLLBACK")


def test_audit_records_of_a_batch_take_no_lock_until_its_commit(
    store: SQLiteStore, db: Path
) -> None:
    # What a turn of reads does: audit them, read; the replies leave before the commit.
    put(store, "x", 1)
    with store.batch():
        append(store, 3)
        store.get_object("self", "x")
        assert store.audit_head_seq() == 3  # counted, though not written yet
        with closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # would raise "database is locked"
            other.execute("ROLLBACK")
        assert count(db, "SELECT COUNT(*) FROM audit") == 0
    assert count(db, "SELECT COUNT(*) FROM audit") == 3
    assert store.verify_audit().ok


def test_records_buffered_while_another_writer_appends_are_chained_after_its_own(
    store: SQLiteStore, db: Path
) -> None:
    with store.batch():
        store.append_audit(1, "fs.stat", "fs:read:/ours", "allow", {})
        with closing(SQLiteStore(db)) as cli_store:  # `image add`, say, meanwhile
            cli_store.append_audit(None, "image.add", "image:add:x", "info", {})
            cli_store.append_audit(None, "image.add", "image:add:y", "info", {})
        # Read inside the batch: what it buffered is written first, after theirs.
        assert [r.request for r in store.audit_records()] == [
            "image:add:x", "image:add:y", "fs:read:/ours"]
        store.append_audit(1, "fs.stat", "fs:read:/ours-2", "allow", {})
    res = reopened(db).verify_audit()
    assert (res.ok, res.count) == (True, 4), res.problem
    assert [r.seq for r in store.audit_records()] == [1, 2, 3, 4]


def test_nested_batches_commit_once_at_the_outermost(store: SQLiteStore, db: Path) -> None:
    with store.batch():
        with store.batch(), store.transaction():
            append(store, 1)
        assert count(db, "SELECT COUNT(*) FROM audit") == 0
    assert count(db, "SELECT COUNT(*) FROM audit") == 1


def test_a_savepoint_rolls_back_a_handler_bug_but_keeps_the_rest_of_the_batch(
    store: SQLiteStore,
) -> None:
    with store.batch():
        append(store, 1)  # an earlier syscall in the same turn
        with pytest.raises(RuntimeError), store.savepoint():
            put(store, "x", 1)
            store.append_audit(1, "obj.put", "obj:write:self/x", "allow", {})
            raise RuntimeError("handler bug")
        with store.savepoint():  # the next syscall in the turn
            put(store, "y", 1)
            store.append_audit(1, "obj.put", "obj:write:self/y", "allow", {})
    # The rolled-back record's seq is reused: the chain has no gap.
    assert [(r.seq, r.request) for r in store.audit_records()] == [
        (1, "fs:read:/p/0"), (2, "obj:write:self/y"),
    ]
    assert store.verify_audit().ok
    with pytest.raises(NotFound):
        store.get_object("self", "x")
    assert store.get_object("self", "y").version == 1


def test_after_a_rolled_back_savepoint_the_stored_head_matches_the_chain(
    store: SQLiteStore, db: Path
) -> None:
    with store.batch():
        append(store, 1)
        with pytest.raises(RuntimeError), store.savepoint():
            append(store, 1)
            raise RuntimeError("handler bug")
    res = reopened(db).verify_audit()
    assert (res.ok, res.count) == (True, 1), res.problem
    with store.batch():
        append(store, 2)
        with pytest.raises(ValueError), store.savepoint():
            append(store, 1)
            raise ValueError("handler bug")
        append(store, 1)
    res = reopened(db).verify_audit()
    assert (res.ok, res.count) == (True, 4), res.problem


def test_a_savepoint_keeps_the_writes_of_a_typed_refusal(store: SQLiteStore) -> None:
    # The audit record of a refusal must survive the refusal.
    with store.batch(), pytest.raises(PermissionDenied), store.savepoint():
        store.append_audit(1, "fs.write", "fs:write:/etc/passwd", "deny", {})
        raise PermissionDenied("fs.write: denied")
    (r,) = store.audit_records()
    assert (r.request, r.verdict) == ("fs:write:/etc/passwd", "deny")
    assert store.verify_audit().ok


def test_a_savepoint_outside_a_batch_also_keeps_the_writes_of_a_typed_refusal(
    store: SQLiteStore,
) -> None:
    with pytest.raises(PermissionDenied), store.savepoint():
        store.append_audit(1, "fs.write", "fs:write:/etc/passwd", "deny", {})
        raise PermissionDenied("fs.write: denied")
    assert [r.verdict for r in store.audit_records()] == ["deny"]
    assert store.verify_audit().ok


def test_a_savepoint_outside_a_batch_rolls_back_a_handler_bug(store: SQLiteStore) -> None:
    with pytest.raises(RuntimeError), store.savepoint():
        append(store, 1)
        put(store, "x", 1)
        raise RuntimeError("handler bug")
    assert store.audit_records() == []
    with pytest.raises(NotFound):
        store.get_object("self", "x")
    assert append(store, 1) == [1]


def test_a_conflict_inside_a_batch_leaves_the_other_writes_alone(store: SQLiteStore) -> None:
    put(store, "x", 1)
    with store.batch():
        put(store, "y", 1)
        with pytest.raises(Conflict), store.savepoint():
            put(store, "x", 2, expect=0)
    assert store.get_object("self", "y").version == 1
    assert store.get_object("self", "x").value == 1


# ========================================================================= durability

_WRITER = textwrap.dedent(
    """
    import json, sys
    from agentlibos.store.sqlite import ObjectQuota, SQLiteStore

    store = SQLiteStore(sys.argv[1])
    quota = ObjectQuota()
    i = 0
    while True:
        i += 1
        with store.batch():
            store.append_audit(1, "obj.put", "obj:write:self/counter", "allow", {"i": i})
            store.put_object("self", "counter", "Counter", json.dumps(i), 1, None, quota)
        store.append_audit(None, "tick", str(i), "info", {"pad": "x" * (i % 500)})
        store.put_object("self", f"item/{i % 50}", "Item", json.dumps([i] * (i % 40)), 1,
                         None, quota)
        print(i, flush=True)
    """
)


def _wait_for_progress(proc: subprocess.Popen[str], target: int, timeout_s: float) -> int:
    """Read the writer's progress lines until it reports ``target`` committed rounds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    last = 0
    while last < target:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the writer reported only {last} rounds in {timeout_s} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the writer exited early with {proc.wait()}")
        last = int(line)
    return last


def test_a_writer_killed_with_sigkill_leaves_a_consistent_database(db: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            reported = _wait_for_progress(proc, 300, timeout_s=60.0)
            os.kill(proc.pid, signal.SIGKILL)  # mid-loop: it never stops on its own
        finally:
            if proc.poll() is None:
                proc.kill()
            status = proc.wait()
    assert status == -signal.SIGKILL

    with closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with closing(SQLiteStore(db)) as s:
        res = s.verify_audit()
        assert res.ok, res.problem
        # Everything reported as committed survived; a batch is all or nothing.
        puts = [r for r in s.audit_records() if r.call == "obj.put"]
        assert len(puts) >= reported
        counter = s.get_object("self", "counter")
        assert counter.version == len(puts) == counter.value
        assert puts[-1].detail == {"i": counter.value}
        # And the store is usable again: the chain continues.
        s.append_audit(None, "supervisor.start", "-", "info", {})
        assert s.audit_head_seq() == res.count + 1
        assert s.verify_audit().ok


def test_wal_checkpoints_run_on_their_own_thread_and_stop_with_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert store.checkpointer is not None
    store.checkpointer._gather_s = 0.0
    auto = store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert auto >= 10_000  # the commit before a reply does not checkpoint
    for i in range(20):
        with store.transaction():
            store.append_audit(1, "fs.stat", f"fs:read:/f{i}", "allow", {})
    deadline = time.monotonic() + 10
    while store.checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.checkpointer.checkpoints > 0
    assert any(t.name == "alos-wal-checkpoint" for t in threading.enumerate())
    assert store.verify_audit().ok
    store.close()
    assert not any(t.name == "alos-wal-checkpoint" for t in threading.enumerate())


@pytest.mark.parametrize("assignment", [
    "detail = '[]'",
    "detail = 'not json {'",
    "detail = x'00ff'",
    "ts = 'abc'",
    "pid = 'x'",
    "call = 7",
])
def test_a_row_edited_into_other_types_still_lists_and_fails_verify(
    store: SQLiteStore, db: Path, assignment: str
) -> None:
    append(store, 4)
    tamper(db, f"UPDATE audit SET {assignment} WHERE seq = 2")  # noqa: S608
    again = reopened(db)
    recs = again.audit_records()
    assert [r.seq for r in recs] == [1, 2, 3, 4]
    assert "unreadable" in recs[1].detail or recs[1].call == "7"
    json.dumps([r.public() for r in recs], allow_nan=False)  # --json can print them
    res = again.verify_audit()
    assert (res.ok, res.first_bad_seq) == (False, 2)
    assert res.problem == "record 2 was modified: its hash does not match"


def test_an_unreadable_head_fails_verify_saying_so(store: SQLiteStore, db: Path) -> None:
    append(store, 3)
    tamper(db, "UPDATE meta SET value = 'x' WHERE key = 'audit_head'")
    res = reopened(db).verify_audit()
    assert not res.ok
    assert res.problem is not None and "head ('x') is unreadable" in res.problem


def test_a_head_whose_hash_was_changed_is_named_as_such(store: SQLiteStore, db: Path) -> None:
    append(store, 3)
    tamper(db, "UPDATE meta SET value = '3:" + "a" * 64 + "' WHERE key = 'audit_head'")
    res = reopened(db).verify_audit()
    assert (res.ok, res.first_bad_seq) == (False, 3)
    assert res.problem is not None and res.problem.startswith(
        "the head's hash does not match record 3's")
