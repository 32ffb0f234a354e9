"""``agentlibos approvals``: the queue of approval requests and human questions."""

from __future__ import annotations

import argparse
from typing import Any

from agentlibos.cli.common import EXIT_OK, add_command, paths_of, print_json, query
from agentlibos.ui import age_text, format_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "approvals", help="list pending approval requests and questions",
                    func=cmd_approvals, example="""
        agentlibos approvals                  # what waits for a human, oldest first
        agentlibos approvals --all --json | jq '.[] | select(.state == "denied")'
        agentlibos approve 12                 # then answer one (or deny, answer)
    """)
    p.add_argument("--all", "-a", action="store_true",
                   help="include requests already approved, denied, expired or answered")


def what_text(item: dict[str, Any]) -> str:
    """The exact request of an approval, or a question with its choices."""
    if item.get("kind") == "question":
        text = str(item.get("question") or "")
        choices = item.get("choices")
        if choices:
            text += " [" + " | ".join(str(c) for c in choices) + "]"
        return text
    return str(item.get("request") or "")


def format_items(items: list[dict[str, Any]]) -> str:
    """The queue as a table; every agent-chosen cell is escaped by ``format_table``."""
    rows: list[tuple[str, ...]] = [
        ("ID", "KIND", "PID", "STATE", "AGE", "REQUEST/QUESTION", "SUMMARY")]
    for it in items:
        created = it.get("created_at")
        rows.append((str(it.get("id")), str(it.get("kind")), str(it.get("pid")),
                     str(it.get("state")),
                     age_text(float(created) if created is not None else None),
                     what_text(it), str(it.get("summary") or "")))
    return format_table(rows)


def cmd_approvals(ns: argparse.Namespace) -> int:
    reply = query(paths_of(ns), {"op": "approvals", "all": bool(ns.all)},
                  lambda store: {"items": [r.public() for r in
                                           store.ask_list(pending_only=not ns.all)]},
                  empty={"items": []})
    items: list[dict[str, Any]] = list(reply.get("items") or [])
    if ns.json:
        print_json(items)
    elif items:
        print(format_items(items), flush=True)
    else:
        print("nothing waits for a human" if not ns.all else "the queue is empty", flush=True)
    return EXIT_OK
