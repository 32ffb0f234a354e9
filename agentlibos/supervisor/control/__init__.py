"""The operator's control channel: the server, the client calls, and one module per op.

Each operation is a function ``op(ctx, request, respond)`` in a module of its own,
listed in :data:`OPS`; :class:`ControlContext` is all an operation may use.
"""

from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.ops import OPS, handle
from agentlibos.supervisor.control.server import (
    ControlServer,
    Responder,
    control_call,
    ping,
)

__all__ = ["OPS", "ControlContext", "ControlServer", "Responder", "control_call", "handle",
           "ping"]
