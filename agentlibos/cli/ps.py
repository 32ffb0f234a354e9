"""``agentlibos ps``: the process table, read from the store (no supervisor needed)."""

from __future__ import annotations

import argparse
import sys

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    paths_of,
    print_json,
    readonly_store,
    supervisor_alive,
)
from agentlibos.ui import format_ps, ps_row


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "ps", help="show the process table", func=cmd_ps, example="""
        agentlibos ps --all --tree
        agentlibos ps --json | jq '.[] | select(.state == "waiting") | .pid'
    """)
    p.add_argument("--all", "-a", action="store_true", help="include processes that ended")
    p.add_argument("--tree", action="store_true", help="indent children under parents")


def cmd_ps(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    store = readonly_store(paths)
    try:
        recs = store.list_processes(live_only=not ns.all) if store else []
    finally:
        if store is not None:
            store.close()
    if ns.json:
        print_json([ps_row(r) for r in recs])
    else:
        print(format_ps(recs, tree=ns.tree), flush=True)
    if any(r.live for r in recs) and not supervisor_alive(paths):
        print("agentlibos: note: no supervisor is running; the live-looking processes above "
              "were left by one that stopped: `agentlibos serve` resumes them all, "
              "`agentlibos resume PID` one tree (`agentlibos attention` lists those that "
              "wait for the operator)", file=sys.stderr)
    return EXIT_OK
