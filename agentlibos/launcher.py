"""Starting a root AgentProcess: on the running daemon if there is one, else embedded."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from agentlibos.config import Paths
from agentlibos.errors import Conflict, Unavailable
from agentlibos.kernel.image import load_image
from agentlibos.kernel.policy import Policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.control import control_call, ping


@contextlib.contextmanager
def signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def resolve_image_arg(ref: str) -> str:
    """A directory becomes an absolute path (validated now); a name stays a name."""
    p = Path(ref)
    if "/" in ref or ref.startswith(".") or p.is_dir():
        img = load_image(p)  # raises ImageError with the file and the problem
        return str(img.path)
    return ref


def run_image(
    paths: Paths,
    image: str,
    args: dict[str, Any],
    *,
    cwd: str | None = None,
    policy: Policy | None = None,
    on_start: Callable[[int], None] | None = None,
    sandbox: SandboxConfig | None = None,
) -> ProcessRecord | dict[str, Any]:
    """Run an image to completion, on the daemon if one is up, else on an embedded one."""
    paths.ensure()
    deadline = time.monotonic() + 10
    while True:
        if ping(paths.control_endpoint) is not None:
            req: dict[str, Any] = {"op": "run", "image": image, "args": args, "cwd": cwd,
                                   "wait": True}
            if policy is not None:
                req["policy_text"], req["policy_source"] = policy.text, policy.source
            return dict(control_call(paths.control_endpoint, req, timeout_s=None)["record"])
        sup = Supervisor(paths, mode="embedded", sandbox=sandbox)
        try:
            sup.start()
        except Conflict:
            # Another supervisor holds the lock; it binds its control socket right after
            # taking the lock, so wait for it to answer.
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"another supervisor holds {paths.lock} but does not answer on "
                    f"{paths.control_endpoint}"
                ) from None
            time.sleep(0.05)
            continue
        break
    interrupted = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        sup.request_stop()

    try:
        with signals(on_signal):
            pid = sup.submit_run(image, args, cwd=cwd, policy=policy)
            if on_start is not None:
                on_start(pid)
            # Serve until this tree is done and nobody else (a `run` that found us via
            # the control socket) still has a live process here.
            sup.run_until(lambda: not sup.live)
            if interrupted:
                for p in list(sup.live):
                    sup.terminate(p, "killed", "interrupted by the operator")
                sup.settle(timeout_s=sup.config.kill_grace_s + 5)
            return sup.store.get_process(pid)
    finally:
        sup.stop()
        if interrupted:
            raise KeyboardInterrupt
