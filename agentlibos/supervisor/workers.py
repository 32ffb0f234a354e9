"""Sandboxed helper processes: programs the runtime runs *for* an AgentProcess.

JIT tools' Deno processes and shell.exec commands use it. A helper is forked
by the zygote (``exec`` op: piped stdio, no broker token), confined by the tool profile
the sandbox manager prepares, and identified by a negative id so it never shares the
agents' pid space. The zygote's news about a helper (spawned, exited, failed) goes to
the owner that launched it; its cgroup is released through the process table's retry.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agentlibos.errors import LibOSError
from agentlibos.kernel.caps import CapPattern
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.sandboxing import Prepared, SandboxManager
from agentlibos.supervisor.zygote_client import ZygoteEvent, ZygoteHandle


class WorkerOwner(Protocol):
    def on_spawned(self, wid: int, host_pid: int, fds: list[int]) -> None: ...
    def on_exited(self, wid: int, status: int) -> None: ...
    def spawn_failed(self, wid: int, error: str) -> None: ...


def is_worker_id(wid: object) -> bool:
    return isinstance(wid, int) and wid < 0


class Workers:
    def __init__(self, sandbox: SandboxManager, zygote: Callable[[], ZygoteHandle],
                 table: ProcessTable) -> None:
        self._sandbox = sandbox
        self._zygote = zygote
        self._table = table
        self._ids = itertools.count(1)
        self._owners: dict[int, WorkerOwner] = {}

    def caps_of(self, pid: int) -> Sequence[CapPattern] | None:
        """What live process ``pid`` holds now (replaced, never edited, on a revoke)."""
        live = self._table.live.get(pid)
        return None if live is None else live.caller.caps

    def new_id(self) -> int:
        return -next(self._ids)

    def launch(self, wid: int, owner: WorkerOwner, *, for_pid: int, argv: list[str],
               env: dict[str, str], scratch: Path, log_path: Path,
               read_only: tuple[str, ...]) -> Any:
        """Fork a sandboxed helper exec'ing ``argv`` for AgentProcess ``for_pid``; returns
        its cgroup (or None). The helper's cgroup lies inside ``for_pid``'s, so what it
        uses counts against that process's tree.

        Raises the typed error of a layer that cannot be applied (fail closed)."""
        prep = self._sandbox.prepare_tool(wid, read_only, scratch, owner_pid=for_pid)
        return self.start(wid, owner, prep, {"argv": argv, "env": env, "scratch": str(scratch),
                                             "log": str(log_path)})

    def start(self, wid: int, owner: WorkerOwner, prep: Prepared,
              spec: dict[str, Any]) -> Any:
        """Fork helper ``wid`` with a profile already prepared (``prep``) and the rest of
        its ``spec``; returns its cgroup. A spec with ``command`` is a shell command
        (``zygote/child.run_command``): it also gets a stderr pipe, so its owner's
        ``on_spawned`` receives [pidfd, report, stdin, stdout, stderr].

        On failure the cgroup is released and the typed error raised."""
        self._owners[wid] = owner
        try:
            self._zygote().spawn(wid, {**spec, "pid": wid, "profile": prep.profile},
                                 op="exec")
        except LibOSError:
            self._owners.pop(wid, None)
            self.release(wid, prep.cgroup)
            raise
        return prep.cgroup

    def on_zygote_event(self, ev: ZygoteEvent) -> None:
        wid = int(ev.msg["pid"])
        owner = self._owners.get(wid)
        if ev.op == "spawned" and owner is not None:
            owner.on_spawned(wid, int(ev.msg["host_pid"]), ev.fds)
            return
        if owner is not None and ev.op == "exited":
            owner.on_exited(wid, int(ev.msg["status"]))
        elif owner is not None and ev.op == "spawn-failed":
            owner.spawn_failed(wid, str(ev.msg.get("error")))
        for fd in ev.fds:
            os.close(fd)

    def forget(self, wid: int) -> None:
        self._owners.pop(wid, None)

    def release(self, wid: int, cgroup: Any) -> None:
        self._table.release_cgroup(wid, cgroup)
