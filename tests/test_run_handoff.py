"""A foreground `run` handed to another command's embedded supervisor that ends before it
reads the request: the request died unread, so the run starts elsewhere at once, not
after a 5 s timeout reported as the agent's failure (audit 4-a, M2: about one in 24
concurrent runs was lost that way).

The other supervisor is played by a real ROUTER socket on the home's control endpoint
and a real host process that ends; the launcher's own code does the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from agentlibos.config import Paths
from agentlibos.errors import Unavailable, to_wire
from agentlibos.launcher import start_on_daemon


def serve_control(paths: Paths, holder: subprocess.Popen[bytes], mode: str,
                  stop: threading.Event, refuse: bool = False) -> threading.Thread:
    """Answer pings as a supervisor of ``mode`` run by ``holder``; on 'run', end the
    holder without answering, as an embedded supervisor whose tree just ended does
    (``refuse``: answer it with Unavailable and live on)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(paths.control_endpoint)

    def loop() -> None:
        try:
            while not stop.is_set():
                if not sock.poll(50):
                    continue
                rid, empty, body = sock.recv_multipart()
                req = json.loads(body)
                if req["op"] == "ping":
                    sock.send_multipart([rid, empty, json.dumps(
                        {"ok": True, "pid": holder.pid, "mode": mode}).encode()])
                elif req["op"] == "run" and refuse:
                    sock.send_multipart([rid, empty, json.dumps({"ok": False, "error": to_wire(
                        Unavailable("cannot start it now"))}).encode()])
                else:  # "run", or any other request: it dies with it in hand
                    holder.kill()
                    holder.wait()
        finally:
            sock.close(0)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["embedded", "serve"])
def test_a_run_left_unread_by_a_supervisor_that_ended(home: Path, mode: str) -> None:
    paths = Paths(home)
    paths.ensure()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()
    t = serve_control(paths, holder, mode, stop)
    try:
        t0 = time.monotonic()
        if mode == "embedded":
            # None: nobody took it; run_image then starts its own supervisor.
            assert start_on_daemon(paths, "img", {}, cwd=None, policy=None) is None
            assert time.monotonic() - t0 < 2
        else:
            # A daemon may have started the process before it died: never sent twice,
            # and said at once (its pid is watched), not after the call's 5 s.
            with pytest.raises(Unavailable, match="ended before it answered 'run'"):
                start_on_daemon(paths, "img", {}, cwd=None, policy=None)
            assert time.monotonic() - t0 < 3
    finally:
        stop.set()
        t.join(5)
        holder.kill()
        holder.wait()


def test_a_run_refused_by_a_live_embedded_supervisor_is_its_error_not_a_retry(
    home: Path,
) -> None:
    # Its own Unavailable answer is not "it ended unread": retrying would spin on the
    # lock it holds and end in a misleading "does not answer".
    paths = Paths(home)
    paths.ensure()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()
    t = serve_control(paths, holder, "embedded", stop, refuse=True)
    try:
        with pytest.raises(Unavailable, match="cannot start it now"):
            start_on_daemon(paths, "img", {}, cwd=None, policy=None)
    finally:
        stop.set()
        t.join(5)
        holder.kill()
        holder.wait()


def test_an_approve_whose_supervisor_dies_with_it_in_hand_says_so_at_once(home: Path) -> None:
    # Not "did not answer in 5 s": it ended, and the decision may have been recorded.
    paths = Paths(home)
    paths.ensure()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()
    t = serve_control(paths, holder, "serve", stop)
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "agentlibos", "approve", "3"],
                           env={**os.environ, "AGENTLIBOS_HOME": str(home)},
                           capture_output=True, text=True, timeout=30, check=False)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join(5)
        holder.kill()
        holder.wait()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"the supervisor (pid {holder.pid}) ended before it answered 'approve'" in r.stderr
    assert "whether it was done is not known" in r.stderr
    assert took < 4, took
