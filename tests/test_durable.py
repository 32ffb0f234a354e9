"""Durable execution inside one supervisor: resume by replay after an accident, and
divergence (docs/durability.md). Crash barriers, restarts, eviction and the CLI are in
tests/test_durable_crash.py and tests/test_cli_durable.py."""

from __future__ import annotations

import os
import signal

from agentlibos.supervisor.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc


def _audits(sup: Supervisor, pid: int, call: str) -> int:
    return sum(1 for a in sup.store.audit_records(pid=pid) if a.call == call)


def _crash(sup: Supervisor, pid: int, calls: int) -> None:
    """Wait until ``pid`` journaled ``calls`` calls, then kill its host process."""
    assert sup.run_until(lambda: len(sup.store.journal_entries(pid, limit=10_000)) >= calls,
                         20)
    host = sup.store.get_process(pid).host_pid
    assert host is not None
    os.kill(host, signal.SIGKILL)


def test_a_crashed_process_resumes_and_replays_without_acting_again(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("worker", """
        import time
        def main(ctx, args):
            for i in range(50):
                ctx.obj.put(f"k{i}", i)
            big = ctx.fs.read_bytes("big.bin")   # kept in the journal by digest only
            t = ctx.clock.now()
            ctx.fs.write_text("done.txt", "x")
            time.sleep(1.5)                       # killed here, the first time
            return {"sum": sum(ctx.obj.get(f"k{i}") for i in range(50)), "t": t,
                    "big": len(big)}
    """, caps=["fs:rw:./**"])
    cwd = sup.paths.home / "cwd"
    cwd.mkdir()
    (cwd / "big.bin").write_bytes(os.urandom(200_000))
    pid = sup.submit_run(str(img), {}, cwd=str(cwd))
    _crash(sup, pid, 53)
    first_t = sup.store.journal_entries(pid, after_seq=51, limit=1)[0].result
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert rec.state == "exited", rec.error
    assert rec.resumes == 1
    assert rec.result["sum"] == sum(range(50)) and rec.result["big"] == 200_000
    # The clock is what the journal said the first time, not a new reading.
    assert first_t is not None and repr(rec.result["t"]) in first_t
    # Replay acted on nothing: 50 puts audited once each, one write.
    assert _audits(sup, pid, "obj.put") == 50
    assert _audits(sup, pid, "fs.write") == 1
    entries = sup.store.journal_entries(pid, limit=10_000)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert all(e.status in ("ok", "error") for e in entries)
    assert _audits(sup, pid, "proc.resume") == 1


def test_a_process_that_does_otherwise_on_replay_is_stopped_as_diverged(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("random", """
        import random, time
        def main(ctx, args):
            ctx.obj.put("r", random.random())   # nondeterminism outside a syscall
            time.sleep(60)
    """)
    pid = sup.submit_run(str(img), {})
    _crash(sup, pid, 1)
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert (rec.state, rec.exit_reason) == ("failed", "diverged")
    assert "call 1" in (rec.error or "")
    diverged = [a for a in sup.store.audit_records(pid=pid) if a.call == "proc.diverged"]
    assert diverged and diverged[0].detail["seq"] == 1


def test_max_resumes_bounds_a_process_that_keeps_crashing(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("crashy", """
        import os
        def main(ctx, args):
            ctx.obj.put("x", 1)
            os._exit(3)   # dies without a word: a crash, as far as the supervisor knows
    """, lifecycle={"max_resumes": 2})
    pid = sup.submit_run(str(img), {})
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert (rec.state, rec.exit_reason, rec.resumes) == ("failed", "crashed", 2)
    assert _audits(sup, pid, "obj.put") == 1


def test_spawns_past_the_supervisors_file_descriptors_are_refused_not_fatal(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Each process with a host process costs the supervisor file descriptors; past
    # RLIMIT_NOFILE libzmq would abort it. Two slots here: the parent and one child.
    sup.table.host_slots = 2
    img = make_image("parent", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            first = ctx.proc.spawn("kid")
            try:
                ctx.proc.spawn("kid")
                second = "spawned"
            except LimitExceeded as e:
                second = str(e)
            ctx.proc.wait(first)
            return second
    """, caps=["proc:spawn:kid", "proc:wait:kid"])
    make_image("kid", "import time\ndef main(ctx, args):\n    time.sleep(0.5)\n")
    rec = run_proc(sup, img)
    assert rec.state == "exited", rec.error
    assert "file descriptor" in rec.result
