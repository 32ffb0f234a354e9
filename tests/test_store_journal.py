"""The syscall journal: its pure record and digest (kernel/journal.py) and its store.

Also that SQLiteStore is everything callers type against (the Store protocol).
"""

from __future__ import annotations

import inspect
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from agentlibos.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, to_wire
from agentlibos.kernel.journal import JournalEntry, JournalStatus, args_digest
from agentlibos.store import SQLiteStore, Store, open_store


def entry(seq: int, *, pid: int = 1, call: str = "fs.read", status: JournalStatus = "ok",
          result: str | None = '{"text":"hi"}') -> JournalEntry:
    return JournalEntry(pid, seq, call, args_digest(call, {"path": f"f{seq}"}), status, result)


def count(db: Path, sql: str) -> int:
    with closing(sqlite3.connect(db)) as con:
        return int(con.execute(sql).fetchone()[0])


# ========================================================================== args_digest


def test_args_digest_is_sha256_hex() -> None:
    d = args_digest("fs.write", {"path": "a"}, [b"x"])
    assert len(d) == 64
    assert int(d, 16) >= 0


def test_args_digest_is_stable_under_dict_key_order() -> None:
    a = {"path": "out/a.txt", "opts": {"mode": 1, "append": False}, "n": [1, 2]}
    b = {"n": [1, 2], "opts": {"append": False, "mode": 1}, "path": "out/a.txt"}
    assert args_digest("fs.write", a, [b"data"]) == args_digest("fs.write", b, [b"data"])


def test_args_digest_is_the_same_in_every_run() -> None:
    # Pinned: a journal written by one run (or one version) is replayed by another.
    # The same value from the shell:
    #   h=$(printf hello | sha256sum | cut -d' ' -f1)
    #   printf '{"args":{"n":1,"path":"a"},"blobs":["%s"],"call":"fs.write"}' $h | sha256sum
    assert args_digest("fs.write", {"path": "a", "n": 1}, [b"hello"]) == (
        "54a9eca9c50be2b8a5a52df3e92e2a2624ffe22cfbec5dc427e72b0446ffa096"
    )


def test_args_digest_differs_when_a_blob_differs() -> None:
    base = args_digest("fs.write", {"path": "a"}, [b"hello"])
    assert args_digest("fs.write", {"path": "a"}, [b"hellO"]) != base
    assert args_digest("fs.write", {"path": "a"}, []) != base
    assert args_digest("fs.write", {"path": "a"}, [b"hello", b""]) != base
    assert args_digest("fs.write", {"path": "a"}, [b"a", b"b"]) != args_digest(
        "fs.write", {"path": "a"}, [b"b", b"a"])


def test_args_digest_differs_when_the_call_or_an_argument_differs() -> None:
    base = args_digest("fs.write", {"path": "a"}, [])
    assert args_digest("fs.read", {"path": "a"}, []) != base
    assert args_digest("fs.write", {"path": "b"}, []) != base
    assert args_digest("fs.write", {"path": "a", "append": True}, []) != base
    assert args_digest("fs.write", {"path": 1}, []) != args_digest("fs.write", {"path": "1"}, [])


def test_a_journal_entry_refuses_what_the_broker_must_never_write() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        JournalEntry(1, 1, "fs.read", "d", "done", "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start at 1"):
        JournalEntry(1, 0, "fs.read", "d", "ok", "1")
    with pytest.raises(ValueError, match="needs a result"):
        JournalEntry(1, 1, "fs.read", "d", "error", None)
    assert JournalEntry(1, 1, "fs.write", "d", "intent", None).result is None


# ====================================================================== store: journal


def test_journal_entries_come_back_in_order_with_their_fields(store: SQLiteStore) -> None:
    assert store.journal_last_seq(1) == 0
    assert store.journal_entries(1) == []
    written = [entry(1), entry(2, call="obj.put"), entry(3)]
    for e in written:
        store.journal_append(e)
    store.journal_append(entry(1, pid=2))
    assert store.journal_entries(1) == written
    assert store.journal_last_seq(1) == 3
    assert store.journal_last_seq(2) == 1
    assert store.journal_last_seq(3) == 0


