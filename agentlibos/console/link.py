"""The console's only way to the supervisor: the control channel's operations.

The console has no store handle, no broker socket and no authority of its own: what it
shows comes from ``ping``, ``approvals``, ``ps`` and ``audit_tail``, and what it changes
goes through ``approve``, ``deny`` and ``answer``, each checked by the supervisor as if
the operator had typed the command. Calls block (ZeroMQ REQ), so the web app runs them
in worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agentlibos.config import Paths
from agentlibos.errors import LibOSError, Unavailable, to_wire
from agentlibos.supervisor.control import control_call, ping

AUDIT_TAIL_N: Final = 50
READ_TIMEOUT_S: Final = 3.0
CHANGE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class ControlLink:
    paths: Paths

    def down_message(self) -> str:
        return (f"no supervisor is answering for {self.paths.home}; start one with "
                "`agentlibos serve` (this page retries every second)")

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, one section per read-only op.

        Raises Unavailable when no supervisor answers. A section whose op fails (an older
        supervisor without it, say) carries ``error`` instead, so the rest still shows.
        """
        who = ping(self.paths.control_endpoint, timeout_s=1.0)
        if who is None:
            raise Unavailable(self.down_message())
        out: dict[str, Any] = {"supervisor": {"pid": who.get("pid"), "mode": who.get("mode"),
                                              "home": who.get("home")}}
        for section, req in (("queue", {"op": "approvals", "all": False}),
                             ("processes", {"op": "ps"}),
                             ("audit", {"op": "audit_tail", "n": AUDIT_TAIL_N})):
            try:
                reply = control_call(self.paths.control_endpoint, req,
                                     timeout_s=READ_TIMEOUT_S)
            except LibOSError as e:
                out[section] = {"error": to_wire(e)}
                continue
            reply.pop("ok", None)
            out[section] = reply
        return out

    def change(self, request: dict[str, Any]) -> dict[str, Any]:
        """One of approve, deny, answer; raises the supervisor's typed error."""
        if ping(self.paths.control_endpoint, timeout_s=1.0) is None:
            raise Unavailable(self.down_message())
        return control_call(self.paths.control_endpoint, request, timeout_s=CHANGE_TIMEOUT_S)
