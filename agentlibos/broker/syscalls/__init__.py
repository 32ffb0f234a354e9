"""The syscall table. Importing this package registers every family's handlers.

Each family module declares, beside its handlers, the small Protocol of services it
receives (``fs.FsServices``, ``obj.ObjServices``, ...): the dispatcher hands each call
its family's services and nothing more.
"""

from agentlibos.broker.syscalls import (
    cap,
    clock,
    event,
    fs,
    human,
    image,
    model,
    net,
    obj,
    proc,
    shell,
    tool,
)
from agentlibos.broker.syscalls.base import (
    REGISTRY,
    Authorizer,
    Caller,
    Pending,
    Reply,
    Result,
    Syscall,
    lookup,
)
from agentlibos.broker.syscalls.cap import CapService, CapServices
from agentlibos.broker.syscalls.fs import FsServices
from agentlibos.broker.syscalls.obj import ObjServices
from agentlibos.broker.syscalls.proc import ProcessService, ProcServices
from agentlibos.broker.syscalls.tool import ToolService, ToolServices

# Which services each call prefix receives (the part of a name before the dot).
FAMILY_OF_PREFIX = {"fs": "fs", "obj": "obj", "proc": "proc", "cap": "cap", "tool": "tool",
                    "jit": "tool", "human": "human", "event": "event", "clock": "clock",
                    "shell": "shell", "net": "net", "model": "model",
                    "image": "image"}

__all__ = [
    "FAMILY_OF_PREFIX",
    "REGISTRY",
    "Authorizer",
    "Caller",
    "CapService",
    "CapServices",
    "FsServices",
    "ObjServices",
    "Pending",
    "ProcServices",
    "ProcessService",
    "Reply",
    "Result",
    "Syscall",
    "ToolService",
    "ToolServices",
    "cap",
    "clock",
    "event",
    "fs",
    "human",
    "image",
    "lookup",
    "model",
    "net",
    "obj",
    "proc",
    "shell",
    "tool",
]
