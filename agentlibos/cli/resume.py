"""``agentlibos resume PID``: go on with the tree of a process the last supervisor left
(killed, crashed, the host rebooted), by replay, without a daemon."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    add_command,
    control,
    paths_of,
    positive_id,
    readonly_store,
)
from agentlibos.cli.run import held_up, report
from agentlibos.config import Paths
from agentlibos.errors import NoSuchProcess
from agentlibos.launcher import (
    Interrupt,
    RunOutcome,
    daemon_pid,
    embedded_supervisor,
    signals,
    wait_on_daemon,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "resume", func=cmd_resume,
                    help="resume an interrupted process tree by replay and wait for it",
                    example="""
        agentlibos resume 7           # 7's whole tree; prints 7's result like `run`
        agentlibos resume 7 --json    # {"pid", "state", "exit_reason", "result"}
    """)
    p.add_argument("pid", type=positive_id)


def root_of(paths: Paths, pid: int) -> int:
    """The root of ``pid``'s tree, from the store; NoSuchProcess (exit 2) if none."""
    store = readonly_store(paths)
    if store is None:
        raise NoSuchProcess(f"no process {pid}: nothing has run in {paths.home}")
    try:
        return store.get_process(pid).root_pid
    finally:
        store.close()


def cmd_resume(ns: argparse.Namespace) -> int:
    """On a daemon: it resumed everything at its start; a process it left is resumed
    now; then this waits for PID like ``wait`` (Ctrl-C ends the wait, not the process).
    Without: a supervisor in this command resumes PID's tree and serves it to its end."""
    paths = paths_of(ns)
    root = root_of(paths, ns.pid)
    supervisor = daemon_pid(paths)
    if supervisor is not None:
        control(paths, {"op": "resume", "pid": ns.pid})
        interrupt = Interrupt()
        with signals(interrupt):
            outcome = wait_on_daemon(paths, ns.pid, supervisor, interrupt=interrupt,
                                     kill_on_interrupt=False)
        return report(paths, outcome, as_json=ns.json)
    with embedded_supervisor(paths, resume_tree=root) as sup:
        interrupted = sup.serve()
        stuck = () if interrupted else tuple(sup.stuck())
        outcome = RunOutcome(ns.pid, sup.record(ns.pid), interrupted=interrupted,
                             stuck=stuck)
    return held_up(ns.pid, outcome, as_json=ns.json) or report(paths, outcome,
                                                              as_json=ns.json)
