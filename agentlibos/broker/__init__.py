"""The syscall broker: the ROUTER door, the one dispatch, the authority check, the table.

    server.py    decode and authenticate each request; send replies after the commit
    dispatch.py  validate -> handler in a savepoint -> reply, or suspend; journal
    authz.py     decide with the pure kernel, audit, raise
    syscalls/    one module per syscall family, each with the services it receives
"""

__all__ = ["authz", "dispatch", "server", "syscalls"]
