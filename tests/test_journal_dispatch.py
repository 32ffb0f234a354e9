"""The dispatch journals every top-level call of a real process, in order, with its digest.

Replay (durable execution) builds on this: each call's sequence number, name, argument
digest and outcome are in the store, committed with the call's audit records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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
    # proc.start and proc.exit act on the host process itself and are never replayed.
    assert calls == ["obj.put", "obj.get", "obj.get"]
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert entries[0].status == "ok"
    # The digest identifies the call's arguments: the two obj.gets name other objects.
    assert entries[1].digest != entries[2].digest
    assert all(len(e.digest) == 64 for e in entries)
    missing = entries[1]
    assert missing.status == "error"
    assert json.loads(missing.result or "{}")["type"] == "NotFound"
    assert json.loads(entries[2].result or "{}")["result"]["value"] == {"x": 1}


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
    assert calls == ["fs.write", "tool.call"]


def test_a_large_read_is_served_off_the_loop_and_journaled_by_digest(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    img = make_image("bigread", """
        import hashlib
        def main(ctx, args):
            return hashlib.sha256(ctx.fs.read_bytes("big.bin")).hexdigest()
    """, caps=["fs:read:./**"])
    rec = run_proc(sup, img, cwd=tmp_path)
    assert rec.result == hashlib.sha256(data).hexdigest(), rec.error
    read = next(e for e in sup.store.journal_entries(rec.pid) if e.call == "fs.read")
    blob = json.loads(read.result or "{}")["blobs"][0]
    # Not the bytes (1 MiB would be 1.4 MB of base64 in the database): size and digest.
    assert blob == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
