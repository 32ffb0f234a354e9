"""The dispatch journals every top-level call of a real process, in order, with its digest.

Replay (durable execution) builds on this: each call's sequence number, name, argument
digest and outcome are in the store, committed with the call's audit records.
"""

from __future__ import annotations

import json

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc


def test_every_call_of_a_process_is_journaled_in_order_with_its_outcome(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("j", """
        from agentlibos.errors import NotFound
        def main(ctx, args):
            ctx.obj.put("a", {"x": 1})
            try:
                ctx.obj.get("missing")
            except NotFound:
                pass
            return ctx.obj.get("a")
    """)
    rec = run_proc(sup, img)
    assert rec.result == {"x": 1}
    entries = sup.store.journal_entries(rec.pid)
    calls = [e.call for e in entries]
    assert calls == ["proc.start", "obj.put", "obj.get", "obj.get", "proc.exit"]
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert entries[1].status == "ok"
    # The digest identifies the call's arguments: the two obj.gets name other objects.
    assert entries[2].digest != entries[3].digest
    assert all(len(e.digest) == 64 for e in entries)
    missing = entries[2]
    assert missing.status == "error"
    assert json.loads(missing.result or "{}")["type"] == "NotFound"
    assert json.loads(entries[3].result or "{}")["result"]["value"] == {"x": 1}


def test_a_tools_own_syscalls_are_part_of_its_journaled_call(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("t", """
        def main(ctx, args):
            ctx.fs.write_text("f.txt", "hello")
            return ctx.tools.call("read", {"path": "f.txt"})
    """, caps=["fs:rw:./**"], tools={"read": "builtin:fs.read"})
    rec = run_proc(sup, img)
    assert rec.state == "exited", rec.error
    calls = [e.call for e in sup.store.journal_entries(rec.pid)]
    assert calls == ["proc.start", "fs.write", "tool.call", "proc.exit"]
