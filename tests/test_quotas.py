"""Per-tree quotas on objects and on bytes written through the broker (kernel/budgets.py).

The arithmetic first (pure), then the store that charges in the same transaction, then
the config keys, then real hostile agents against a real supervisor.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.errors import LimitExceeded, NoSuchProcess, PolicyError
from agentlibos.kernel import budgets
from agentlibos.kernel.budgets import TreeQuota, Usage
from agentlibos.kernel.process import ProcessRecord
from agentlibos.sandbox.profile import SandboxConfig, parse_config
from agentlibos.store import ObjectQuota
from agentlibos.store.migrations import migrations
from agentlibos.store.sqlite import SQLiteStore
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, run_proc

MiB = 1 << 20
Q = TreeQuota(object_bytes=100, objects=3, write_bytes=1000)


# ------------------------------------------------------------------ the arithmetic


def test_a_charge_that_reaches_the_limit_exactly_fits() -> None:
    assert budgets.overrun(7, Q, Usage(object_bytes=60), Usage(object_bytes=40)) is None
    assert budgets.overrun(7, Q, Usage(write_bytes=999), Usage(write_bytes=1)) is None


def test_one_byte_past_the_limit_is_refused_naming_the_quota_the_usage_and_the_limit() -> None:
    over = budgets.overrun(7, Q, Usage(object_bytes=60), Usage(object_bytes=41))
    assert over == budgets.Overrun(root_pid=7, quota="object_bytes", usage=60, asked=41,
                                   limit=100)
    err = over.error()
    assert isinstance(err, LimitExceeded) and err.code == "ELIMIT"
    assert "process tree 7 holds 60 bytes of objects" in err.message
    assert "41 more would exceed its object_bytes quota of 100" in err.message
    assert "[limits] object_bytes" in err.message
    assert err.details == {"quota": "object_bytes", "usage": 60, "asked": 41, "limit": 100,
                           "root_pid": 7}


def test_the_message_spells_an_exact_binary_size_beside_the_bytes() -> None:
    over = budgets.overrun(3, TreeQuota(write_bytes=MiB), Usage(write_bytes=MiB),
                           Usage(write_bytes=1))
    assert over is not None
    assert "has written 1048576 bytes (1MiB) through the broker" in over.message
    assert "write_bytes quota of 1048576 bytes (1MiB)" in over.message


def test_the_object_count_is_checked_even_when_the_bytes_fit() -> None:
    over = budgets.overrun(7, Q, Usage(objects=3), Usage(object_bytes=1, objects=1))
    assert over is not None and (over.quota, over.usage, over.limit) == ("objects", 3, 3)


def test_a_charge_that_only_lowers_usage_is_never_refused_even_above_the_quota() -> None:
    # The operator lowered the quota under what the tree holds: it can still shrink.
    above = Usage(object_bytes=500, objects=9, write_bytes=5000)
    assert budgets.overrun(7, Q, above, Usage(object_bytes=-10, objects=-1)) is None
    assert budgets.overrun(7, Q, above, Usage()) is None
    # ...but growing by one byte is refused.
    assert budgets.overrun(7, Q, above, Usage(object_bytes=1)) is not None


def test_replacing_ones_own_object_charges_only_the_difference() -> None:
    assert budgets.put_charges(7, 30, 50, 7) == {7: Usage(object_bytes=-20)}
    assert budgets.put_charges(7, 80, 50, 7) == {7: Usage(object_bytes=30)}


def test_a_new_object_charges_its_bytes_and_one_object() -> None:
    assert budgets.put_charges(7, 30, None, None) == {7: Usage(object_bytes=30, objects=1)}


def test_overwriting_another_trees_object_moves_it_onto_the_writer() -> None:
    assert budgets.put_charges(7, 30, 50, 9) == {7: Usage(object_bytes=30, objects=1),
                                                 9: Usage(object_bytes=-50, objects=-1)}
    # An object nobody paid for (the operator's) becomes the writer's.
    assert budgets.put_charges(7, 30, 50, None) == {7: Usage(object_bytes=30, objects=1)}


def test_a_delete_gives_bytes_and_count_back_to_the_tree_charged() -> None:
    assert budgets.delete_charges(50, 9) == {9: Usage(object_bytes=-50, objects=-1)}
    assert budgets.delete_charges(50, None) == {}


def test_usage_never_goes_below_zero() -> None:
    assert budgets.apply(Usage(object_bytes=5, objects=1), Usage(-9, -2, -1)) == Usage()


def test_writes_are_a_meter_charged_in_bytes() -> None:
    assert budgets.write_charge(4096) == Usage(write_bytes=4096)
    assert -budgets.write_charge(1) == Usage(write_bytes=-1)


def test_a_tree_quota_refuses_negative_or_non_integer_limits() -> None:
    with pytest.raises(ValueError, match="objects"):
        TreeQuota(objects=-1)
    with pytest.raises(ValueError, match="write_bytes"):
        TreeQuota(write_bytes=True)


def test_the_defaults_are_256mib_100000_objects_and_1gib_written() -> None:
    assert TreeQuota() == TreeQuota(object_bytes=256 * MiB, objects=100_000,
                                    write_bytes=1 << 30)


# -------------------------------------------------------------------- the config


def test_limits_keys_set_the_tree_quota_with_units() -> None:
    cfg = parse_config('[limits]\nobject_bytes = "8MiB"\nobjects = 500\n'
                       'write_bytes = "2GiB"\n', "config.toml")
    assert cfg.tree_quota == TreeQuota(object_bytes=8 * MiB, objects=500, write_bytes=2 << 30)


def test_a_key_left_out_keeps_its_default() -> None:
    cfg = parse_config('[limits]\nwrite_bytes = "10MiB"\n', "config.toml")
    assert cfg.tree_quota == TreeQuota(write_bytes=10 * MiB)
    assert parse_config("", "config.toml").tree_quota == TreeQuota()


def test_the_existing_limits_keys_keep_working_beside_the_quotas() -> None:
    cfg = parse_config('[limits]\nmemory = "128MiB"\nobjects = 10\n'
                       '[limits.ceiling]\npids = 99\n', "config.toml")
    assert cfg.default_limits.memory_max_bytes == 128 * MiB
    assert cfg.ceiling_limits.pids_max == 99
    assert cfg.tree_quota == TreeQuota(objects=10)


@pytest.mark.parametrize("line", ['object_bytes = "lots"', "objects = -3", 'objects = "10"',
                                  "write_bytes = -1", "objects = true"])
def test_a_bad_quota_is_an_error_naming_the_file_and_the_key(line: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_config(f"[limits]\n{line}\n", "/etc/alos.toml")
    assert "/etc/alos.toml: [limits]" in e.value.message
    assert line.split(maxsplit=1)[0] in e.value.message


# --------------------------------------------------------------------- the store


def with_roots(s: SQLiteStore, n: int) -> SQLiteStore:
    """Give ``s`` root processes 1..n: a tree's usage lives on its root's record."""
    for _ in range(n):
        s.create_process(ProcessRecord(pid=0, ppid=None, root_pid=0, image="i",
                                       image_path="/i", state="running", cwd="/", args={},
                                       limits={}, policy_id=1))
    return s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = with_roots(SQLiteStore(tmp_path / "state.db"), 5)
    try:
        yield s
    finally:
        s.close()


NSQ = ObjectQuota()


def put(store: SQLiteStore, ns: str, name: str, value: Any, root: int | None = 1,
        quota: TreeQuota | None = Q) -> int:
    return store.put_object(ns, name, "T", json.dumps(value), None, None, NSQ,
                            root_pid=root, tree_quota=quota).size


def test_a_tree_is_charged_for_every_namespace_it_writes(store: SQLiteStore) -> None:
    for i in range(3):
        put(store, f"spread/{i}", "o", "x" * 18)  # 20 bytes of JSON each
    assert store.tree_usage(1) == Usage(object_bytes=60, objects=3)
    assert store.tree_usage(2) == Usage()


def test_a_refused_put_changes_nothing(store: SQLiteStore) -> None:
    put(store, "a", "big", "x" * 78)  # 80 bytes
    with pytest.raises(LimitExceeded) as e:
        put(store, "b", "more", "y" * 19)  # 21 bytes: 101 > 100
    assert e.value.details["quota"] == "object_bytes"
    with pytest.raises(LimitExceeded):
        put(store, "a", "big", "x" * 99)  # growing the same object past the quota
    assert store.tree_usage(1) == Usage(object_bytes=80, objects=1)
    assert store.get_object("a", "big").version == 1
    assert store.list_objects("b", "", 10) == []


def test_the_object_count_is_per_tree_across_namespaces(store: SQLiteStore) -> None:
    for i in range(3):
        put(store, f"n{i}", "o", 1)
    with pytest.raises(LimitExceeded, match="holds 3 objects; 1 more would exceed its "
                                            "objects quota of 3"):
        put(store, "n9", "o", 1)
    put(store, "n0", "o", 2)  # replacing one is not one more
    assert store.tree_usage(1).objects == 3


def test_a_delete_gives_the_bytes_back_to_the_tree_charged(store: SQLiteStore) -> None:
    put(store, "a", "x", "x" * 48, root=1)
    store.delete_object("a", "x", None)
    assert store.tree_usage(1) == Usage()
    put(store, "a", "x", "x" * 98)  # the whole quota is free again


def test_overwriting_another_trees_object_moves_the_charge(store: SQLiteStore) -> None:
    put(store, "shared", "x", "x" * 48, root=1)
    put(store, "shared", "x", "y" * 8, root=2)
    assert store.tree_usage(1) == Usage()
    assert store.tree_usage(2) == Usage(object_bytes=10, objects=1)
    store.delete_object("shared", "x", None)  # refunds tree 2, whoever deletes
    assert store.tree_usage(2) == Usage()


def test_what_the_operator_puts_is_charged_to_no_tree(store: SQLiteStore) -> None:
    put(store, "shared", "x", "x" * 48, root=1)
    put(store, "shared", "x", "o", root=None, quota=None)
    assert store.tree_usage(1) == Usage()
    store.delete_object("shared", "x", None)
    assert store.tree_usage(1) == Usage()


def test_charge_tree_refuses_past_the_quota_and_changes_nothing(store: SQLiteStore) -> None:
    assert store.charge_tree(5, Usage(write_bytes=1000), Q) == Usage(write_bytes=1000)
    with pytest.raises(LimitExceeded, match="has written 1000 bytes through the broker"):
        store.charge_tree(5, Usage(write_bytes=1), Q)
    assert store.tree_usage(5) == Usage(write_bytes=1000)
    assert store.charge_tree(5, Usage(write_bytes=-400)) == Usage(write_bytes=600)


def test_charging_a_tree_with_no_root_record_is_refused_but_a_refund_is_dropped(
    store: SQLiteStore
) -> None:
    with pytest.raises(NoSuchProcess):
        store.charge_tree(99, Usage(write_bytes=1))
    assert store.charge_tree(99, Usage(write_bytes=-1)) == Usage()


def test_only_a_root_record_carries_a_trees_usage(store: SQLiteStore) -> None:
    kid = store.create_process(ProcessRecord(pid=0, ppid=1, root_pid=1, image="k",
                                             image_path="/k", state="running", cwd="/",
                                             args={}, limits={}, policy_id=1))
    with pytest.raises(NoSuchProcess):
        store.charge_tree(kid.pid, Usage(objects=1))
    assert store.tree_usage(kid.pid) == Usage()


def test_usage_survives_reopening_the_store(tmp_path: Path) -> None:
    with closing(with_roots(SQLiteStore(tmp_path / "s.db"), 1)) as s:
        put(s, "a", "x", "x" * 8)
        s.charge_tree(1, Usage(write_bytes=7))
    with closing(SQLiteStore(tmp_path / "s.db")) as s:
        assert s.tree_usage(1) == Usage(object_bytes=10, objects=1, write_bytes=7)


def test_migration_0004_charges_objects_written_before_it_to_their_writers_tree(
    tmp_path: Path
) -> None:
    db = tmp_path / "v3.db"
    with closing(sqlite3.connect(db)) as con:
        for mig in migrations()[:3]:
            con.executescript(mig.sql)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '3')")
        for pid, root in ((1, 1), (2, 1), (3, 3)):
            con.execute("INSERT INTO processes (pid, ppid, root_pid, image, image_path, state,"
                        " cwd, args, limits, policy_id, created_at) VALUES"
                        " (?, NULL, ?, 'i', '/i', 'exited', '/', '{}', '{}', 1, 0)",
                        (pid, root))
        for ns, size, by in (("a", 10, 1), ("b", 20, 2), ("c", 5, 3), ("d", 7, None)):
            con.execute("INSERT INTO objects (ns, name, type, version, value, size,"
                        " created_at, updated_at, updated_by) VALUES (?, 'o', 'T', 1, '0',"
                        " ?, 0, 0, ?)", (ns, size, by))
        con.commit()
    with closing(SQLiteStore(db)) as s:
        assert s.schema_version >= 4
        assert s.tree_usage(1) == Usage(object_bytes=30, objects=2)
        assert s.tree_usage(3) == Usage(object_bytes=5, objects=1)
        s.delete_object("b", "o", None)
        assert s.tree_usage(1) == Usage(object_bytes=10, objects=1)


# --------------------------------------------------------------- hostile agents


@pytest.fixture
def qsup(paths: Paths) -> Iterator[Supervisor]:
    """A supervisor whose operator set small tree quotas."""
    quota = TreeQuota(object_bytes=2 * MiB, objects=20, write_bytes=MiB)
    cfg: SandboxConfig = dataclasses.replace(default_sandbox(), tree_quota=quota)
    s = Supervisor(paths, sandbox=cfg)
    s.start()
    try:
        yield s
    finally:
        s.stop()


SPREAD = """
    from agentlibos.errors import LimitExceeded
    def main(ctx, args):
        blob = "x" * (256 * 1024)
        stored = 0
        for i in range(72):
            try:
                ctx.obj.put("chunk", blob, ns=f"spread/{args.get('tag', 'a')}{i}")
            except LimitExceeded as e:
                return {"stored": stored, "type": type(e).__name__, "message": e.message,
                        "details": e.details}
            stored += 1
        return {"stored": stored}
