"""``agentlibos answer ID TEXT``: answer an agent's question."""

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
from agentlibos.supervisor.decisions import record_answer


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "answer", help="answer a question an agent asked", func=cmd_answer,
                    example="""
        agentlibos answer 13 "use the staging database"
        agentlibos answer 14 yes              # with choices, the text must be one of them
    """)
    p.add_argument("id", type=positive_id, help="the question id (`agentlibos approvals`)")
    p.add_argument("text", help="the answer; the agent's ctx.human.ask returns it")


def cmd_answer(ns: argparse.Namespace) -> int:
    reply = decide(paths_of(ns), {"op": "answer", "id": ns.id, "text": ns.text},
                   lambda store: record_answer(store, ns.id, ns.text))
    if ns.json:
        print_json(reply)
    else:
        note(f"question {ns.id} answered")
    return EXIT_OK
