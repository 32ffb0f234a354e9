"""Each syscall family's services, as the dispatcher hands them out.

One small frozen view per family (the Protocols are beside the handlers in
``broker/syscalls/``): fs handlers get the authority check and the file provider, obj
handlers the object store, proc handlers the process calls... and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentlibos.broker.authz import Authz
from agentlibos.broker.dispatch import Dispatcher
from agentlibos.broker.flow import ByteRate
from agentlibos.broker.syscalls import Caller, Pending, Reply, Result
from agentlibos.errors import InternalError, LibOSError, NoSuchProcess
from agentlibos.kernel.budgets import TreeQuota
from agentlibos.providers.base import FileProvider
from agentlibos.store import ObjectQuota, Store
from agentlibos.supervisor.approvals import Approvals
from agentlibos.supervisor.durable import Durable
from agentlibos.supervisor.events import Clock, Events
from agentlibos.supervisor.image_calls import ImageCalls
from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.models import Models
from agentlibos.supervisor.net import Net
from agentlibos.supervisor.offloop import OffLoop
from agentlibos.supervisor.process_calls import ProcessCalls
from agentlibos.supervisor.shell import ShellRunner
from agentlibos.supervisor.tools import ToolCalls


@dataclass(frozen=True)
class FsView:
    authz: Authz
    fs: FileProvider
    budgets: Store
    tree_quota: TreeQuota
    file_io: OffLoop
    loop: Loop
    rate: ByteRate

    def offload(self, pid: int, work: Callable[[], Reply], nbytes: int) -> Result:
        pending = Pending(pid)

        def done(outcome: Reply | BaseException) -> None:
            if isinstance(outcome, Reply):
                pending.resolve(outcome.result, outcome.blobs, outcome.digests)
            elif isinstance(outcome, LibOSError):
                pending.reject(outcome)
            else:
                pending.reject(InternalError(f"fs.read: internal error "
                                             f"({type(outcome).__name__})"))

        wait = self.rate.delay(pid, nbytes)
        if wait > 0:
            self.loop.call_later(min(wait, 60.0), lambda: self.file_io.submit(work, done))
        else:
            self.file_io.submit(work, done)
        return pending


@dataclass(frozen=True)
class ObjView:
    authz: Authz
    objects: Store
    object_quota: ObjectQuota
    tree_quota: TreeQuota

    def tree_of(self, pid: int) -> int | None:
        try:
            return self.objects.get_process(pid).root_pid
        except NoSuchProcess:
            return None


@dataclass(frozen=True)
class ProcView:
    processes: ProcessCalls
    checkpoints: Durable  # proc.checkpoint only (broker/syscalls/proc.py)


@dataclass(frozen=True)
class CapView:
    caps: ProcessCalls


@dataclass(frozen=True)
class ToolView:
    authz: Authz
    tools: ToolCalls
    dispatcher: Dispatcher

    def dispatch(self, caller: Caller, call: str, args: dict[str, Any],
                 blobs: list[bytes]) -> Result:
        return self.dispatcher.run(caller, call, args, blobs)


@dataclass(frozen=True)
class HumanView:
    authz: Authz
    humans: Approvals


@dataclass(frozen=True)
class EventView:
    authz: Authz
    events: Events
    budgets: Store
    tree_quota: TreeQuota


@dataclass(frozen=True)
class ClockView:
    authz: Authz
    clock: Clock


@dataclass(frozen=True)
class ShellView:
    authz: Authz
    shell: ShellRunner


@dataclass(frozen=True)
class NetView:
    authz: Authz
    net: Net


@dataclass(frozen=True)
class ModelView:
    authz: Authz
    models: Models


@dataclass(frozen=True)
class ImageView:
    authz: Authz
    fs: FileProvider
    images: ImageCalls


def wire_syscalls(dispatcher: Dispatcher, *, authz: Authz, fs: FileProvider, file_io: OffLoop,
                  loop: Loop, rate: ByteRate, store: Store, durable: Durable,
                  object_quota: ObjectQuota, tree_quota: TreeQuota,
                  processes: ProcessCalls, tools: ToolCalls, approvals: Approvals,
                  events: Events, clock: Clock, shell: ShellRunner, net: Net,
                  models: Models, images: ImageCalls) -> None:
    """Hand each syscall family its services (and the dispatch its approval queue)."""
    dispatcher.add_services("fs", FsView(authz, fs, store, tree_quota, file_io, loop, rate))
    dispatcher.add_services("obj", ObjView(authz, store, object_quota, tree_quota))
    dispatcher.add_services("proc", ProcView(processes, durable))
    dispatcher.add_services("cap", CapView(processes))
    dispatcher.add_services("tool", ToolView(authz, tools, dispatcher))
    dispatcher.intent_with_turn["tool.call"] = tools.acts_through_the_broker
    dispatcher.add_services("human", HumanView(authz, approvals))
    dispatcher.add_services("event", EventView(authz, events, store, tree_quota))
    dispatcher.add_services("clock", ClockView(authz, clock))
    dispatcher.add_services("shell", ShellView(authz, shell))
    dispatcher.add_services("net", NetView(authz, net))
    dispatcher.add_services("model", ModelView(authz, models))
    dispatcher.add_services("image", ImageView(authz, fs, images))
    dispatcher.approvals = approvals
