"""``image.register``'s service: validate and copy off the loop, install on it.

The handler (``broker/syscalls/image.py``) has already checked the path, ``fs:read``
and ``image:register:<name>``. Here the work is split as the loop requires: the
validation ``agentlibos image add`` makes (``registry.stage_image``: image.toml and the
files it names, readable by the agent's uid, no links, the size limits, every JIT tool
through the confined `deno check`) copies up to 64 MiB and may run the compiler for
seconds, so it runs on the off-loop pool and touches no runtime state; installing the
copy, the record and its audit record happen back on the loop, in a turn.

A name already registered is refused with Conflict, whoever registered it (the
operator, another tree, or this one): an agent never replaces what runs under a name
others may spawn. The operator can ``agentlibos image rm`` it. Two registrations of one
name in flight at once: the second is refused the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.errors import Conflict, ImageError, InternalError, LibOSError
from agentlibos.kernel.text import storable
from agentlibos.providers.fs import remove_tree
from agentlibos.registry import Staged, agent_ids, install_image, stage_image
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import Store
from agentlibos.supervisor.offloop import OffLoop
from agentlibos.supervisor.waits import Waits


class ImageCalls:
    def __init__(self, store: Store, offloop: OffLoop, waits: Waits, images_dir: Path,
                 sandbox: SandboxConfig, is_live: Callable[[int], bool]) -> None:
        self._store = store
        self._offloop = offloop
        self._waits = waits
        self._dir = images_dir
        # Who agents run as: who must be able to read a registered image.
        self._ids = agent_ids(sandbox)
        self._is_live = is_live
        self._in_flight: set[str] = set()

    def _refuse_taken(self, name: str) -> None:
        rec = self._store.get_image(name)
        if rec is not None or name in self._in_flight:
            raise Conflict(f"image.register: an image named {name!r} is already registered"
                           + (f" ({rec.path})" if rec else " (a registration is in flight)")
                           + "; choose another name (name=...)", name=name)

    def register(self, caller: Caller, source: str, name: str) -> Pending:
        """Register the image directory ``source`` (a real path, authorized) as ``name``:
        the name is fixed here, whatever its image.toml says by the time it is copied."""
        self._refuse_taken(name)
        pid, pending = caller.pid, Pending(caller.pid)
        self._in_flight.add(name)
        self._waits.suspend(pid, pending, f"image:{name}")
        ids = self._ids
        self._offloop.submit(lambda: stage_image(self._dir, source, name=name, ids=ids),
                             lambda out: self._staged(pid, pending, name, out))
        return pending

    def _staged(self, pid: int, pending: Pending, name: str,
                outcome: Staged | BaseException) -> None:
        """On the loop: install the validated copy, or answer why not."""
        self._in_flight.discard(name)
        try:
            if isinstance(outcome, OSError):
                # The copy failed on the file system (a file vanished or changed type
                # mid-copy, the disk is full): the caller's input or the host, not a bug.
                raise ImageError(f"image.register: cannot copy the image: {outcome}")
            if isinstance(outcome, BaseException):
                raise outcome
            if pending.done or not self._is_live(pid):
                remove_tree(str(outcome.staging))  # the caller is gone: nothing registered
                return
            try:
                self._refuse_taken(name)  # registered meanwhile (by the operator, say)
            except LibOSError:
                remove_tree(str(outcome.staging))
                raise
            rec, _ = install_image(self._store, outcome, by_pid=pid, call="image.register",
                                   ids=self._ids)
            pending.resolve({"name": rec.name, "version": rec.version, "path": rec.path})
        except LibOSError as e:
            self._failed(pid, name, e)
            pending.reject(e)
        except Exception as e:
            self._failed(pid, name, e)
            pending.reject(InternalError("image.register: internal error; the audit log "
                                         "has the details"))
            raise

    def _failed(self, pid: int, name: str, e: BaseException) -> None:
        detail: dict[str, Any] = {"error": f"{type(e).__name__}: {storable(str(e), 1024)}"}
        self._store.append_audit(pid, "image.register", f"image:register:{name}", "error",
                                 detail)
