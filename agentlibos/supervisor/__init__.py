"""The supervisor: the loop, the process table and the services behind the syscalls.

The names below are loaded on first use (PEP 562): a command that only talks to a
running daemon (``agentlibos.supervisor.control``) must not pay for importing the whole
supervisor, which is most of a CLI call's start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentlibos.lazy import lazy_exports

if TYPE_CHECKING:
    from agentlibos.supervisor.processes import LiveProcess
    from agentlibos.supervisor.supervisor import Supervisor

__all__ = ["LiveProcess", "Supervisor"]

_WHERE = {"LiveProcess": "processes", "Supervisor": "supervisor"}

__getattr__ = lazy_exports(__name__, _WHERE)
