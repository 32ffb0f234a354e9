"""Shared test helpers: image factories and running a process to its end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentlibos.config import Paths
from agentlibos.kernel.policy import Policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.launcher import daemon_pid
from agentlibos.supervisor import Supervisor

# The `make_image` fixture's type: make_image(name, code, caps=..., limits=..., ...) -> dir.
MakeImage = Callable[..., Path]


def write_image(
    root: Path,
    name: str,
    code: str,
    *,
    caps: list[str] | tuple[str, ...] = (),
    limits: dict[str, Any] | None = None,
    tools: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    lifecycle: dict[str, Any] | None = None,
) -> Path:
    """Create ``root/name`` with an image.toml and ``agent.py`` holding ``code``."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["[image]", f'name = "{name}"', 'version = "0.1.0"', 'entry = "agent:main"', ""]
    if tools:
        lines.append("[tools]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in tools.items()]
        lines.append("")
    lines += ["[capabilities]", f"request = {json.dumps(list(caps))}", ""]
    if limits:
        lines.append("[limits]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in limits.items()]
        lines.append("")
    if lifecycle:
        lines.append("[lifecycle]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in lifecycle.items()]
    (d / "image.toml").write_text("\n".join(lines) + "\n")
    (d / "agent.py").write_text(textwrap.dedent(code))
    for rel, text in (files or {}).items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return d


def run_proc(
    sup: Supervisor,
    image: Path | str,
    args: dict[str, Any] | None = None,
    *,
    cwd: str | Path | None = None,
    policy: Policy | None = None,
    timeout_s: float = 30.0,
) -> ProcessRecord:
    """Run an image as a root process on ``sup`` and return its final record."""
    pid = sup.submit_run(str(image), args or {}, cwd=None if cwd is None else str(cwd),
                         policy=policy)
    assert sup.run_until(lambda: not sup.tree_live(pid), timeout_s), "process tree still live"
    return sup.store.get_process(pid)


def fd_targets(pid: int | str = "self") -> dict[str, str]:
    """What each of a process's fds is (``/proc/PID/fd``): fd number -> link target."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own fd, for "self")
            continue
    return out


def host_processes() -> dict[int, tuple[int, bytes]]:
    """Every host process now: pid -> (parent pid, command line as the kernel has it)."""
    out: dict[int, tuple[int, bytes]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        out[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return out


def log_of(sup: Supervisor, pid: int) -> str:
    p = sup.paths.logs / f"{pid}.log"
    return p.read_text() if p.exists() else ""


def stop_process(proc: subprocess.Popen[str], grace_s: float) -> None:
    """End a command a test started (a daemon, a console): SIGTERM, SIGKILL after
    ``grace_s``, then close its pipes so no ResourceWarning is left behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f:
            f.close()


def start_daemon(home: Path, **extra: str) -> subprocess.Popen[str]:
    """A real `agentlibos serve` on ``home``, answering once this returns (its pid is in
    the lock file); ``extra`` is more environment (``AGENTLIBOS_CRASH_AT``, say, which is
    otherwise never inherited from the test's own environment). The caller stops it
    (:func:`stop_process`), or kills it as a test needs."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTLIBOS_CRASH_AT"}
    env.update(AGENTLIBOS_HOME=str(home), **extra)
    proc = subprocess.Popen([sys.executable, "-m", "agentlibos", "serve"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while proc.poll() is None and daemon_pid(Paths(home)) != proc.pid:
        if time.monotonic() > deadline:
            stop_process(proc, 5)
            raise AssertionError("the daemon did not answer within 30 s")
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc
