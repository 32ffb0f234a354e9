"""``agentlibos demo``: the deterministic end-to-end demonstration (agentlibos.demo)."""

from __future__ import annotations

import argparse
import os

from agentlibos.cli.common import add_command, note
from agentlibos.demo import run_demo, run_llm_demo


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = add_command(sub, "demo", help="run a deterministic end-to-end demonstration",
                    func=cmd_demo, example="""
        agentlibos demo
        agentlibos demo --keep     # keep its state directory to explore with ps and audit
        agentlibos demo --llm      # an LLM agent (built-in loop, scripted model)
    """)
    d.add_argument("--llm", action="store_true",
                   help="the LLM demo: the built-in agent loop with a scripted model")
    d.add_argument("--keep", action="store_true",
                   help="keep the demo's state directory instead of deleting it")


def cmd_demo(ns: argparse.Namespace) -> int:
    if ns.home or os.environ.get("AGENTLIBOS_HOME"):
        # Said up front: a user who set a home expects to find the demo's state there.
        note("the demo runs in a fresh temporary state directory, not in "
             f"{ns.home or os.environ['AGENTLIBOS_HOME']} (--keep keeps it and says where)")
    if ns.llm:
        return run_llm_demo(keep=ns.keep, as_json=ns.json)
    return run_demo(keep=ns.keep, as_json=ns.json)
