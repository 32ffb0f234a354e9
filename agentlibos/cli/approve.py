"""``agentlibos approve ID [--always]``: let a waiting call through."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    note,
    paths_of,
    positive_id,
    print_json,
)
from agentlibos.cli.deciding import decide
from agentlibos.supervisor.decisions import record_approve


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "approve", help="approve a pending request (once, or always)",
                    func=cmd_approve, example="""
        agentlibos approve 12             # a one-shot grant for that exact request and digest
        agentlibos approve 12 --always    # the process holds the capability for its life
    """)
    p.add_argument("id", type=positive_id, help="the approval id (`agentlibos approvals`)")
    p.add_argument("--always", action="store_true",
                   help="grant the capability to the process for the rest of its life "
                        "(it may hand it to its children)")


def cmd_approve(ns: argparse.Namespace) -> int:
    reply = decide(paths_of(ns), {"op": "approve", "id": ns.id, "always": bool(ns.always)},
                   lambda store: record_approve(store, ns.id, always=bool(ns.always)))
    if ns.json:
        print_json(reply)
    else:
        how = "for the rest of the process's life" if ns.always else "once"
        note(f"approval {ns.id} approved ({how})")
    return EXIT_OK
