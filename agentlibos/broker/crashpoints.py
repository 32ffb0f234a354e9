"""Crash barriers for the durability tests: ``AGENTLIBOS_CRASH_AT=<barrier>[:<call>]``.

When set, the supervisor ``os._exit``s at that barrier (for any call, or only ``<call>``),
exactly like a kill -9 there: nothing is flushed, nothing is committed. The barriers:

- ``before-effect``: an external effect's intent is committed; the effect has not acted;
- ``after-effect``: the effect has acted; its result is not committed;
- ``after-commit``: the turn that holds the result is committed; the reply is not sent.

Test-only: an operator has no reason to set it. Read once, at import.
"""

from __future__ import annotations

import os
from typing import Final

BARRIERS: Final = ("before-effect", "after-effect", "after-commit")
CRASH_STATUS: Final = 70

_SPEC = os.environ.get("AGENTLIBOS_CRASH_AT", "")
_BARRIER, _, _CALL = _SPEC.partition(":")


def armed(barrier: str) -> bool:
    return barrier == _BARRIER


def crash_at(barrier: str, call: str) -> None:
    if barrier == _BARRIER and (not _CALL or call == _CALL):
        os._exit(CRASH_STATUS)
