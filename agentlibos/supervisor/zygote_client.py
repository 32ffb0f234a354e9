"""The supervisor's side of the zygote: start it, ask it to fork, hear about exits."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.errors import Unavailable
from agentlibos.supervisor.sandboxing import SandboxManager
from agentlibos.zygote.channel import encode_spawn, send_packet
from agentlibos.zygote.zygote import MAX_PACKET


@dataclass
class ZygoteEvent:
    op: str  # ready | spawned | spawn-failed | exited
    msg: dict[str, Any]
    fds: list[int] = field(default_factory=list)


# What the zygote's environment keeps of the supervisor's. Every agent is a fork of the
# zygote, and a fork keeps the exec'd environment block in its memory (and in
# /proc/self/environ) even after os.environ.clear(): whatever the supervisor holds in its
# environment -- model API keys (`api_key_env`), secrets for net.fetch -- must never be
# in the zygote's. A short allow-list, not a deny-list of names that look secret.
_ZYGOTE_ENV_KEEP = frozenset({"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH",
                              "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "TMPDIR",
                              "AGENTLIBOS_DENO", "AGENTLIBOS_HOME", "AGENTLIBOS_STRICT"})


def zygote_env(env: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment, cut to what the zygote needs (no secrets)."""
    return {k: v for k, v in env.items() if k in _ZYGOTE_ENV_KEEP}


class ZygoteHandle:
    def __init__(self, log_path: Path, *, ready_timeout_s: float = 30.0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the zygote
        self.proc = subprocess.Popen(
            # -c rather than -m: runpy warns when the package has imported the module.
            # -P: -c puts the cwd first on sys.path, so started from a source checkout
            # the zygote would preload that tree, not the package this supervisor runs
            # (and binds into every sandbox): later imports in an agent then fail.
            [sys.executable, "-P", "-c", "from agentlibos.zygote.zygote import main; main()",
             str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            close_fds=True,
            env=zygote_env(os.environ),
            # A process group of its own: a signal to the caller's whole group (a
            # terminal's Ctrl-C, `timeout`) is for the supervisor, which stops its agents
            # and then the zygote; killing the zygote first turned an interruption into
            # "the zygote died". It still dies with the supervisor (parent-death signal).
            process_group=0,
        )
        theirs.close()
        self.sock = ours
        self.sock.setblocking(False)
        self.pid = self.proc.pid
        deadline = time.monotonic() + ready_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.close()
                raise Unavailable(
                    f"the zygote did not start (see {log_path}); exit status {self.proc.poll()}"
                )
            select.select([self.sock], [], [], min(remaining, 0.5))
            events = self.receive()
            if any(e.op == "ready" for e in events):
                break

    def send_pool(self, msg: dict[str, Any] | None) -> None:
        """Give the zygote the warm pool's template (None: no pool)."""
        data = json.dumps(msg or {"op": "pool", "size": 0}).encode()
        if len(data) > MAX_PACKET:
            raise Unavailable("the pool template is too large")
        self.sock.setblocking(True)
        try:
            self.sock.send(data)
        finally:
            self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, pid: int, spec: dict[str, Any], *, op: str = "spawn",
              fds: list[int] | None = None) -> None:
        """Fork an AgentProcess ("spawn") or a sandboxed program with piped stdio ("exec").
        ``fds`` go with it (a pooled process's binds): the caller closes its own."""
        data = encode_spawn(op, pid, spec)
        if len(data) > MAX_PACKET:
            raise Unavailable(f"spawn request for pid {pid} is too large")
        self.sock.setblocking(True)
        try:
            send_packet(self.sock, data, fds)
        except OSError as e:
            raise Unavailable(f"the zygote is gone: {e}") from None
        finally:
            self.sock.setblocking(False)

    def receive(self) -> list[ZygoteEvent]:
        """Every event waiting on the socket; an ``eof`` event if the zygote died."""
        out: list[ZygoteEvent] = []
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_PACKET, 5)
            except BlockingIOError:
                return out
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                out.append(ZygoteEvent("eof", {}))
                return out
            msg = json.loads(data)
            out.append(ZygoteEvent(str(msg.get("op")), msg, list(fds)))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout_s: float = 5.0) -> list[ZygoteEvent]:
        """Ask the zygote to kill and reap its children, then exit; returns last events."""
        events: list[ZygoteEvent] = []
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.send(json.dumps({"op": "exit"}).encode())
            self.sock.setblocking(False)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            events = [e for e in self.receive() if e.op != "eof"]
        self.sock.close()
        self.log.close()
        return events


def start_zygote(paths: Paths, sandbox: SandboxManager, config: SupervisorConfig,
                 *, pool: bool = True) -> ZygoteHandle:
    """Start the zygote and give it the warm pool's template ([supervisor] pool_size).
    ``pool=False``: not yet -- the template names the broker's socket, which pooled
    processes connect to as soon as they exist (the caller sends it once bound)."""
    zygote = ZygoteHandle(paths.logs / "zygote.log")
    if pool:
        zygote.send_pool(sandbox.pool_template(config.pool_size))
    return zygote
