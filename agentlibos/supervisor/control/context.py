"""What a control operation may use: nothing more than this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentlibos.config import Paths
from agentlibos.store import Store
from agentlibos.supervisor.approvals import Approvals
from agentlibos.supervisor.control.server import Responder
from agentlibos.supervisor.durable import Durable
from agentlibos.supervisor.events import Events
from agentlibos.supervisor.process_calls import ProcessCalls
from agentlibos.supervisor.processes import ProcessTable


@dataclass
class ControlContext:
    paths: Paths
    mode: str
    store: Store
    table: ProcessTable
    processes: ProcessCalls
    request_stop: Callable[[], None]
    approvals: Approvals
    events: Events
    durable: Durable  # checkpoint, restore, resume, resolve
    # Operators waiting for a process to end (`run` with wait, `wait`).
    waiters: dict[int, list[Responder]] = field(default_factory=dict)

    def wait_for(self, pid: int, respond: Responder) -> None:
        if pid in self.table.live:
            self.waiters.setdefault(pid, []).append(respond)
        else:
            respond({"ok": True, "record": self.store.get_process(pid).public()})

    def process_ended(self, pid: int, record: dict[str, Any]) -> None:
        for respond in self.waiters.pop(pid, []):
            respond({"ok": True, "record": record})
