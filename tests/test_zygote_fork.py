"""The zygote forks with libc's fork(), not os.fork() (docs: density): what CPython's
after-fork hooks would have done must still hold in every agent, pooled or cold.

The hooks it skips repair state another thread could have left half-done; the one that
matters in a single-threaded zygote is random's: two agents must never draw the same
numbers. Threads must still work in an agent (the SDK's ZeroMQ context starts two, and
agents may start their own).
"""

from __future__ import annotations

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
