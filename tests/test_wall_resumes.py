"""`[limits] wall` over a process's whole life on host processes (docs/images.md): the
time an evicted wait holds no host process is not counted, every stretch that holds one
is -- across evictions and across a daemon killed under it -- and `started_at` stays
the first start. Real daemons, real agents, real evictions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.durable_helpers import audit_verifies, cli, kill9, ps, wait_until
from tests.helpers import MakeImage, start_daemon, stop_process

pytestmark = [pytest.mark.privileged]

# Host time before the wait, replayed again on the resume: 2 x 3 s, plus the wait's
# second before its eviction, is over a 6 s wall; each stretch alone is well under it.
EVICTED = """
import time
def main(ctx, args):
    time.sleep(3)
    return ctx.events.wait("go")
"""

# 3 s of host time, an audited call, 2 s more: a daemon killed after the call leaves a
# stretch of at least 3 s that only the audit shows; its replay takes 5 s more.
CRASHED = """
import time
def main(ctx, args):
    time.sleep(3)
    ctx.fs.stat(".")
    time.sleep(2)
    return "done"
"""


def _ended(home: Path, pid: int) -> dict[str, object]:
    wait_until(lambda: ps(home)[pid]["state"] not in ("created", "running", "waiting"),
               60, "the process ended")
    return ps(home)[pid]


def test_a_resume_counts_the_stretches_before_its_eviction(
    home: Path, make_image: MakeImage
) -> None:
    (home / "config.toml").write_text('[durable]\nevict_after = "1s"\n')
    image = make_image("evwall", EVICTED, caps=["event:wait:go"], limits={"wall": "6s"})
    daemon = start_daemon(home)
    try:
        r = cli(home, "run", "--detach", str(image))
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        wait_until(lambda: bool(ps(home)[pid]["evicted"]), 30, "evicted")
        first = ps(home)[pid]
        assert first["state"] == "waiting" and first["started_at"] is not None
        assert cli(home, "event", "post", "go").returncode == 0
        row = _ended(home, pid)
        assert (row["state"], row["exit_reason"]) == ("killed", "wall"), row
        # Its age is its life's, not its last stretch's.
        assert row["started_at"] == first["started_at"]
        assert row["ready_at"] != first["ready_at"]  # it did start again
    finally:
        stop_process(daemon, 20)
    audit_verifies(home)


def test_a_stretch_a_crash_cut_short_counts_up_to_its_last_audit_record(
    home: Path, make_image: MakeImage
) -> None:
    image = make_image("crwall", CRASHED, caps=["fs:read:./**"], limits={"wall": "6.5s"})
    daemon: subprocess.Popen[str] = start_daemon(home)
    try:
        r = cli(home, "run", "--detach", str(image))
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        audit = ["audit", "--pid", str(pid), "--call", "fs.stat", "--json"]
        wait_until(lambda: cli(home, *audit).stdout.strip() not in ("", "[]"), 30,
                   "its fs.stat audited")
        kill9(daemon)
        daemon = start_daemon(home)
        row = _ended(home, pid)
        assert (row["state"], row["exit_reason"]) == ("killed", "wall"), row
    finally:
        stop_process(daemon, 20)