"""


def stored_bytes(sup: Supervisor, prefix: str) -> int:
    total = 0
    for i in range(72):
        total += sum(r.size for r in sup.store.list_objects(f"{prefix}{i}", "", 10))
    return total


def test_an_agent_spreading_objects_over_72_namespaces_is_stopped_at_the_tree_quota(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    rec = run_proc(qsup, make_image("spread", SPREAD, caps=["obj:rw:*"]))
    assert rec.exit_reason == "returned", rec.error
    r = rec.result
    # 256 KiB + 2 bytes of JSON each: 7 fit under 2 MiB, the 8th does not.
    assert (r["stored"], r["type"]) == (7, "LimitExceeded")
    assert r["details"]["quota"] == "object_bytes"
    assert r["details"]["limit"] == 2 * MiB
    assert r["details"]["usage"] == 7 * (256 * 1024 + 2)
    assert f"process tree {rec.pid} holds" in r["message"]
    assert stored_bytes(qsup, "spread/a") == 7 * (256 * 1024 + 2) <= 2 * MiB
    assert qsup.store.tree_usage(rec.pid).object_bytes == 7 * (256 * 1024 + 2)


def test_a_new_tree_starts_with_its_own_fresh_quota(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("spread", SPREAD, caps=["obj:rw:*"])
    first = run_proc(qsup, img, {"tag": "a"})
    second = run_proc(qsup, img, {"tag": "b"})
    assert first.result["stored"] == second.result["stored"] == 7
    assert first.root_pid != second.root_pid


def test_many_small_objects_are_stopped_at_the_tree_object_count(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("many", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            n = 0
            try:
                for i in range(72):
                    ctx.obj.put(f"o{i}", i, type="int", ns=f"many/{i % 9}")
                    n += 1
            except LimitExceeded as e:
                return {"stored": n, "quota": e.details["quota"]}
            return {"stored": n}
    """, caps=["obj:rw:many/*"])
    rec = run_proc(qsup, img)
    assert rec.result == {"stored": 20, "quota": "objects"}


