"""``agentlibos attention``: processes a crash stopped with an effect unsettled (one that
may or may not have happened and must not be done twice); read from the store."""

from __future__ import annotations

import argparse
from typing import Any

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    note,
    paths_of,
    print_json,
    readonly_store,
    supervisor_alive,
)
from agentlibos.kernel.journal import parse_intent
from agentlibos.store import Store
from agentlibos.ui import format_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "attention", func=cmd_attention,
                help="list processes waiting for the operator after a crash", example="""
        agentlibos attention            # PID, IMAGE, CALL, REQUEST
        agentlibos attention --json     # [{"pid", "call", "request"}, ...]
        agentlibos resolve 7 --skip     # then answer each with --retry, --skip or --fail
    """)


def attention_items(store: Store, *, supervisor_up: bool) -> list[dict[str, Any]]:
    """Processes in ``attention``; with no supervisor up, also those a crash left with an
    unsettled ``once`` intent, which the next supervisor will put there (it is their
    state already: only nobody has looked yet)."""
    out: dict[int, dict[str, Any]] = {}
    images: dict[int, str] = {}
    for rec in store.list_processes(live_only=True):
        images[rec.pid] = rec.image
        if rec.state == "attention" and rec.attention is not None:
            out[rec.pid] = {"pid": rec.pid, "call": rec.attention.get("call"),
                            "request": rec.attention.get("request")}
    if not supervisor_up:
        for e in store.journal_intents():  # in (pid, seq) order: the first one stops it
            intent = parse_intent(e.result)
            if e.pid in images and e.pid not in out and intent.get("effect") == "once":
                out[e.pid] = {"pid": e.pid, "call": e.call, "request": intent.get("request")}
    return [{**v, "image": images[p]} for p, v in sorted(out.items())]


def cmd_attention(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    store = readonly_store(paths)
    try:
        found = attention_items(store, supervisor_up=supervisor_alive(paths)) if store else []
    finally:
        if store is not None:
            store.close()
    if ns.json:
        print_json([{k: it[k] for k in ("pid", "call", "request")} for it in found])
    elif found:
        rows: list[tuple[str, ...]] = [("PID", "IMAGE", "CALL", "REQUEST")]
        rows += [(str(it["pid"]), str(it["image"]), str(it["call"]), str(it["request"] or "-"))
                 for it in found]
        print(format_table(rows), flush=True)
    else:
        note("no process needs attention")
    return EXIT_OK
