"""``agentlibos deny ID [--reason TEXT]``: refuse a waiting call."""

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
from agentlibos.supervisor.decisions import record_deny


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "deny", help="deny a pending request, or decline a question",
                    func=cmd_deny, example="""
        agentlibos deny 12 --reason "no writes outside out/"
    """)
    p.add_argument("id", type=positive_id, help="the approval id (`agentlibos approvals`)")
    p.add_argument("--reason", help="why; the agent's PermissionDenied carries it")


def cmd_deny(ns: argparse.Namespace) -> int:
    reply = decide(paths_of(ns), {"op": "deny", "id": ns.id, "reason": ns.reason},
                   lambda store: record_deny(store, ns.id, ns.reason))
    if ns.json:
        print_json(reply)
    else:
        # Deny also declines a question (docs/approvals.md): say which it was.
        question = reply.get("kind") == "question"
        note(f"question {ns.id} declined" if question else f"approval {ns.id} denied")
    return EXIT_OK