def test_journal_entries_page_with_after_seq_and_limit(store: SQLiteStore) -> None:
    for seq in range(1, 8):
        store.journal_append(entry(seq))
    assert [e.seq for e in store.journal_entries(1, after_seq=3)] == [4, 5, 6, 7]
    assert [e.seq for e in store.journal_entries(1, after_seq=2, limit=2)] == [3, 4]
    assert store.journal_entries(1, after_seq=7) == []
    assert store.journal_entries(1, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.journal_entries(1, limit=-1)


def test_an_error_is_journaled_as_the_wire_encodes_it(store: SQLiteStore) -> None:
    err = json.dumps(to_wire(PermissionDenied("fs.write: denied", request="fs:write:/x")))
    store.journal_append(entry(1, call="fs.write", status="error", result=err))
    (got,) = store.journal_entries(1)
    assert got.status == "error"
    assert json.loads(got.result or "") == {
        "type": "PermissionDenied", "code": "EPERM", "message": "fs.write: denied",
        "details": {"request": "fs:write:/x"},
    }


def test_a_duplicate_sequence_number_is_refused(store: SQLiteStore) -> None:
    store.journal_append(entry(1))
    with pytest.raises(Conflict, match="already has journal entry 1") as e:
        store.journal_append(entry(1, call="obj.get"))
    assert e.value.details == {"pid": 1, "seq": 1}
    (kept,) = store.journal_entries(1)
    assert kept.call == "fs.read"
    store.journal_append(entry(1, pid=2))  # another process's seq 1 is its own


def test_an_intent_is_settled_once(store: SQLiteStore, db: Path) -> None:
    store.journal_append(entry(1, call="shell.exec", status="intent",
                               result='{"argv":["git","push"]}'))
    assert count(db, "SELECT COUNT(*) FROM journal WHERE settled_at IS NULL") == 1
    store.journal_settle(1, 1, "ok", '{"exit_code":0}')
    (e,) = store.journal_entries(1)
    assert (e.status, e.result) == ("ok", '{"exit_code":0}')
    assert count(db, "SELECT COUNT(*) FROM journal WHERE settled_at >= created_at") == 1
    with pytest.raises(Conflict, match="already settled \\(ok\\)"):
        store.journal_settle(1, 1, "error", "{}")


def test_settling_what_is_not_there_or_not_an_outcome_is_refused(store: SQLiteStore) -> None:
    with pytest.raises(NotFound, match="process 1 has no journal entry 4"):
        store.journal_settle(1, 4, "ok", "{}")
    store.journal_append(entry(1, status="intent", result=None))
    with pytest.raises(ValueError, match="settles as 'ok' or 'error'"):
        store.journal_settle(1, 1, "intent", "{}")
    assert store.journal_entries(1)[0].status == "intent"


def test_ok_and_error_entries_are_settled_when_written(store: SQLiteStore, db: Path) -> None:
    store.journal_append(entry(1))
    store.journal_append(entry(2, status="intent", result=None))
    assert count(db, "SELECT COUNT(*) FROM journal WHERE settled_at IS NOT NULL") == 1
    assert count(db, "SELECT COUNT(*) FROM journal WHERE status = 'intent'") == 1


def test_the_journal_survives_reopening_and_reads_read_only(db: Path) -> None:
    with closing(SQLiteStore(db)) as s:
        s.journal_append(entry(1))
        s.journal_append(entry(2, status="intent", result=None))
    with closing(SQLiteStore(db, readonly=True)) as ro:
        assert [e.seq for e in ro.journal_entries(1)] == [1, 2]
        assert ro.journal_last_seq(1) == 2


# ============================================================ journal and audit together


def test_a_batch_commits_journal_and_audit_together(store: SQLiteStore, db: Path) -> None:
    with store.batch():
        store.append_audit(1, "fs.read", "fs:read:/w/f1", "allow", {})
        store.journal_append(entry(1))
        # Another connection (the CLI) sees neither until the batch commits.
        assert count(db, "SELECT COUNT(*) FROM journal") == 0
        assert count(db, "SELECT COUNT(*) FROM audit") == 0
    assert count(db, "SELECT COUNT(*) FROM journal") == 1
    assert count(db, "SELECT COUNT(*) FROM audit") == 1


def test_a_rolled_back_savepoint_drops_its_journal_entry_and_audit_record(
    store: SQLiteStore,
) -> None:
    with store.batch():
        store.append_audit(1, "fs.read", "fs:read:/w/f1", "allow", {})
        store.journal_append(entry(1))
        with pytest.raises(RuntimeError), store.savepoint():
            store.append_audit(1, "obj.put", "obj:write:self/x", "allow", {})
            store.journal_append(entry(2, call="obj.put"))
            raise RuntimeError("handler bug")
        with store.savepoint():  # the call is answered again, at the same seq
            store.append_audit(1, "obj.get", "obj:read:self/x", "allow", {})
            store.journal_append(entry(2, call="obj.get"))
    assert [(e.seq, e.call) for e in store.journal_entries(1)] == [(1, "fs.read"), (2, "obj.get")]
    assert [r.call for r in store.audit_records()] == ["fs.read", "obj.get"]
    assert store.verify_audit().ok


def test_a_batch_that_raises_drops_journal_and_audit_alike(store: SQLiteStore) -> None:
    store.journal_append(entry(1))
    with pytest.raises(RuntimeError), store.batch():
        store.append_audit(1, "fs.read", "fs:read:/w/f2", "allow", {})
        store.journal_append(entry(2))
        raise RuntimeError("supervisor bug")
    assert store.journal_last_seq(1) == 1
    assert store.audit_records() == []


def test_a_typed_refusal_keeps_its_journal_entry_and_audit_record(store: SQLiteStore) -> None:
    # A refused call is answered (with the error), so replay must answer it the same way.
    err = json.dumps(to_wire(PermissionDenied("fs.write: denied")))
    with pytest.raises(PermissionDenied), store.savepoint():
        store.append_audit(1, "fs.write", "fs:write:/etc/passwd", "deny", {})
        store.journal_append(entry(1, call="fs.write", status="error", result=err))
        raise PermissionDenied("fs.write: denied")
    assert [e.status for e in store.journal_entries(1)] == ["error"]
    assert [r.verdict for r in store.audit_records()] == ["deny"]


def test_a_settle_inside_a_rolled_back_savepoint_leaves_the_intent(store: SQLiteStore) -> None:
    store.journal_append(entry(1, call="shell.exec", status="intent", result=None))
    with store.batch(), pytest.raises(RuntimeError), store.savepoint():
        store.journal_settle(1, 1, "ok", "{}")
        raise RuntimeError("handler bug")
    assert store.journal_entries(1)[0].status == "intent"


# ============================================================================ the protocol


def test_sqlite_store_has_every_store_method_with_the_same_signature() -> None:
    members = [n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")]
    assert "journal_append" in members and "savepoint" in members
    for name in members:
        theirs = inspect.signature(getattr(SQLiteStore, name))
        ours = inspect.signature(getattr(Store, name))
        # Parameters only: a @contextmanager's return annotation is its generator's.
        assert theirs.parameters == ours.parameters, (
            f"SQLiteStore.{name}{theirs} differs from Store.{name}{ours}")


def test_open_store_gives_a_store_that_journals(tmp_path: Path) -> None:
    s: Store = open_store(tmp_path / "state.db")
    try:
        s.journal_append(entry(1))
        assert s.journal_last_seq(1) == 1
    finally:
        s.close()


def test_a_checkpoint_name_two_processes_used_must_be_given_as_an_id(
        store: SQLiteStore) -> None:
    # Names are any process's to choose: a name alone restored the newest of them, which
    # an agent could plant to be restored in place of the operator's own.
    first = store.checkpoint_create("before-deploy", 1, 3, [], [])
    again = store.checkpoint_create("before-deploy", 1, 5, [], [])
    assert store.checkpoint_get("before-deploy").id == again.id  # one process: its newest
    planted = store.checkpoint_create("before-deploy", 2, 1, [], [])
    with pytest.raises(InvalidArgument, match=r"used by more than one process: give the id") as e:
        store.checkpoint_get("before-deploy")
    assert f"{first.id} (process 1)" in e.value.message
    assert f"{planted.id} (process 2)" in e.value.message
    assert store.checkpoint_get(str(first.id)).seq == 3
