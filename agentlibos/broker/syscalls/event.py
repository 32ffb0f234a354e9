"""``event.*``: wait for the next post of a named event, or post one."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import ANY, Authorizer, Caller, Param, Result, syscall
from agentlibos.broker.syscalls.fs import TreeBudgets
from agentlibos.errors import LimitExceeded
from agentlibos.kernel import budgets
from agentlibos.kernel.approvals import EventRecord, check_event_name
from agentlibos.kernel.budgets import TreeQuota
from agentlibos.kernel.policy import Request
from agentlibos.kernel.text import json_size

_NAME = Param(str, max_len=128)


class EventBus(Protocol):
    def wait(self, caller: Caller, name: str, timeout_s: float | None) -> Result: ...
    def post(self, name: str, payload: Any, by: int | None) -> tuple[EventRecord, int]: ...


class EventServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def budgets(self) -> TreeBudgets: ...
    @property
    def tree_quota(self) -> TreeQuota: ...


@syscall("event.wait", name=_NAME, timeout=Param(float, required=False))
def event_wait(
    svc: EventServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Wait for the next post of ``name`` after this call began (needs event:wait:<name>)."""
    name = check_event_name(args["name"], "event.wait")
    svc.authz.authorize(caller, "event.wait", Request("event", "wait", name))
    return svc.events.wait(caller, name, args["timeout"])


@syscall("event.post", name=_NAME, payload=Param(ANY, required=False))
def event_post(
    svc: EventServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Any:
    """Post ``name`` with a JSON payload, waking every waiter (needs event:post:<name>)."""
    name = check_event_name(args["name"], "event.post")
    svc.authz.authorize(caller, "event.post", Request("event", "post", name))
    # Every post stays in the store (for waiters resumed later): charged to the poster's
    # tree as a write through the broker is.
    size = len(name) + json_size(args["payload"])
    try:
        svc.budgets.charge_tree(caller.root_pid, budgets.write_charge(size), svc.tree_quota)
    except LimitExceeded as e:
        raise LimitExceeded(f"event.post: a post of {size} bytes: {e.message}",
                            **e.details) from None
    rec, woken = svc.events.post(name, args["payload"], caller.pid)
    return {"id": rec.id, "name": name, "woken": woken}
