"""``agentlibos restore CHECKPOINT``: a new process (same parent) that replays to the
checkpoint, then runs live -- a fork in time."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    control,
    log_path,
    note,
    paths_of,
    print_json,
    readonly_store,
)
from agentlibos.cli.run import report
from agentlibos.errors import NotFound, UsageError
from agentlibos.launcher import RunOutcome, daemon_pid, embedded_supervisor


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "restore", func=cmd_restore,
                    help="start a new process from a checkpoint (it replays to it, then "
                         "runs live)", example="""
        agentlibos restore before-deploy        # by name (the latest of that name) or id
        agentlibos restore 3 --json             # daemon up: {"pid": N}; else the run record
    """)
    p.add_argument("checkpoint", help="the checkpoint's id or name (`agentlibos checkpoint`)")


def cmd_restore(ns: argparse.Namespace) -> int:
    """With a daemon up, print the new pid and return (like ``run --detach``); else run
    it on a supervisor in this command, wait, and print its end (like ``run``)."""
    paths = paths_of(ns)
    ref = str(ns.checkpoint)
    if not ref.strip():
        raise UsageError("restore takes a checkpoint id or name")
    req = {"op": "restore", "checkpoint": ref}
    if daemon_pid(paths) is not None:
        pid = int(control(paths, req)["pid"])
        if ns.json:
            print_json({"pid": pid})
        else:
            print(pid, flush=True)
        return EXIT_OK
    store = readonly_store(paths)
    try:  # bad input answered before a supervisor (and its sandbox) starts for it
        if store is None:
            raise NotFound(f"no checkpoint {ref!r}: nothing has run in {paths.home}")
        store.checkpoint_get(ref)
    finally:
        if store is not None:
            store.close()
    with embedded_supervisor(paths) as sup:
        pid = int(sup.call(req)["pid"])
        note(f"restored {ref} as pid {pid} (log: {log_path(paths, pid)})")
        interrupted = sup.serve()
        outcome = RunOutcome(pid, sup.record(pid), interrupted=interrupted)
    return report(paths, outcome, as_json=ns.json)
