"""``cap.*``: a process may look at its own capabilities and give them up, never add."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Caller, Param, syscall


class CapService(Protocol):
    def drop(self, caller: Caller, cap: str) -> list[str]: ...


class CapServices(Protocol):
    @property
    def caps(self) -> CapService: ...



@syscall("cap.list")
def cap_list(svc: CapServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """The capabilities the caller holds, as strings."""
    return [str(c) for c in caller.caps]


@syscall("cap.drop", cap=Param(str, max_len=4096))
def cap_drop(svc: CapServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Give up a capability (or the rights it names); returns what is still held."""
    return svc.caps.drop(caller, args["cap"])
