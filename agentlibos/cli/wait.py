"""``agentlibos wait PID``: wait for a process to end; exit 0 if it returned normally."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_FAILED,
    add_command,
    err,
    log_path,
    paths_of,
    positive_id,
)
from agentlibos.cli.run import report
from agentlibos.launcher import (
    Interrupt,
    RunOutcome,
    daemon_pid,
    signals,
    stored_record,
    wait_on_daemon,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = add_command(sub, "wait", help="wait for a process to end and print its result",
                    func=cmd_wait, example="""
        pid=$(agentlibos run ./my-image --detach) && agentlibos wait "$pid"
        agentlibos wait 7 --json   # {"pid", "state", "exit_reason", "result"}
    """)
    w.add_argument("pid", type=positive_id)


def cmd_wait(ns: argparse.Namespace) -> int:
    """Ctrl-C ends the wait, not the process (as with ``docker wait``): exit 130."""
    paths = paths_of(ns)
    rec = stored_record(paths, ns.pid)  # NoSuchProcess (exit 2) for an unknown pid
    if rec.pop("live"):
        supervisor = daemon_pid(paths)
        if supervisor is None:
            err(f"pid {ns.pid} is recorded as {rec['state']} but no supervisor is running: "
                "its host processes died with the one that ran it; the next `agentlibos "
                f"serve` (or `agentlibos resume {ns.pid}`) resumes it from its journal; "
                f"log: {log_path(paths, ns.pid)}")
            return EXIT_FAILED
        interrupt = Interrupt()
        with signals(interrupt):
            outcome = wait_on_daemon(paths, ns.pid, supervisor, interrupt=interrupt,
                                     kill_on_interrupt=False)
    else:
        outcome = RunOutcome(ns.pid, rec)
    return report(paths, outcome, as_json=ns.json)
