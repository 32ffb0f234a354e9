"""``clock.*``: the broker's clock (journaled, so a resumed agent sees the same time) and
durable sleeps."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.kernel.policy import Request


class ClockService(Protocol):
    def now(self) -> dict[str, Any]: ...
    def sleep(self, caller: Caller, seconds: float) -> Result: ...


class ClockServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def clock(self) -> ClockService: ...


@syscall("clock.now")
def clock_now(
    svc: ClockServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Any:
    """The broker's time: {"time": unix seconds, "iso": ISO-8601 UTC}."""
    return svc.clock.now()


@syscall("clock.sleep", seconds=Param(float))
def clock_sleep(
    svc: ClockServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Sleep ``seconds`` (needs clock:sleep:*); the process waits on sleep:ISO-TIME."""
    svc.authz.authorize(caller, "clock.sleep", Request("clock", "sleep", "*"))
    return svc.clock.sleep(caller, args["seconds"])
