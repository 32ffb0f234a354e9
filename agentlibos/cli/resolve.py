"""``agentlibos resolve PID --retry|--skip|--fail``: the operator's answer to a process
in ``attention`` (a crash left an effect that may or may not have happened)."""

from __future__ import annotations

import argparse

from agentlibos.cli.attention import attention_items
from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    control,
    note,
    paths_of,
    positive_id,
    print_json,
    readonly_store,
)
from agentlibos.cli.resume import root_of
from agentlibos.cli.run import held_up, report
from agentlibos.config import Paths
from agentlibos.errors import Conflict
from agentlibos.launcher import RunOutcome, daemon_pid, embedded_supervisor


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "resolve", func=cmd_resolve,
                    help="answer a process in attention: do its effect again, skip it, or "
                         "fail the process", example="""
        agentlibos attention               # what each one was doing when the crash came
        agentlibos resolve 7 --retry       # run the effect again (it may happen twice)
        agentlibos resolve 7 --skip        # the call raises Unavailable; the agent goes on
        agentlibos resolve 7 --fail        # it ends failed (exit_reason resolved-fail)
    """)
    how = p.add_mutually_exclusive_group(required=True)
    for action, text in (("retry", "run the unsettled effect again"),
                         ("skip", "never run it: the call raises Unavailable in the agent"),
                         ("fail", "end the process failed (exit_reason resolved-fail)")):
        how.add_argument(f"--{action}", dest="action", action="store_const", const=action,
                         help=text)
    p.add_argument("pid", type=positive_id)


def cmd_resolve(ns: argparse.Namespace) -> int:
    """With a daemon up it resumes the process and this returns at once; without, a
    supervisor in this command does, and (``--retry``, ``--skip``) serves the tree to
    its end and prints PID's end like ``run``."""
    paths = paths_of(ns)
    action = str(ns.action)
    root = root_of(paths, ns.pid)
    req = {"op": "resolve", "pid": ns.pid, "action": action}
    up = daemon_pid(paths) is not None
    _check_in_attention(paths, ns.pid, supervisor_up=up)
    if up:
        reply = control(paths, req)
        _print(ns, reply["pid"], action, str(reply["state"]))
        return EXIT_OK
    tree = None if action == "fail" else root
    with embedded_supervisor(paths, resume_tree=tree) as sup:
        reply = sup.call(req)
        if action == "fail":
            _print(ns, ns.pid, action, str(reply["state"]))
            return EXIT_OK
        note(f"process {ns.pid} resolved ({action}); serving its tree to its end")
        interrupted = sup.serve()
        stuck = () if interrupted else tuple(sup.stuck())
        outcome = RunOutcome(ns.pid, sup.record(ns.pid), interrupted=interrupted,
                             stuck=stuck)
    return held_up(ns.pid, outcome, as_json=ns.json) or report(paths, outcome,
                                                              as_json=ns.json)


def _check_in_attention(paths: Paths, pid: int, *, supervisor_up: bool) -> None:
    """Refuse before starting anything when ``pid`` has nothing to resolve."""
    store = readonly_store(paths)
    if store is None:
        return
    try:
        if any(it["pid"] == pid for it in attention_items(store, supervisor_up=supervisor_up)):
            return
        state = store.get_process(pid).state
    finally:
        store.close()
    raise Conflict(f"process {pid} is {state}, not waiting for attention "
                   "(`agentlibos attention` lists those that are)")


def _print(ns: argparse.Namespace, pid: int, action: str, state: str) -> None:
    if ns.json:
        print_json({"pid": pid, "action": action, "state": state})
    else:
        note(f"process {pid} resolved ({action}): it is {state}")
