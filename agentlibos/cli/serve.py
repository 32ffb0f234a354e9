"""``agentlibos serve``: the supervisor and broker as a long-lived daemon."""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    note,
    paths_of,
    print_json,
)
from agentlibos.config import Paths, operator_config
from agentlibos.errors import Conflict, Unavailable
from agentlibos.launcher import signals
from agentlibos.supervisor.control import ping

# How long `serve --detach` (and `run --detach`, starting one) waits for the daemon it
# started to answer.
READY_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class Serving:
    """The supervisor answering on a home's control socket (:func:`ensure_daemon`)."""

    pid: int
    # "embedded": another command's supervisor (a foreground `run`), which serves only
    # its own tree and ends with it; anything else is a daemon.
    mode: str
    # The daemon's output, when this call started it; None: it was already serving.
    log: Path | None = None

    @property
    def started(self) -> bool:
        return self.log is not None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = add_command(sub, "serve", help="run the supervisor and broker as a daemon",
                    func=cmd_serve, example="""
        agentlibos serve                 # in the foreground, until SIGTERM or Ctrl-C
        agentlibos serve --detach        # in the background; returns once it answers
    """)
    s.add_argument("--detach", "-d", action="store_true",
                   help="start the daemon in the background (output in "
                        "$AGENTLIBOS_HOME/logs/serve.log), print its pid once it answers")


def _answering(paths: Paths) -> Serving | None:
    info = ping(paths.control_endpoint)
    return None if info is None else Serving(int(info["pid"]), str(info.get("mode")))


@contextmanager
def _starting(paths: Paths) -> Iterator[None]:
    """Held while one command starts a daemon for ``paths``: two commands that both found
    none (two `run --detach` at once) would each start one, and the loser's would exit
    on the supervisor lock while its command waited for it. The second waits here
    instead, then finds the first's daemon answering. Not the supervisor lock itself:
    that one the daemon must take, and a probe of it could make the daemon's take fail."""
    fd = os.open(paths.run / "daemon-start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held at most READY_TIMEOUT_S by the other one
        yield
    finally:
        os.close(fd)


def ensure_daemon(paths: Paths) -> Serving:
    """The supervisor serving ``paths.home``; if none answers, a daemon started for it
    (`agentlibos serve` in a new session, output in logs/serve.log), once it answers.

    A supervisor already answering is returned as it is, embedded or not: the caller
    decides whether it will do. A config the daemon would refuse is refused here first
    (the caller's error, exit 2); a daemon that exits or does not answer in time is
    Unavailable, with the last line of its log."""
    paths.ensure()
    running = _answering(paths)
    if running is not None:
        return running
    # Read here first, as the daemon will: a malformed config is the caller's error
    # (exit 2, its one line), not "the daemon exited before answering" (exit 1).
    operator_config(paths)
    with _starting(paths):
        running = _answering(paths)  # started by whoever held _starting before us
        if running is not None:
            return running
        # -P: not the cwd first on sys.path (a source checkout's tree would shadow the
        # package this command runs).
        argv = [sys.executable, "-P", "-m", "agentlibos", "--home", str(paths.home)]
        if paths.config is not None:
            argv += ["--config", str(paths.config)]
        log = paths.logs / "serve.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([*argv, "serve"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            running = _answering(paths)
            if running is not None and running.pid == proc.pid:
                return Serving(proc.pid, running.mode, log)
            if proc.poll() is not None:
                # It lost the supervisor lock to a command that does not take _starting
                # (a foreground `run`, `serve`): that one answers now, or soon.
                if running is not None:
                    return running
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise Unavailable(f"the daemon exited with status {proc.returncode} before "
                                  f"answering: {tail[0] if tail else 'no output'} "
                                  f"(log: {log})")
            if time.monotonic() > deadline:
                raise Unavailable(f"the daemon (pid {proc.pid}) did not answer within "
                                  f"{READY_TIMEOUT_S:g} s (log: {log})")
            time.sleep(0.05)


def _detach(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    serving = ensure_daemon(paths)
    if not serving.started:
        raise Conflict(f"a daemon (pid {serving.pid}) already serves {paths.home}")
    pid, log = serving.pid, serving.log
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
