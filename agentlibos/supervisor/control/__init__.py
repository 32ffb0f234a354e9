"""The operator's control channel: the server, the client calls, and one module per op.

Each operation is a function ``op(ctx, request, respond)`` in a module of its own,
listed in :data:`OPS`; :class:`ControlContext` is all an operation may use.
"""

from typing import TYPE_CHECKING

from agentlibos.lazy import lazy_exports

if TYPE_CHECKING:
    from agentlibos.supervisor.control.context import ControlContext
    from agentlibos.supervisor.control.ops import OPS, handle
    from agentlibos.supervisor.control.server import (
        ControlServer,
        Responder,
        control_call,
        host_pid_alive,
        ping,
    )

__all__ = ["OPS", "ControlContext", "ControlServer", "Responder", "control_call", "handle",
           "host_pid_alive", "ping"]

# Loaded on first use (agentlibos.lazy): a CLI command that only calls a running daemon
# needs the client half (server.py), not the ops and the supervisor they reach into.
__getattr__ = lazy_exports(__name__, {
    "ControlContext": "context", "OPS": "ops", "handle": "ops", "ControlServer": "server",
    "Responder": "server", "control_call": "server", "ping": "server",
    "host_pid_alive": "server"})
