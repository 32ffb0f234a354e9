"""``agentlibos checkpoint PID [NAME]``: mark a point of a process's run to restore later."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    control,
    paths_of,
    positive_id,
    print_json,
)
from agentlibos.kernel.journal import check_checkpoint_name
from agentlibos.launcher import daemon_pid, embedded_supervisor, stored_record
from agentlibos.ui import printable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "checkpoint", func=cmd_checkpoint,
                    help="mark a point of a process's run: its journal position, its own "
                         "objects, its capabilities", example="""
        agentlibos checkpoint 7 before-deploy   # then: agentlibos restore before-deploy
        agentlibos checkpoint 7 --json          # {"id", "name", "pid", "seq"}
    """)
    p.add_argument("pid", type=positive_id)
    p.add_argument("name", nargs="?", help="a name for `restore` (letters, digits and "
                                           "_.:@+-, not all digits); else restore by id")


def cmd_checkpoint(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    name = check_checkpoint_name(ns.name)
    stored_record(paths, ns.pid)  # NoSuchProcess (exit 2) for an unknown pid
    req = {"op": "checkpoint", "pid": ns.pid, "name": name}
    if daemon_pid(paths) is not None:
        cp = control(paths, req)
    else:
        with embedded_supervisor(paths) as sup:
            cp = sup.call(req)
    if ns.json:
        print_json({k: cp.get(k) for k in ("id", "name", "pid", "seq")})
    else:
        label = f"{cp['id']} ({printable(str(cp['name']))})" if cp.get("name") else cp["id"]
        print(f"checkpoint {label}: pid {cp['pid']} at call {cp['seq']}", flush=True)
    return EXIT_OK
