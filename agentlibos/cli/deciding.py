"""How ``approve``, ``deny`` and ``answer`` reach the queue: through the supervisor when
one runs (it wakes the waiting call); else straight into the store, where the process
finds its ask decided when it is resumed (DESIGN.md: approvals answered while no
supervisor ran are honoured)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentlibos.cli.common import control, note, readonly_store
from agentlibos.cli.offline import locked_store
from agentlibos.config import Paths, operator_config
from agentlibos.errors import NotFound
from agentlibos.kernel.approvals import AskRecord
from agentlibos.store import Store
from agentlibos.supervisor.control import ping
from agentlibos.supervisor.decisions import expire_if_late


def decide(paths: Paths, request: dict[str, Any],
           offline: Callable[[Store], AskRecord]) -> dict[str, Any]:
    """The control operation ``request``, or with no supervisor up ``offline(store)``
    under the home's lock (so none starts meanwhile): the decision and its audit record
    in one transaction. Replies ``{"id", "state", ...}`` either way."""
    if (pong := ping(paths.control_endpoint)) is not None:
        return control(paths, request, pong)
    probe = readonly_store(paths)
    if probe is None:
        raise NotFound(f"no approval or question {request.get('id')}: nothing has run in "
                       f"{paths.home}")
    probe.close()
    with locked_store(paths) as store:
        with store.transaction():  # committed whatever the decision meets
            expire_if_late(store, int(request["id"]),
                           operator_config(paths).approvals_timeout_s)
        with store.transaction():
            rec = offline(store)
    note(f"no supervisor is running: {rec.kind} {rec.id} is {rec.state} in the store, "
         f"and process {rec.pid} honours it when it is resumed (`agentlibos resume "
         f"{rec.pid}`, or `agentlibos serve`)")
    out: dict[str, Any] = {"id": rec.id, "kind": rec.kind, "state": rec.state,
                           "supervisor": False}
    if rec.kind == "approval" and rec.state == "approved":
        out["always"] = rec.always
    return out
