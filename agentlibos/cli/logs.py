"""``agentlibos logs PID [-f] [--json]``: what the agent printed (its stdout and stderr).

``--json``: one object ``{"pid", "log"}``; with ``-f``, one object per line as it comes,
``{"pid", "line"}`` (JSON escapes every control character, so both are safe)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import BinaryIO, Final

from agentlibos.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    paths_of,
    positive_id,
    print_json,
)
from agentlibos.errors import NotFound
from agentlibos.launcher import Interrupt, signals, stored_record
from agentlibos.ui import printable

FOLLOW_POLL_S: Final = 0.1
CHUNK: Final = 1 << 16


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lg = add_command(sub, "logs", help="print what a process wrote to stdout and stderr",
                     func=cmd_logs, example="""
        agentlibos logs 7
        agentlibos logs -f 7       # follow until the process ends
        agentlibos logs 7 --json   # {"pid": 7, "log": "..."}; with -f a {"pid", "line"} per line
    """)
    lg.add_argument("pid", type=positive_id)
    lg.add_argument("--follow", "-f", action="store_true",
                    help="keep printing what it writes until the process ends")
    lg.add_argument("--raw", action="store_true",
                    help="the bytes as written, control characters included (for pipes; "
                         "by default they are escaped, so no escape sequence reaches the "
                         "terminal)")


class _Printer:
    """Writes log bytes, escaping agent-chosen control characters line by line."""

    def __init__(self, raw: bool, json_pid: int | None = None) -> None:
        self.raw = raw
        self.json_pid = json_pid  # --json -f: a {"pid", "line"} object per line
        self.partial = b""

    def write(self, data: bytes, *, final: bool = False) -> None:
        if self.json_pid is not None:
            data = self.partial + data
            lines = data.split(b"\n")
            self.partial = lines.pop()
            if final and self.partial:
                lines.append(self.partial)
                self.partial = b""
            for line in lines:
                print_json({"pid": self.json_pid,
                            "line": line.decode("utf-8", errors="backslashreplace")})
        elif self.raw:
            sys.stdout.buffer.write(data)
        else:
            data = self.partial + data
            lines = data.split(b"\n")
            self.partial = lines.pop()  # what follows the last newline
            for line in lines:
                text = printable(line.decode("utf-8", errors="backslashreplace"))
                sys.stdout.write(text + "\n")
            if final and self.partial:
                sys.stdout.write(printable(self.partial.decode("utf-8", "backslashreplace")))
                self.partial = b""
        sys.stdout.flush()


def _pump(f: BinaryIO, out: _Printer) -> None:
    while chunk := f.read(CHUNK):
        out.write(chunk)


def cmd_logs(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    stored_record(paths, ns.pid)  # NoSuchProcess (exit 2) for an unknown pid
    path = paths.logs / f"{ns.pid}.log"
    out = _Printer(ns.raw, ns.pid if ns.json and ns.follow else None)
    if not ns.follow:
        if not path.exists():
            raise NotFound(f"process {ns.pid} has no log (it wrote nothing, or `agentlibos "
                           "prune` removed it)")
        with open(path, "rb") as f:
            if ns.json:
                print_json({"pid": ns.pid,
                            "log": f.read().decode("utf-8", errors="backslashreplace")})
                return EXIT_OK
            _pump(f, out)
        out.write(b"", final=True)
        return EXIT_OK
    interrupt = Interrupt()
    with signals(interrupt):
        log: BinaryIO | None = None
        try:
            while not interrupt.signum:
                if log is None and path.exists():
                    log = open(path, "rb")  # noqa: SIM115 (held across the loop)
                # Read the state before the file: whatever the process wrote before it
                # ended is in the file once its record says it ended.
                ended = not stored_record(paths, ns.pid)["live"]
                if log is not None:
                    _pump(log, out)
                if ended:
                    break
                time.sleep(FOLLOW_POLL_S)
        finally:
            if log is not None:
                log.close()
        out.write(b"", final=True)
    if interrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK



