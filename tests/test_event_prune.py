"""Event posts are pruned: the table keeps only what a waiter may still be given.

Every post is a row, so a waiter armed again from its journal (after a restart) can be
given a post made while it was gone. Without pruning the table grew with every post for
as long as the home existed. Here: a real supervisor, real agents, the real SQLite
store; the waiter is evicted and its supervisor stopped, the post it waits for is made
with no supervisor running (`agentlibos event post`, offline), a thousand more after it,
and the next supervisor still hands it the right one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agentlibos.config import Paths
from agentlibos.kernel.policy import parse_policy
from agentlibos.store import SQLiteStore
from agentlibos.supervisor.events import PRUNE_EVERY
from agentlibos.supervisor.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.durable_helpers import cli
from tests.helpers import write_image

ALLOW = parse_policy('allow = ["*:*:**"]\ndefault = "deny"\n', "allow.toml")


def _ids(paths: Paths) -> list[int]:
    with sqlite3.connect(paths.db) as db:
        return [r[0] for r in db.execute("SELECT id FROM events ORDER BY id")]


def test_posts_no_waiter_can_be_given_are_pruned_and_a_resumed_waiter_still_gets_its_own(
    paths: Paths, tmp_path: Path
) -> None:
    (paths.home / "config.toml").write_text('[durable]\nevict_after = "200ms"\n')
    img = write_image(tmp_path, "waiter", """
        def main(ctx, args):
            return ctx.events.wait("go")
    """, caps=["event:wait:go"])
    extra = 76
    sup = Supervisor(paths, mode="daemon", sandbox=default_sandbox())
    sup.start()
    try:
        for i in range(PRUNE_EVERY + extra):  # nobody waits: all but the newest can go
            sup.events.post("noise", i, None)
        ids = _ids(paths)
        assert ids == list(range(PRUNE_EVERY, PRUNE_EVERY + extra + 1)), ids[:3]
        pid = sup.submit_run(str(img), {}, policy=ALLOW)
        assert sup.run_until(lambda: sup.store.get_process(pid).evicted, 30)
        cursor = sup.store.event_last_id()
        for i in range(PRUNE_EVERY):  # its cursor holds: only what came before it goes
            sup.events.post("noise", i, None)
        ids = _ids(paths)
        assert ids == list(range(cursor + 1, cursor + PRUNE_EVERY + 1)), (ids[:3], cursor)
    finally:
        sup.stop()
    # No supervisor runs: the post goes straight to the store; then enough after it to
    # prune, which must keep it (the waiter's cursor lies before it).
    r = cli(paths.home, "event", "post", "go", "--data", '"hello"')
    assert r.returncode == 0, r.stderr
    store = SQLiteStore(paths.db)
    try:
        for i in range(PRUNE_EVERY):
            store.event_append("noise", i, None)
        store.events_prune()
        store.commit_now()
    finally:
        store.close()
    ids = _ids(paths)
    assert ids[0] == cursor + 1 and len(ids) == 2 * PRUNE_EVERY + 1, (ids[:3], cursor)
    sup = Supervisor(paths, mode="daemon", sandbox=default_sandbox())
    sup.start()
    try:
        # Armed again from its journal at start, it found the post at once (or will).
        assert sup.run_until(lambda: not sup.tree_live(pid), 60)
        rec = sup.store.get_process(pid)
        assert rec.exit_reason == "returned", rec.error
        assert rec.result == "hello", rec.result
        sup.events.post("late", None, None)
        # Nobody waits now: the next prune leaves only the newest post.
        assert sup.store.events_prune() == 2 * PRUNE_EVERY + 1
        assert _ids(paths) == [cursor + 2 * PRUNE_EVERY + 2]
    finally:
        sup.stop()
