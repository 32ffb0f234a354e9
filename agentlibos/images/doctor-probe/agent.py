"""Look around from inside the sandbox and report; `agentlibos doctor` compares."""

from __future__ import annotations

import os
import socket
from typing import Any

from agentlibos.sdk import Context


def main(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, str] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("NoNewPrivs", "Seccomp", "CapEff", "CapBnd", "Uid"):
                status[key] = value.strip()
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        inet = "allowed"
    except OSError as e:
        inet = f"refused ({e.strerror})"
    try:
        with open(args.get("host_file", "/etc/hostname")) as f:
            f.read(1)
        host_file = "readable"
    except OSError as e:
        host_file = f"refused ({e.strerror})"
    try:
        with open("/proc/self/cgroup") as f:
            cgroup = sorted({line.split(":", 2)[2].strip() for line in f if line.count(":") >= 2})
    except OSError as e:
        cgroup = [f"unreadable ({e.strerror})"]
    return {
        "pid": os.getpid(),
        "cgroup": cgroup,
        "visible_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "status": status,
        "inet_socket": inet,
        "host_file": host_file,
    }
