"""``agentlibos kill PID``: stop a process and its descendants (needs its supervisor)."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    note,
    paths_of,
    positive_id,
    print_json,
    readonly_store,
)
from agentlibos.errors import Conflict, NoSuchProcess
from agentlibos.supervisor.control import control_call, ping


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = add_command(sub, "kill", help="stop a process and its descendants", func=cmd_kill,
                    example="""
        agentlibos kill 7        # SIGTERM to 7's tree, SIGKILL after the grace period
    """)
    k.add_argument("pid", type=positive_id)


def cmd_kill(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    if ping(paths.control_endpoint) is None:
        store = readonly_store(paths)
        if store is None:
            raise NoSuchProcess(f"no process {ns.pid}: nothing has run in {paths.home}")
        try:
            rec = store.get_process(ns.pid)
        finally:
            store.close()
        raise Conflict(f"process {ns.pid} is not running (it is {rec.state}; no supervisor "
                       "is up)")
    control_call(paths.control_endpoint, {"op": "kill", "pid": ns.pid})
    if ns.json:
        print_json({"pid": ns.pid, "stopping": True})
    else:
        note(f"process {ns.pid} and its descendants are being stopped "
             f"(`agentlibos wait {ns.pid}` waits for the end)")
    return EXIT_OK