def test_children_share_their_trees_quota(qsup: Supervisor, make_image: MakeImage) -> None:
    make_image("filler", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            n = 0
            try:
                while n < 100:
                    ctx.obj.put(f"k{n}", n, type="int")
                    n += 1
            except LimitExceeded as e:
                return {"stored": n, "quota": e.details["quota"], "root": e.details["root_pid"]}
            return {"stored": n}
    """)
    img = make_image("parent", """
        def main(ctx, args):
            for i in range(12):
                ctx.obj.put(f"mine{i}", i, type="int")
            kid = ctx.proc.spawn("filler")
            return {"kid": ctx.proc.wait(kid)["result"], "me": ctx.proc.getpid()}
    """, caps=["proc:spawn:filler"])
    rec = run_proc(qsup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["kid"] == {"stored": 8, "quota": "objects", "root": rec.pid}
    assert qsup.store.tree_usage(rec.pid).objects == 20


def test_deleting_objects_gives_the_tree_its_bytes_back(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("recycler", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            blob = "x" * (512 * 1024)
            for i in range(3):
                ctx.obj.put(f"b{i}", blob)
            try:
                ctx.obj.put("b3", blob)
                return {"refused": False}
            except LimitExceeded:
                pass
            ctx.obj.delete("b0")
            ctx.obj.put("b3", blob)
            return {"refused": True, "names": [o["name"] for o in ctx.obj.list()]}
    """)
    rec = run_proc(qsup, img)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"refused": True, "names": ["b1", "b2", "b3"]}
    assert qsup.store.tree_usage(rec.pid) == Usage(object_bytes=3 * (512 * 1024 + 2),
                                                   objects=3)


