"""``agentlibos serve``: the supervisor and broker as a long-lived daemon."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from types import FrameType
from typing import Final

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    note,
    paths_of,
    print_json,
)
from agentlibos.config import operator_config
from agentlibos.errors import Conflict, Unavailable
from agentlibos.launcher import daemon_pid, signals

# How long `serve --detach` waits for the daemon it started to answer.
READY_TIMEOUT_S: Final = 30.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = add_command(sub, "serve", help="run the supervisor and broker as a daemon",
                    func=cmd_serve, example="""
        agentlibos serve                 # in the foreground, until SIGTERM or Ctrl-C
        agentlibos serve --detach        # in the background; returns once it answers
    """)
    s.add_argument("--detach", "-d", action="store_true",
                   help="start the daemon in the background (output in "
                        "$AGENTLIBOS_HOME/logs/serve.log), print its pid once it answers")


def _detach(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    paths.ensure()
    running = daemon_pid(paths)
    if running is not None:
        raise Conflict(f"a daemon (pid {running}) already serves {paths.home}")
    # Read here first, as the daemon will: a malformed config is the caller's error
    # (exit 2, its one line), not "the daemon exited before answering" (exit 1).
    operator_config(paths)
    argv = [sys.executable, "-m", "agentlibos", "--home", str(paths.home)]
    if ns.config:
        argv += ["--config", os.path.abspath(ns.config)]
    log = paths.logs / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*argv, "serve"], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (pid := daemon_pid(paths)) is None:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise Unavailable(f"the daemon exited with status {proc.returncode} before "
                              f"answering: {tail[0] if tail else 'no output'} (log: {log})")
        if time.monotonic() > deadline:
            raise Unavailable(f"the daemon (pid {proc.pid}) did not answer within "
                              f"{READY_TIMEOUT_S:g} s (log: {log})")
        time.sleep(0.05)
    if ns.json:
        print_json({"pid": pid, "home": str(paths.home), "log": str(log)})
    else:
        print(pid, flush=True)
        note(f"daemon {pid} serving {paths.home} (log: {log}; stop it with kill {pid})")
    return EXIT_OK


def cmd_serve(ns: argparse.Namespace) -> int:
    if ns.detach:
        return _detach(ns)
    from agentlibos.supervisor import Supervisor  # noqa: PLC0415 - `serve --detach` never does

    paths = paths_of(ns)
    sup = Supervisor(paths, mode="daemon")  # --config: paths_of(ns) names it
    sup.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.request_stop()

    try:
        with signals(on_signal):
            if ns.json:
                print_json({"pid": os.getpid(), "home": str(paths.home)})
            else:
                print(f"agentlibos: supervisor {os.getpid()} serving {paths.home}", flush=True)
            while not sup.stop_requested:
                sup.step(1.0)
    finally:
        sup.stop()
    if not ns.json:
        print("agentlibos: supervisor stopped", flush=True)
    return EXIT_OK
