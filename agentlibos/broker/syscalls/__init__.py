"""The syscall table. Importing this package registers every family's handlers."""

from agentlibos.broker.syscalls import cap, fs, obj, proc, tool
from agentlibos.broker.syscalls.base import (
    REGISTRY,
    Caller,
    Host,
    Pending,
    Reply,
    Syscall,
    lookup,
)

__all__ = ["REGISTRY", "Caller", "Host", "Pending", "Reply", "Syscall", "cap", "fs", "lookup",
           "obj", "proc", "tool"]
