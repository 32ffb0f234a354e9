"""The shared supervisor survives hostile agents: no crash, no freeze, no growth.

Each test is a real agent that attacks the supervisor everyone shares through what it
may legitimately send -- strings, numbers, output, trees -- and then the supervisor
must still serve, its timers must still fire, and what it stored must be readable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.providers.fs import remove_tree
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, log_of, run_proc


def _deep_chain(root: Path, depth: int) -> None:
    """root/d/d/.../d, ``depth`` deep, made relative to directory descriptors (its full
    path passes PATH_MAX, where os.makedirs fails)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def test_an_error_that_is_not_valid_text_is_stored_and_the_daemon_lives(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("surrogate", """
        def main(ctx, args):
            raise RuntimeError("bad \\udc80 and \\ud800")
    """)
    rec = run_proc(sup, img)
    assert rec.exit_reason == "error"
    assert rec.error is not None and "bad \\udc80 and \\ud800" in rec.error
    rec2 = run_proc(sup, make_image("fine", "def main(ctx, args):\n    return 1\n"))
    assert rec2.result == 1
    assert sup.store.verify_audit().ok


def test_a_nan_timeout_is_refused_and_every_timer_still_fires(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Before: a NaN deadline at the top of the timer heap stopped every timer, so wall
    # limits and the SIGKILL after SIGTERM never came.
    make_image("sleepy", "import time\ndef main(ctx, args):\n    time.sleep(600)\n")
    img = make_image("nan", """
        import math
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            kid = ctx.proc.spawn("sleepy")
            out = []
            for t in (float("nan"), float("inf"), float("-inf")):
                try:
                    ctx.proc.wait(kid, timeout=t)
                    out.append("waited")
                except InvalidArgument as e:
                    out.append(str(e))
            return out
    """, caps=["proc:spawn:sleepy"])
    rec = run_proc(sup, img)
    assert rec.state == "exited", rec.error
    assert all("non-finite" in m for m in rec.result), rec.result
    walled = make_image("walled", "import time\ndef main(ctx, args):\n    time.sleep(600)\n",
                        limits={"wall": "2s"})
    t0 = time.monotonic()
    rec = run_proc(sup, walled, timeout_s=20)
    assert rec.exit_reason == "wall" and time.monotonic() - t0 < 10


def test_a_callback_that_raises_fails_alone_and_the_loop_goes_on(
    sup: Supervisor, make_image: MakeImage
) -> None:
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("an injected runtime bug")

    sup.loop.call_later(0, boom)
    sup.loop.call_later(0.01, lambda: fired.append("after"))
    assert sup.run_until(lambda: bool(fired), 5)
    errors = [r for r in sup.store.audit_records() if r.call == "supervisor.error"]
    assert errors and "injected runtime bug" in errors[-1].detail["exception"]
    assert run_proc(sup, make_image("ok", "def main(ctx, args):\n    return 2\n")).result == 2


def test_a_deep_tree_in_scratch_is_removed_at_exit_and_at_start(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("deep", """
        import os
        def main(ctx, args):
            for _ in range(1500):
                os.mkdir("d")
                os.chdir("d")
            return os.getcwd().count("/d")
    """)
    rec = run_proc(sup, img, timeout_s=60)
    assert rec.state == "exited", rec.error
    assert rec.result >= 1500
    assert not (sup.paths.scratch / str(rec.pid)).exists()
    # A tree left behind by a supervisor that died is removed when the next one starts.
    leftover = sup.paths.scratch / "999999"
    _deep_chain(leftover, 1500)
    sup.stop()
    again = Supervisor(sup.paths)
    again.start()
    try:
        assert not leftover.exists()
    finally:
        again.stop()
        remove_tree(str(leftover))
        sup.start()


def test_an_agents_output_is_capped_in_its_log_and_says_so(
    paths: Paths, make_image: MakeImage
) -> None:
    with Supervisor(paths, SupervisorConfig(log_max_bytes=64 << 10),
                    sandbox=default_sandbox()) as s:
        img = make_image("chatty", """
            import sys
            def main(ctx, args):
                line = "x" * 1023 + "\\n"
                for _ in range(4096):  # 4 MiB
                    sys.stdout.write(line)
                sys.stdout.flush()
                return "done"
        """)
        rec = run_proc(s, img, timeout_s=60)
        assert rec.result == "done", rec.error
        log = log_of(s, rec.pid)
        assert len(log.encode()) < (64 << 10) + 200
        assert "log truncated at 64KiB" in log
        assert s.store.get_process(rec.pid).limits["log_max_bytes"] == 64 << 10


@pytest.mark.privileged
def test_agents_show_on_the_host_by_pid_and_image(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("titled", """
        import time
        def main(ctx, args):
            while not ctx.obj.list():
                time.sleep(0.01)
    """)
    pid = sup.submit_run(str(img), {})
    assert sup.run_until(lambda: sup.store.get_process(pid).state == "running", 10)
    host_pid = sup.store.get_process(pid).host_pid
    assert host_pid is not None
    assert " ".join(psutil.Process(host_pid).cmdline()).startswith(f"agentlibos: {pid} titled")
    with sup.store.transaction():
        sup.store.put_object(f"proc/{pid}", "go", "int", "1", None, None, sup.config.object_quota)
    assert sup.run_until(lambda: not sup.tree_live(pid), 10)