def test_appending_past_the_write_quota_is_refused_and_the_file_stops_there(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("appender", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            chunk = b"z" * (300 * 1024)
            n = 0
            try:
                for _ in range(320):  # 96 MiB if nothing stopped it
                    ctx.fs.write_bytes("big.bin", chunk, append=True)
                    n += 1
            except LimitExceeded as e:
                return {"appends": n, "type": type(e).__name__, "details": e.details,
                        "message": e.message, "size": ctx.fs.stat("big.bin")["size"]}
            return {"appends": n}
    """, caps=["fs:rw:./**"])
    rec = run_proc(qsup, img)
    assert rec.exit_reason == "returned", rec.error
    r = rec.result
    assert (r["appends"], r["type"]) == (3, "LimitExceeded")
    assert r["details"] == {"quota": "write_bytes", "usage": 3 * 300 * 1024,
                            "asked": 300 * 1024, "limit": MiB, "root_pid": rec.pid}
    assert "write_bytes quota of 1048576 bytes (1MiB) ([limits] write_bytes" in r["message"]
    assert r["size"] == 3 * 300 * 1024
    assert (Path(rec.cwd) / "big.bin").stat().st_size == 3 * 300 * 1024
    assert qsup.store.tree_usage(rec.pid).write_bytes == 3 * 300 * 1024


def test_whole_file_writes_count_too_and_a_failed_write_is_not_charged(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("rewriter", """
        from agentlibos.errors import LibOSError, LimitExceeded
        def main(ctx, args):
            ctx.fs.mkdir("adir")
            try:
                ctx.fs.write_bytes("adir", b"q" * 1000)  # a directory: fails, refunded
                failed = None
            except LibOSError as e:
                failed = type(e).__name__
            n = 0
            try:
                while n < 100:
                    ctx.fs.write_bytes("same.bin", b"r" * (200 * 1024))
                    n += 1
            except LimitExceeded as e:
                return {"writes": n, "quota": e.details["quota"], "usage": e.details["usage"],
                        "failed": failed}
            return {"writes": n}
    """, caps=["fs:rw:./**"])
    rec = run_proc(qsup, img)
    assert rec.exit_reason == "returned", rec.error
    # Rewriting one file 200 KiB at a time: 5 fit in 1 MiB; the failed write cost nothing.
    r = rec.result
    assert (r["writes"], r["quota"], r["usage"]) == (5, "write_bytes", 5 * 200 * 1024)
    assert r["failed"] not in (None, "LimitExceeded", "InternalError")


def test_checkpoints_copying_an_agents_objects_are_charged_to_its_tree(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("cpbomb", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            ctx.obj.put("big", "x" * 600_000)
            made = 0
            for _ in range(50):
                try:
                    ctx.checkpoint()
                except LimitExceeded as e:
                    return {"made": made, "message": e.message}
                made += 1
            return {"made": made}
    """)
    pid = qsup.submit_run(str(img), {})
    assert qsup.run_until(lambda: not qsup.tree_live(pid), 60)
    rec = qsup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    # 2 MiB of object bytes: the object itself and two copies of it, not fifty.
    assert rec.result["made"] == 2, rec.result
    assert rec.result["message"].startswith("proc.checkpoint: a checkpoint of "), rec.result
    assert len(qsup.store.checkpoint_list(pid)) == 2


def test_event_posts_are_charged_to_the_posters_tree_as_writes(
    qsup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("evbomb", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            posted = 0
            for _ in range(20):
                try:
                    ctx.events.post("flood", "x" * 300_000)
                except LimitExceeded as e:
                    return {"posted": posted, "message": e.message}
                posted += 1
            return {"posted": posted}
    """, caps=["event:post:*"])
    pid = qsup.submit_run(str(img), {})
    assert qsup.run_until(lambda: not qsup.tree_live(pid), 60)
    rec = qsup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["posted"] == 3, rec.result  # 1 MiB of writes: three 300 kB posts
    assert rec.result["message"].startswith("event.post: a post of 300007 bytes"), rec.result
    assert qsup.store.event_last_id() == 3  # the refused one left nothing
