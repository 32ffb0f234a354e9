"""``clock.*``: the broker's clock (journaled, so a resumed agent sees the same time) and
durable sleeps."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument
from agentlibos.kernel.policy import Request

RANDOM_MAX_BYTES = 4096


class ClockService(Protocol):
    def now(self) -> dict[str, Any]: ...
    def sleep(self, caller: Caller, seconds: float) -> Result: ...
    def random(self, nbytes: int | None) -> dict[str, Any]: ...


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


@syscall("clock.random", bytes=Param(int, required=False))
def clock_random(
    svc: ClockServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Any:
    """Randomness the journal keeps, so a resumed agent draws the same: without
    ``bytes`` {"random": a float in [0, 1)}; with it {"hex": that many random bytes, as
    hex}. Needs no capability."""
    n = args["bytes"]
    if n is not None and not 1 <= n <= RANDOM_MAX_BYTES:
        raise InvalidArgument(f"clock.random: bytes must be 1 to {RANDOM_MAX_BYTES}, not {n}")
    return svc.clock.random(n)
