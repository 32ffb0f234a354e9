from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agentlibos.supervisor import Supervisor
from tests.helpers import run_proc


def test_a_process_runs_and_returns_its_result(
    sup: Supervisor, make_image: Callable[..., Path]
) -> None:
    img = make_image("hello", """
        def main(ctx, args):
            return {"pid": ctx.proc.getpid(), "echo": args["x"]}
    """)
    rec = run_proc(sup, img, {"x": [1, 2]})
    assert (rec.state, rec.exit_reason) == ("exited", "returned")
    assert rec.result == {"pid": rec.pid, "echo": [1, 2]}
