"""Shared by the durable-execution tests: real daemons started and killed, a loopback
HTTP server that counts what it was sent, and reading the journal back from the store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentlibos.broker.crashpoints import CRASH_STATUS
from agentlibos.config import Paths
from agentlibos.store import SQLiteStore
from tests.helpers import stop_process

# Lets the agents of these tests do everything they ask for without a human.
ALLOW_ALL = ('allow = ["net:*:*", "fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", '
             '"clock:*:*", "shell:*:*", "human:*:*"]\ndefault = "deny"\n')


def cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTLIBOS_CRASH_AT"}
    env["AGENTLIBOS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "agentlibos", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def wait_until(cond: Callable[[], bool], timeout_s: float = 30, what: str = "condition"
               ) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s:g} s"
        time.sleep(0.05)


def kill9(proc: subprocess.Popen[str]) -> None:
    """The daemon dies as in a power cut: SIGKILL, nothing flushed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop_process(proc, 1)  # closes its pipes


def ps(home: Path) -> dict[int, dict[str, Any]]:
    p = cli(home, "ps", "--all", "--json")
    assert p.returncode == 0, p.stderr
    return {int(r["pid"]): r for r in json.loads(p.stdout or "[]")}


def detach_into_crash(home: Path, crashing: subprocess.Popen[str], *run_args: str,
                      timeout_s: float = 60) -> int:
    """`run --detach` to a daemon set to die at a barrier of the process's, then wait for
    that death (exit CRASH_STATUS); the process's pid.

    The process can reach the barrier before the daemon's answer has left it (ZeroMQ
    sends from its own thread, which the kill -9 the barrier stands for ends too): the
    CLI then says the daemon ended before it answered, and the pid is that of the newest
    root process in the store."""
    r = cli(home, "run", "--detach", "--json", *run_args)
    assert crashing.wait(timeout_s) == CRASH_STATUS
    if r.returncode == 0:
        return int(json.loads(r.stdout)["pid"])
    assert "ended before it answered 'run'" in r.stderr, r.stderr
    return max(pid for pid, row in ps(home).items() if row["ppid"] is None)


def audit_verifies(home: Path) -> None:
    p = cli(home, "audit", "--verify")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK" in p.stdout, p.stdout


def journal_consistent(home: Path, pid: int, *, unsettled: int | None = None) -> int:
    """``pid``'s journal: seqs 1..n without a gap, every entry settled except the one
    ``unsettled`` (the attention one, which must be the last); returns n."""
    store = SQLiteStore(Paths(home).db)
    try:
        entries = store.journal_entries(pid, limit=1_000_000)
    finally:
        store.close()
    seqs = [e.seq for e in entries]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    left = [e.seq for e in entries if e.status == "intent"]
    assert left == ([] if unsettled is None else [unsettled]), left
    if unsettled is not None:
        assert seqs[-1] == unsettled
    return len(seqs)


@contextlib.contextmanager
def counting_commits(store: Any) -> Iterator[list[int]]:
    """Count the COMMIT statements an embedded supervisor's store runs in the block:
    ``with counting_commits(sup.store) as n: ...`` then ``n[0]``."""
    count = [0]

    def trace(sql: str) -> None:
        count[0] += sql == "COMMIT"

    store._db.set_trace_callback(trace)
    try:
        yield count
    finally:
        store._db.set_trace_callback(None)


def object_version(home: Path, ns: str, name: str) -> int:
    store = SQLiteStore(Paths(home).db)
    try:
        return store.get_object(ns, name).version
    finally:
        store.close()


class _Counting(BaseHTTPRequestHandler):
    server: CountingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with self.server.lock:
            self.server.hits[(self.command, self.path)] += 1
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


class CountingServer(ThreadingHTTPServer):
    """A loopback server counting requests by (method, path): the host-side witness that
    an external effect happened, and how many times."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Counting)
        self.hits: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def counting_server() -> Iterator[CountingServer]:
    srv = CountingServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
