"""The zygote forks with libc's fork(), not os.fork() (docs: density): what CPython's
after-fork hooks would have done must still hold in every agent, pooled or cold.

The hooks it skips repair state another thread could have left half-done; the one that
matters in a single-threaded zygote is random's: two agents must never draw the same
numbers. Threads must still work in an agent (the SDK's ZeroMQ context starts two, and
agents may start their own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

DRAW = '''
import os, random, threading

def main(ctx, args):
    box = []
    t = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    t.start()
    t.join()
    return {"random": [random.random() for _ in range(4)],
            "getrandbits": random.getrandbits(64),
            "main": threading.current_thread() is threading.main_thread(),
            "thread_ran": len(box) == 1 and box[0] != threading.get_native_id(),
            "native_id": threading.get_native_id(), "pid": os.getpid()}
'''


@pytest.mark.privileged
@pytest.mark.parametrize("pool_size", [0, 2])
def test_agents_forked_by_the_zygote_draw_different_random_numbers_and_run_threads(
        paths: Paths, make_image: MakeImage, pool_size: int) -> None:
    img = make_image("draw", DRAW)
    with Supervisor(paths, SupervisorConfig(pool_size=pool_size)) as sup:
        results = []
        for _ in range(4):
            rec = run_proc(sup, img)
            assert rec.exit_reason == "returned", rec.error
            results.append(rec.result)
    draws = {tuple(r["random"]) for r in results}
    assert len(draws) == len(results), "two agents drew the same random numbers"
    assert len({r["getrandbits"] for r in results}) == len(results)
    for r in results:
        assert r["main"] and r["thread_ran"]


def test_a_run_started_in_a_directory_holding_another_agentlibos_uses_its_own_package(
    tmp_path: Path, make_image: MakeImage, home: Path
) -> None:
    # A user runs the README's first command in the source checkout: the cwd holds an
    # `agentlibos` tree that is not the installed package. The zygote must preload the
    # package the supervisor runs (the one bound into every sandbox), not the cwd's.
    shadow = tmp_path / "checkout"
    (shadow / "agentlibos").mkdir(parents=True)
    (shadow / "agentlibos" / "__init__.py").write_text(
        "raise ImportError('the shadow package in the cwd was imported')\n")
    img = make_image("plain", "def main(ctx, args):\n    return ctx.proc.getpid()\n")
    r = subprocess.run([str(Path(sys.executable).parent / "agentlibos"), "run", str(img),
                        "--json"], cwd=shadow, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "AGENTLIBOS_HOME": str(home)}, check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["result"] == 1
