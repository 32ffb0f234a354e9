"""Cleaning up the files a supervisor that died without stopping left (kill -9, power loss).

Socket files, scratch directories and run-time JIT tools of the dead supervisor are
removed. Its processes are not touched here: durable execution settles them once the
new supervisor is wired (``Durable.recover``, docs/durability.md).
"""

from __future__ import annotations

import contextlib

from agentlibos.config import Paths
from agentlibos.providers.fs import discard_tree


def clean_after(paths: Paths) -> None:
    for sock_name in ("broker.sock", "control.sock"):
        with contextlib.suppress(FileNotFoundError):
            (paths.run / sock_name).unlink()
    for entry in paths.scratch.iterdir():
        discard_tree(entry)
    # Tools registered by processes of a supervisor that died went with them.
    discard_tree(paths.home / "jit")
