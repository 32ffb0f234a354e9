"""The authority check: decide with the pure kernel, audit the verdict, raise on refusal.

Every syscall family reaches authority through this one object; deciding is
``kernel.policy.authorize`` (pure, unit-tested), this module only records and enforces.
"""

from __future__ import annotations

from typing import Any

from agentlibos.broker.syscalls.base import Caller
from agentlibos.errors import LibOSError, PermissionDenied
from agentlibos.kernel.approvals import NeedsApproval
from agentlibos.kernel.policy import Decision, Request
from agentlibos.kernel.text import storable
from agentlibos.store import Store


class Authz:
    def __init__(self, store: Store) -> None:
        self._store = store

    def decide(self, caller: Caller, request: Request) -> Decision:
        return caller.decided.decide(caller.caps, caller.policy, request, caller.cwd)

    def authorize(self, caller: Caller, call: str, request: Request) -> None:
        d = self.decide(caller, request)
        detail: dict[str, Any] = {"reason": d.reason}
        if d.rule:
            detail["rule"] = d.rule
        if caller.via_tool:
            detail["tool"] = caller.via_tool
        if d.verdict == "ask":
            d = self._settle_ask(caller, call, request, d, detail)
        self._store.append_audit(caller.pid, call, str(request), d.verdict, detail)
        if d.verdict == "deny":
            reason = d.reason
            if d.rule is None and caller.tool_caps is not None:
                # Missing from the tool's narrowed set, which may be why: say whose.
                declared = ", ".join(caller.tool_caps) or "none"
                reason += (f" through tool {caller.via_tool}, which acts only with the caps "
                           f"its [tools] entry declares ({declared})")
            elif d.rule is None:
                reason += _why_not_held(caller, request)
            raise PermissionDenied(f"{call}: {reason}", request=str(request), rule=d.rule)

    def _settle_ask(self, caller: Caller, call: str, request: Request, d: Decision,
                    detail: dict[str, Any]) -> Decision:
        """An `ask`: allowed by a standing approval or this call's one-shot grant, refused
        in deny mode, else NeedsApproval (the dispatch suspends the call on the queue)."""
        standing = next((a for a in caller.approved
                         if a.allows(request.kind, request.right, request.resource)), None)
        grant = caller.grant
        if grant is not None and grant.covers(request, caller.digest):
            # The re-run of the very call that asked: its effect names the approval,
            # also when `--always` made the request standing as well (DESIGN: every
            # step is linked by the approval id).
            caller.grant = None  # one shot: a second ask in the same call asks again
            detail["approval"] = grant.ask_id
            if standing is not None:
                detail["approved"] = f"always: {standing}"
            return Decision("allow", f"{request} was approved "
                            f"{'for this process' if standing else 'once'} "
                            f"(approval {grant.ask_id})", d.rule)
        if standing is not None:
            detail["approved"] = f"always: {standing}"
            return Decision("allow", f"{request} was approved for this process: {standing}",
                            str(standing))
        if caller.ask_mode == "deny":
            detail["outcome"] = "refused: this run refuses every ask (--ask deny)"
            self._store.append_audit(caller.pid, call, str(request), "ask", detail)
            raise PermissionDenied(
                f"{call}: {request} needs a human's approval ({d.reason}), and this run "
                "refuses every ask (--ask deny)", request=str(request), rule=d.rule)
        raise NeedsApproval(call, request, d)

    def refused(self, caller: Caller, call: str, error: LibOSError) -> None:
        """A call refused at the door before any check (an argument that is not a
        value): audited as a denial of that call."""
        self.audit(caller, call, call, "deny", {"reason": storable(error.message, 1024)})

    def audit(self, caller: Caller, call: str, request: str, verdict: str,
              detail: dict[str, Any]) -> None:
        if caller.via_tool:
            detail = {**detail, "tool": caller.via_tool}
        self._store.append_audit(caller.pid, call, request, verdict, detail)


def _why_not_held(caller: Caller, request: Request) -> str:
    """Where the image asks for what was missing, why the process does not hold it: its
    launcher (the run's policy, or its parent at spawn) did not grant it, or it was
    dropped or revoked since -- the image.toml alone would not tell its reader."""
    asked = [c for c in caller.image.requested
             if c.resolved(caller.cwd).allows(request.kind, request.right, request.resource)]
    if not asked:
        return ""
    by = "its parent did not hand it on at spawn" if caller.ppid is not None else \
        "the run's policy did not grant it"
    return (f" (its image asks for '{asked[0]}', but {by}, or it was dropped or revoked "
            "since: `agentlibos caps PID` shows what it holds)")
