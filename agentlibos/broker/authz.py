"""The authority check: decide with the pure kernel, audit the verdict, raise on refusal.

Every syscall family reaches authority through this one object; deciding is
``kernel.policy.authorize`` (pure, unit-tested), this module only records and enforces.
"""

from __future__ import annotations

from typing import Any

from agentlibos.broker.syscalls.base import Caller
from agentlibos.errors import LibOSError, PermissionDenied
from agentlibos.kernel.policy import Decision, Request, authorize
from agentlibos.kernel.text import storable
from agentlibos.store import Store


class Authz:
    def __init__(self, store: Store) -> None:
        self._store = store

    def decide(self, caller: Caller, request: Request) -> Decision:
        return authorize(caller.caps, caller.policy, request, caller.cwd)

    def authorize(self, caller: Caller, call: str, request: Request) -> None:
        d = self.decide(caller, request)
        detail: dict[str, Any] = {"reason": d.reason}
        if d.rule:
            detail["rule"] = d.rule
        if caller.via_tool:
            detail["tool"] = caller.via_tool
        if d.verdict == "ask":
            # Until the approval queue lands, an `ask` has no one to ask and fails closed.
            detail["outcome"] = "refused: no human channel is available"
            self._store.append_audit(caller.pid, call, str(request), "ask", detail)
            raise PermissionDenied(
                f"{call}: {request} needs a human's approval ({d.reason}), but no human "
                "channel is available to this process",
                request=str(request), rule=d.rule,
            )
        self._store.append_audit(caller.pid, call, str(request), d.verdict, detail)
        if d.verdict == "deny":
            raise PermissionDenied(f"{call}: {d.reason}", request=str(request), rule=d.rule)

    def refused(self, caller: Caller, call: str, error: LibOSError) -> None:
        """A call refused at the door before any check (an argument that is not a
        value): audited as a denial of that call."""
        self.audit(caller, call, call, "deny", {"reason": storable(error.message, 1024)})

    def audit(self, caller: Caller, call: str, request: str, verdict: str,
              detail: dict[str, Any]) -> None:
        if caller.via_tool:
            detail = {**detail, "tool": caller.via_tool}
        self._store.append_audit(caller.pid, call, request, verdict, detail)
