"""Commands that act on the store themselves when no supervisor runs: ``event post``,
``kill`` and ``caps revoke`` (``approve``, ``deny`` and ``answer`` do the same in
:mod:`.deciding`). They write what a supervisor would have written, under the home's
lock, so that none starts in the middle and serves a store half written; the next one
to start finds the records and acts on them (a waiter resumed gets the post, a killed
process is not resumed, a revoked capability is not rebuilt)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from agentlibos.config import Paths
from agentlibos.errors import Conflict, Unavailable
from agentlibos.store import Store, open_store
from agentlibos.supervisor.lock import lock_home

# How the stderr notes name what comes next, said once.
RESUMED_BY = "`agentlibos serve`, or `agentlibos resume PID`"


@contextmanager
def locked_store(paths: Paths) -> Iterator[Store]:
    """The home's store, writable, while this command holds the home's lock. The caller
    has made sure the store exists (nothing to act on otherwise) and that no supervisor
    answers; one that holds the lock without answering is starting or stopping."""
    try:
        fd = lock_home(paths)
    except Conflict:
        raise Unavailable(f"a supervisor holds {paths.lock} but does not answer on "
                          f"{paths.control_endpoint}: it is starting or stopping; try "
                          "again") from None
    try:
        store = open_store(paths.db)
        try:
            yield store
        finally:
            store.close()
    finally:
        os.close(fd)
