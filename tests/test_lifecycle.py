"""Nothing leaks: processes are reaped, fds closed, files and sockets removed."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.supervisor import Supervisor
from agentlibos.zygote.child import POOL_TITLE
from agentlibos.zygote.forker import FORKER_TITLE
from tests.helpers import MakeImage, fd_targets, run_proc


def _fds() -> tuple[set[str], int]:
    """This process's fds: each by number, but sockets by count. Each pooled process
    holds a connection to the broker (docs/sandbox.md); a refilled pool's connections
    are new ones, under new numbers, as many as before."""
    fds = fd_targets()
    sockets = {fd for fd, target in fds.items() if target.startswith("socket:")}
    return set(fds) - sockets, len(sockets)


def _pool_full(sup: Supervisor) -> bool:
    return len(sup.sandbox.pool_ready) >= sup.config.pool_size


def test_runs_leave_no_child_process_fd_or_scratch_dir_behind(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("leaf", """
        import ctypes, os, time
        def main(ctx, args):
            # A forked helper the agent "forgets": it must not outlive the agent. It names
            # itself (PR_SET_NAME) so the host can look for it: its pid is the namespace's.
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, b"alos-leftover", 0, 0, 0)
                time.sleep(600)
                os._exit(0)
            return os.getpid()
    """)
    img = make_image("tree", """
        def main(ctx, args):
            return [ctx.proc.wait(ctx.proc.spawn("leaf"))["result"] for _ in range(3)]
    """, caps=["proc:spawn:leaf"])
    run_proc(sup, img)  # warm up: lazily opened fds (the log, sqlite's WAL) settle
    assert sup.run_until(lambda: _pool_full(sup), 10)
    before = _fds()
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", rec.error
    zygote = psutil.Process(sup.zygote.pid)

    def left() -> list[psutil.Process]:
        # Pooled processes waiting for their assignment (docs/sandbox.md), and the
        # forker that forks them, are the zygote's too; none of them ran an agent.
        out = []
        for p in zygote.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.name() not in (POOL_TITLE, FORKER_TITLE):
                    out.append(p)
        return out

    assert sup.run_until(lambda: not left(), 10), left()

    def helpers_gone() -> bool:
        return not [p for p in psutil.process_iter(["name", "status"])
                    if p.info["name"] == "alos-leftover" and p.info["status"] != "zombie"]

    assert sup.run_until(helpers_gone, 10)
    # (libzmq closes a connection's fd on its own thread, soon after the peer ended.)
    assert sup.run_until(lambda: _pool_full(sup) and _fds() == before, 10), (_fds(), before)
    assert list(sup.paths.scratch.iterdir()) == []
    assert sup.live == {}


def test_stop_removes_sockets_ends_the_zygote_and_releases_the_lock(
    paths: Paths, make_image: MakeImage
) -> None:
    before = _fds()
    sup = Supervisor(paths)
    sup.start()
    zygote_pid = sup.zygote.pid
    assert (paths.run / "broker.sock").exists() and (paths.run / "control.sock").exists()
    run_proc(sup, make_image("one", "def main(ctx, args):\n    return 1\n"))
    sup.stop()
    assert not (paths.run / "broker.sock").exists()
    assert not (paths.run / "control.sock").exists()
    assert not psutil.pid_exists(zygote_pid) or psutil.Process(zygote_pid).status() == "zombie"
    assert _fds() == before
    again = Supervisor(paths)  # the lock was released
    again.start()
    again.stop()


def test_sigterm_is_escalated_to_sigkill_after_the_grace_period(
    paths: Paths, make_image: MakeImage
) -> None:
    img = make_image("stubborn", """
        import signal, time
        def main(ctx, args):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ctx.obj.put("ready", True)
            time.sleep(600)
    """)
    with Supervisor(paths, SupervisorConfig(kill_grace_s=0.3)) as sup:
        pid = sup.submit_run(str(img), {})

        def ready() -> bool:
            try:
                sup.store.get_object(f"proc/{pid}", "ready")
            except Exception:  # noqa: BLE001 - not there yet
                return False
            return True

        assert sup.run_until(ready, 10)
        sup.terminate(pid, "killed", "test")
        assert sup.run_until(lambda: pid not in sup.live, 10)
        rec = sup.store.get_process(pid)
        assert (rec.state, rec.exit_reason) == ("killed", "killed")
        exits = [a for a in sup.store.audit_records(pid=pid) if a.call == "proc.exit"]
        assert exits[-1].detail["status"] is not None
        assert os.WIFSIGNALED(exits[-1].detail["status"])
        assert os.WTERMSIG(exits[-1].detail["status"]) == signal.SIGKILL


def test_a_dead_zygote_fails_its_processes_and_is_replaced(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # on_crash = "fail": not resumed (tests/test_durable.py has the default, resume).
    slow = make_image("slow", "import time\ndef main(ctx, args):\n    time.sleep(600)\n",
                      lifecycle={"on_crash": "fail"})
    pid = sup.submit_run(str(slow), {})
    assert sup.run_until(lambda: sup.store.get_process(pid).state == "running", 10)
    old = sup.zygote.pid
    os.kill(old, signal.SIGKILL)
    assert sup.run_until(lambda: pid not in sup.live, 10)
    rec = sup.store.get_process(pid)
    assert rec.state == "failed" and rec.exit_reason == "crashed"
    assert sup.zygote.pid != old
    assert run_proc(sup, make_image("after", "def main(ctx, args):\n    return 7\n")).result == 7
