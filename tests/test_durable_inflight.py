"""An accident while a call is still running off the process: a shell command killed
with its caller's host process, a parent that dies with children running
(docs/durability.md, "An accident in the middle of something"). Real agents, real
sandboxes, a real kill -9 of the agent's host process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentlibos.config import Paths
from agentlibos.kernel.policy import parse_policy
from agentlibos.supervisor.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.durable_helpers import cli, ps, wait_until
from tests.helpers import MakeImage, write_image

pytestmark = [pytest.mark.privileged]

ALLOW = parse_policy('allow = ["*:*:**"]\ndefault = "deny"\n', "allow.toml")


def _kill_host(sup: Supervisor, pid: int) -> None:
    host = sup.store.get_process(pid).host_pid
    assert host is not None
    os.kill(host, signal.SIGKILL)


def test_a_shell_command_cut_off_by_its_callers_crash_puts_it_in_attention(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    img = make_image("sheller", """
        from agentlibos.errors import LibOSError
        def main(ctx, args):
            ctx.obj.put("before", 1)
            try:
                r = ctx.shell.run(["sh", "-c", "echo ran >> shell.log; sleep 30"])
            except LibOSError as e:
                return "refused: " + str(e)
            return r["exit_code"]
    """, caps=["fs:rw:./**", "shell:exec:sh"])
    proj = tmp_path / "proj"
    proj.mkdir()
    pid = sup.submit_run(str(img), {}, cwd=str(proj), policy=ALLOW)
    assert sup.run_until((proj / "shell.log").exists, 30)
    _kill_host(sup, pid)
    # Not redone (a shell command is a `once` effect), not left waiting on a command
    # that no longer runs: the operator is asked.
    assert sup.run_until(lambda: sup.store.get_process(pid).state == "attention", 30)
    rec = sup.store.get_process(pid)
    assert rec.attention is not None
    assert (rec.attention["call"], rec.attention["request"]) == ("shell.exec", "shell:exec:sh")
    assert rec.wait is None
    sup.durable.resolve(pid, "skip")
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert rec.state == "exited", rec.error
    assert rec.result.startswith("refused: ") and "skipped by the operator" in rec.result
    assert (proj / "shell.log").read_text() == "ran\n"  # once, never again


SHELLER = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    try:
        r = ctx.shell.run(["sh", "-c", "echo ran >> shell.log; sleep 30"])
    except LibOSError as e:
        return "refused: " + str(e)
    return r["exit_code"]
"""


def test_run_without_a_daemon_stops_for_the_operator_when_a_crash_cuts_off_a_command(
    make_image: MakeImage, tmp_path: Path
) -> None:
    home, proj = tmp_path / "home", tmp_path / "proj"
    proj.mkdir()
    img = make_image("sheller2", SHELLER, caps=["fs:rw:./**", "shell:exec:sh"])
    policy = tmp_path / "allow.toml"
    policy.write_text('allow = ["*:*:**"]\ndefault = "deny"\n')
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    run = subprocess.Popen([sys.executable, "-m", "agentlibos", "run", str(img), "--cwd",
                            str(proj), "--policy", str(policy), "--json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until((proj / "shell.log").exists, 30, "the command ran")
        host = ps(home)[1]["host_pid"]
        os.kill(host, signal.SIGKILL)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    # It ends (no wait on a command that no longer runs), says what the operator must
    # do, and prints the record it left.
    assert run.returncode == 1, err
    assert "process 1 needs attention" in err and "agentlibos resolve 1" in err
    assert json.loads(out)["state"] == "attention"
    att = json.loads(cli(home, "attention", "--json").stdout)
    assert att == [{"pid": 1, "call": "shell.exec", "request": "shell:exec:sh"}]
    resolved = cli(home, "resolve", "1", "--skip", "--json")
    assert resolved.returncode == 0, resolved.stderr
    rec = json.loads(resolved.stdout)
    assert rec["state"] == "exited" and "skipped by the operator" in rec["result"]
    assert (proj / "shell.log").read_text() == "ran\n"


@pytest.mark.parametrize("parent_waits", [True, False])
def test_a_parent_that_crashes_with_a_child_running_is_resumed_and_so_is_the_child(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path, parent_waits: bool
) -> None:
    # The child's cgroup nests in its parent's, so the parent's host process takes the
    # child's down with it: both died by accident, both are resumed by replay, and the
    # parent's proc.wait gets the child's real end.
    make_image("kid", """
        import time
        def main(ctx, args):
            ctx.fs.write_text(f"kid-{ctx.clock.now()}.txt", "x")
            time.sleep(args["sleep"])
            return {"kid": ctx.proc.getpid()}
    """, caps=["fs:rw:./**"])
    img = make_image("par", """
        import time
        def main(ctx, args):
            c = ctx.proc.spawn("kid", args={"sleep": 2}, caps=["fs:rw:./**"])
            if not args["waits"]:
                time.sleep(3)   # killed here, the first time: no call in flight
            return ctx.proc.wait(c)
    """, caps=["fs:rw:./**", "proc:spawn:kid", "proc:wait:children"])
    proj = tmp_path / "proj"
    proj.mkdir()
    pid = sup.submit_run(str(img), {"waits": parent_waits}, cwd=str(proj), policy=ALLOW)
    assert sup.run_until(lambda: any(proj.glob("kid-*.txt")), 30)
    child = sup.store.children(pid)[0].pid
    _kill_host(sup, pid)
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec, kid = sup.store.get_process(pid), sup.store.get_process(child)
    assert rec.state == "exited", rec.error
    assert (kid.state, kid.exit_reason, kid.resumes) == ("exited", "returned", 1)
    assert rec.result["result"] == {"kid": child} and rec.result["pid"] == child
    assert rec.resumes == 1
    assert len(list(proj.glob("kid-*.txt"))) == 1  # the child's write replayed, not redone


def test_an_evicted_process_whose_image_was_removed_fails_saying_so_when_it_wakes(
    paths: Paths, tmp_path: Path
) -> None:
    (paths.home / "config.toml").write_text('[durable]\nevict_after = "200ms"\n')
    img = write_image(tmp_path / "gone", "waiter", """
        def main(ctx, args):
            return ctx.events.wait("go")
    """, caps=["event:wait:go"])
    sup = Supervisor(paths, sandbox=default_sandbox())
    sup.start()
    try:
        pid = sup.submit_run(str(img), {}, policy=ALLOW)
        assert sup.run_until(lambda: sup.store.get_process(pid).evicted, 30)
        shutil.rmtree(img)
        sup.events.post("go", {"x": 1}, None)
        assert sup.run_until(lambda: not sup.tree_live(pid), 30)
        rec = sup.store.get_process(pid)
        assert (rec.state, rec.exit_reason) == ("failed", "start-failed")
        assert rec.error == (f"cannot start it again: its image directory {img} no longer "
                             "exists")
    finally:
        sup.stop()
