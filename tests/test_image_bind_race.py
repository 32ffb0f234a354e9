"""An image directory swapped for a symbolic link after it was resolved is not bound.

A sibling image is run from its directory, which an agent may be able to write (its
shell, or fs capabilities over it). If that directory becomes a link between the
supervisor resolving the image and the agent's tree binding it, the bind must not
follow the link: it would mount whatever the link names (another directory of the
host) as the child's code. Both ways an agent starts are covered: cold (the child's
mount) and pooled (the supervisor's open_tree clone, sent to the pooled process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc, write_image

OUTER = '''
def main(ctx, args):
    kid = ctx.proc.spawn("inner")
    return ctx.proc.wait(kid)
'''


@pytest.mark.privileged
@pytest.mark.parametrize("pool_size", [0, 2])
def test_a_sibling_image_swapped_for_a_link_before_its_bind_does_not_start(
        paths: Paths, make_image: MakeImage, tmp_path: Path, pool_size: int) -> None:
    outer = make_image("outer", OUTER, caps=["proc:spawn:*", "proc:wait:*"])
    inner = make_image("inner", "def main(ctx, args):\n    return 'inner ran'\n")
    # What the link would bind instead: code the agent wrote somewhere it should not run.
    elsewhere = write_image(tmp_path / "elsewhere", "inner",
                            "def main(ctx, args):\n    return 'PWNED'\n")
    with Supervisor(paths, SupervisorConfig(pool_size=pool_size)) as sup:
        real_prepare = sup.sandbox.prepare

        def swapped(pid: int, limits: Any, image_dir: str, *a: Any, **kw: Any) -> Any:
            if image_dir == str(inner):  # resolved already: now the race's swap
                inner.rename(tmp_path / "inner.moved")
                inner.symlink_to(elsewhere)
            return real_prepare(pid, limits, image_dir, *a, **kw)

        sup.sandbox.prepare = swapped  # type: ignore[method-assign]
        assert (sup.sandbox.pool is not None) == bool(pool_size)
        rec = run_proc(sup, outer)
    assert rec.exit_reason == "returned", rec.error
    waited = rec.result
    assert isinstance(waited, dict), waited
    assert waited.get("result") != "PWNED", waited
    assert waited["exit_reason"] == "start-failed", waited
    assert "symbolic link" in (waited.get("error") or ""), waited
