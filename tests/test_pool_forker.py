"""The pool's forker (zygote/forker.py): a quiet process that forks every pooled process,
so that what each one owns copy-on-write is not the zygote's whole working set.

From the host: pooled processes are the forker's children, their exits reach the
supervisor through the zygote, and a forker that dies takes its agents with it (they are
reported ended, never left unsupervised) and is replaced. From the allocator's side:
``fill_pools`` plugs the free blocks a child would otherwise scatter its objects into.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.supervisor import Supervisor
from agentlibos.zygote.child import POOL_TITLE
from agentlibos.zygote.forker import FORKER_TITLE, POOL_NICE
from tests.helpers import MakeImage, host_processes, run_proc

IDLER = """
def main(ctx, args):
    ctx.clock.sleep(3600)
"""

QUICK = """
def main(ctx, args):
    return ctx.proc.getpid()
"""


def children(ppid: int, title: str) -> set[int]:
    return {pid for pid, (parent, cmdline) in host_processes().items()
            if parent == ppid and cmdline.startswith(title.encode())}


@pytest.mark.privileged
def test_a_killed_forker_takes_its_agents_with_it_and_the_pool_comes_back(
        paths: Paths, make_image: MakeImage) -> None:
    idler = make_image("idler", IDLER, caps=["clock:sleep:*"])
    quick = make_image("quick", QUICK)
    with Supervisor(paths, SupervisorConfig(pool_size=2)) as sup:
        zygote = sup.zygote.pid
        assert sup.run_until(lambda: len(sup.sandbox.pool_ready) == 2, 20)
        (forker,) = children(zygote, FORKER_TITLE)
        pid = sup.submit_run(str(idler), {})
        assert sup.run_until(lambda: pid in sup.live and bool(sup.live[pid].waits), 20)
        host = sup.live[pid].host_pid
        assert int(Path(f"/proc/{host}/stat").read_text().rsplit(")", 1)[1].split()[1]) \
            == forker, "a pooled agent is the forker's child"

        os.kill(forker, 9)
        # Its agents die with it (PDEATHSIG) and come to the zygote, its subreaper,
        # which reports them: nothing is left running unsupervised. (This one was in a
        # durable sleep, so the supervisor keeps it to resume, with no host process.)
        assert sup.run_until(lambda: pid not in sup.live or sup.live[pid].host_pid != host, 20)
        assert not Path(f"/proc/{host}").exists()
        # Another forker refills the pool, and its processes serve agents.
        assert sup.run_until(lambda: len(sup.sandbox.pool_ready) == 2
                        and bool(children(zygote, FORKER_TITLE) - {forker}), 20)
        done = run_proc(sup, quick)
        assert done.exit_reason == "returned", done.error



@pytest.mark.privileged
def test_the_pool_refills_at_low_priority_and_an_assigned_agent_runs_at_normal_priority(
        paths: Paths, make_image: MakeImage) -> None:
    """A refill must not take the CPU from the spawn that emptied its slot: the forker
    and its waiting processes run at POOL_NICE; the zygote sets a process back to 0
    before it hands it an agent."""
    idler = make_image("idler", IDLER, caps=["clock:sleep:*"])
    with Supervisor(paths, SupervisorConfig(pool_size=2)) as sup:
        zygote = sup.zygote.pid
        assert sup.run_until(lambda: len(sup.sandbox.pool_ready) == 2, 20)
        (forker,) = children(zygote, FORKER_TITLE)
        waiting = children(forker, POOL_TITLE)
        assert len(waiting) == 2
        assert os.getpriority(os.PRIO_PROCESS, forker) == POOL_NICE
        assert all(os.getpriority(os.PRIO_PROCESS, w) == POOL_NICE for w in waiting)
        pid = sup.submit_run(str(idler), {})
        assert sup.run_until(lambda: pid in sup.live and bool(sup.live[pid].waits), 20)
        host = sup.live[pid].host_pid
        assert host in waiting, "the agent went to a pooled process"
        assert os.getpriority(os.PRIO_PROCESS, host) == 0
        assert os.getpriority(os.PRIO_PROCESS, zygote) == 0

FILL_PROBE = r"""
import json, os, sys
from agentlibos.zygote import forker
from agentlibos.zygote.fork import fork

def private_kib():
    total = 0
    with open("/proc/self/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Private_"):
                total += int(line.split()[1])
    return total

# Leave holes behind, as an interpreter that imported and freed things does.
junk = [[str(i) * (i % 40), (i,) * (i % 9), {i: i}] for i in range(20000)]
del junk[::3]
before = sum(forker._free_blocks().values())
plugged = forker.fill_pools() if sys.argv[1] == "fill" else 0
after = sum(forker._free_blocks().values())
grew = []
for _ in range(3):
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(r)
        start = private_kib()
        keep = [str(i) * (i % 30) for i in range(3000)] + [(i, i) for i in range(3000)]
        os.write(w, str(private_kib() - start).encode())
        os._exit(0)
    os.close(w)
    grew.append(int(os.read(r, 64)))
    os.waitpid(pid, 0)
print(json.dumps({"before": before, "plugged": plugged, "after": after, "grew": grew}))
"""


def _probe(mode: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", FILL_PROBE, mode], capture_output=True,
                         text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_fill_pools_plugs_free_blocks_so_a_child_packs_what_it_allocates() -> None:
    plain, filled = _probe("plain"), _probe("fill")
    assert filled["before"] > 1000
    assert filled["plugged"] >= filled["before"]
    assert filled["after"] < filled["before"] // 20
    # The same allocations copy fewer shared pages once the holes are plugged.
    assert min(filled["grew"]) < min(plain["grew"]), (plain, filled)
