"""``agentlibos kill PID``: stop a process and its descendants. Through the supervisor
that runs it; with none running, the tree has no host process left to signal, and its
end is written straight into the store, as a kill on a supervisor would record it."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    control,
    note,
    paths_of,
    positive_id,
    print_json,
)
from agentlibos.cli.offline import locked_store
from agentlibos.config import Paths
from agentlibos.errors import Conflict, NoSuchProcess
from agentlibos.store import Store
from agentlibos.supervisor.control import ping
from agentlibos.supervisor.decisions import expire_asks_of


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = add_command(sub, "kill", help="stop a process and its descendants", func=cmd_kill,
                    example="""
        agentlibos kill 7        # SIGTERM to 7's tree, SIGKILL after the grace period
    """)
    k.add_argument("pid", type=positive_id)


def cmd_kill(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    pong = ping(paths.control_endpoint)
    if pong is None:
        killed = kill_offline(paths, ns.pid)
        more = killed[:-1]
        also = f" with its descendants {', '.join(map(str, more))}" if more else ""
        note(f"no supervisor is running: process {ns.pid}{also} recorded killed in the "
             "store (no host process was left to stop); no supervisor will resume it")
        if ns.json:
            print_json({"pid": ns.pid, "stopping": True, "killed": killed,
                        "supervisor": False})
        return EXIT_OK
    control(paths, {"op": "kill", "pid": ns.pid}, pong)
    if ns.json:
        print_json({"pid": ns.pid, "stopping": True})
    else:
        note(f"process {ns.pid} and its descendants are being stopped "
             f"(`agentlibos wait {ns.pid}` waits for the end)")
    return EXIT_OK


def kill_offline(paths: Paths, pid: int) -> list[int]:
    """With no supervisor running: ``pid`` and its live descendants ended ``killed`` in
    the store, in one transaction; the pids, descendants first (the order their ends
    are recorded). A live process then has no host process (evicted, in attention, or
    left by a supervisor that died, whose host processes died with it: PDEATHSIG)."""
    if not paths.db.exists():
        raise NoSuchProcess(f"no process {pid}: nothing has run in {paths.home}")
    with locked_store(paths) as store, store.transaction():
        rec = store.get_process(pid)  # NoSuchProcess when there is none
        if not rec.live:
            raise Conflict(f"process {pid} is not running (it is {rec.state})")
        killed: list[int] = []
        _end_tree(store, pid, "killed by the operator", killed)
        return killed


def _end_tree(store: Store, pid: int, detail: str, killed: list[int]) -> None:
    """What the supervisor's ``terminate(pid, "killed", ...)`` and ``finalize`` record
    for a process with no host process: its live descendants first, each "killed" by
    its ancestor's stop, then its own end; its pending asks expire, nobody being there
    to be answered."""
    # Lazy: exits.py reads the zygote's start report format, which pulls the sandbox in,
    # and the parser (every command) imports this module.
    from agentlibos.supervisor.exits import record_end  # noqa: PLC0415

    for child in store.children(pid):
        if child.live:
            _end_tree(store, child.pid, f"its ancestor {pid} was stopped", killed)
    record_end(store, pid, "killed", detail)
    expire_asks_of(store, pid)
    killed.append(pid)
