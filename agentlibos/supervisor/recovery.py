"""Cleaning up after a supervisor that died without stopping (kill -9, power loss).

Processes it ran are recorded as ended (``supervisor-lost``); socket files, scratch
directories and run-time JIT tools of the dead supervisor are removed. Durable
execution will turn the first step into resuming them.
"""

from __future__ import annotations

import contextlib
import time

from agentlibos.config import Paths
from agentlibos.providers.fs import discard_tree
from agentlibos.store import Store


def recover(store: Store, paths: Paths) -> None:
    now = time.time()
    with store.batch():
        lost = set(store.mark_orphans("supervisor-lost", now))
        for pid in sorted(lost):
            store.append_audit(pid, "proc.exit", f"proc:{pid}", "info",
                               {"reason": "supervisor-lost"})
        # Their open asks are closed: nobody waits for the answer any more.
        for ask in store.ask_list():
            if ask.pid in lost:
                store.ask_decide(ask.id, "expired", reason="the supervisor was lost")
    for sock_name in ("broker.sock", "control.sock"):
        with contextlib.suppress(FileNotFoundError):
            (paths.run / sock_name).unlink()
    for entry in paths.scratch.iterdir():
        discard_tree(entry)
    # Tools registered by processes of a supervisor that died went with them.
    discard_tree(paths.home / "jit")
