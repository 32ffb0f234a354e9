"""The process syscalls' services: spawn, wait, kill, exit, children, and cap.drop.

These implement ``broker.syscalls.proc.ProcessService`` and ``cap.CapService`` on top of
the process table; authority is checked through ``broker.authz`` like every call.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agentlibos.broker.authz import Authz
from agentlibos.broker.syscalls import Caller, Pending, Result
from agentlibos.errors import (
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    NoSuchProcess,
    NotFound,
    PermissionDenied,
    PolicyError,
    Timeout,
)
from agentlibos.kernel.approvals import ASK_MODES
from agentlibos.kernel.caps import CapPattern, attenuate, parse_cap, within
from agentlibos.kernel.policy import BUILTIN_POLICY, Policy, Request, granted
from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.text import json_size
from agentlibos.providers.base import FileProvider
from agentlibos.supervisor.images import Images
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.waits import Waits

JOURNAL_REPLY_BYTES = 1 << 20


class ProcessCalls:
    def __init__(self, table: ProcessTable, images: Images, authz: Authz, fs: FileProvider,
                 waits: Waits, default_policy: Policy = BUILTIN_POLICY) -> None:
        self._table = table
        self._default_policy = default_policy
        self._images = images
        self._authz = authz
        self._fs = fs
        self._waits = waits
        self._store = table.store

    # ---------------------------------------------------------------- starting

    def submit_run(self, image_ref: str, args: dict[str, Any], *, cwd: str | None = None,
                   policy: Policy | None = None, ask: str = "queue") -> int:
        """Start a root process (``agentlibos run``): held = image request ∩ policy.

        ``ask`` is how the tree's `ask` decisions reach a human: ``queue`` and ``prompt``
        wait in the queue (a prompting CLI answers there), ``deny`` refuses at once."""
        if ask not in ASK_MODES:
            raise InvalidArgument(f"--ask must be one of {', '.join(ASK_MODES)}, not {ask!r}")
        image = self._images.resolve(image_ref)
        if cwd is not None:
            real = os.path.realpath(cwd)
            if not os.path.isdir(real):
                raise InvalidArgument(f"--cwd {cwd!r} is not a directory")
            cwd = real

        policy = policy or self._default_policy

        def held(c: str) -> list[CapPattern]:
            return granted(policy, image.requested, c)

        return self._table.create(image, args, parent=None, policy=policy,
                                  cwd=cwd, held=held, ask_mode=ask)

    def start_info(self, caller: Caller) -> dict[str, Any]:
        self._table.mark_ready(caller.pid)
        rec = self._store.get_process(caller.pid)
        img = caller.image
        return {
            "pid": caller.pid, "ppid": caller.ppid, "image": img.name,
            "image_path": str(img.path), "entry_module": img.entry_module,
            "entry_function": img.entry_function, "args": rec.args, "cwd": caller.cwd,
            "tools": [t.name for t in img.tools],
            "builtin_tools": [t.name for t in img.tools if t.kind == "builtin"],
            # How many calls replay from the journal (a resumed or restored process).
            "replay": self._store.journal_settled_seq(caller.pid),
        }

    def journal(self, caller: Caller, after: int, limit: int) -> dict[str, Any]:
        """Entries after ``after`` of the caller's settled prefix, at most ``limit`` and
        about 1 MiB of results: the caller's own past answers, nothing it has not seen."""
        upto = self._store.journal_settled_seq(caller.pid)
        entries = self._store.journal_entries(caller.pid, after_seq=after,
                                              limit=max(0, min(limit, 1000, upto - after)))
        out: list[list[Any]] = []
        size = 0
        for e in entries:
            if e.status == "intent" or (out and size > JOURNAL_REPLY_BYTES):
                break
            out.append([e.seq, e.call, e.digest, e.status, e.result])
            size += len(e.result or "")
        return {"entries": out, "upto": upto}

    def spawn(self, caller: Caller, image: str, args: dict[str, Any],
              caps: list[str] | None, cwd: str | None) -> int:
        self._authz.authorize(caller, "proc.spawn", Request("proc", "spawn", image))
        if "/" in image:
            raise InvalidArgument("proc.spawn: name a registered image or a sibling image, "
                                  "not a path")
        img = self._images.resolve(image, near=caller.image)
        self._table.check_tree_limits(caller)
        child_cwd = caller.cwd
        where = None if cwd is None else self._fs.resolve(caller.cwd, cwd)
        if where is not None and where.real != caller.cwd:  # its own: the default, no check
            self._authz.authorize(caller, "proc.spawn", Request("fs", "read", where.real,
                                                                where.aliases))
            if not self._is_dir(where.real):
                raise InvalidArgument(f"proc.spawn: cwd {cwd!r} is not a directory")
            child_cwd = where.real
        handed = list(caller.caps) if caps is None else [
            self._handable(caller, text) for text in caps]

        def held(c: str) -> list[CapPattern]:
            return attenuate([r.resolved(c) for r in img.requested], handed)

        return self._table.create(img, args, parent=caller, policy=caller.policy,
                                  cwd=child_cwd, held=held)

    def _is_dir(self, real: str) -> bool:
        try:
            return bool(self._fs.stat(real)["type"] == "dir")
        except LibOSError:
            return False

    def _handable(self, caller: Caller, text: str) -> CapPattern:
        try:
            c = parse_cap(text).resolved(caller.cwd)
        except PolicyError as e:
            raise InvalidArgument(f"proc.spawn: {e.message}") from None
        # The parent's own namespace is its own to share (obj:read:proc/<its pid>): it
        # holds every right there without a capability, as `self`.
        if not within(c, caller.caps) and not parse_cap(
                f"obj:rw:proc/{caller.pid}").covers(c):
            self._authz.audit(caller, "proc.spawn", str(c), "deny",
                              {"reason": "not within the parent's capabilities"})
            raise PermissionDenied(
                f"proc.spawn: cannot hand on '{c}': it is not within the capabilities "
                "this process holds (a child can only get less)", capability=str(c),
            )
        return c

    # ---------------------------------------------------------------- other processes

    def _target(self, caller: Caller, pid: int, right: str, call: str) -> ProcessRecord:
        """The process ``caller`` names, if it may ``right`` it (wait or signal)."""
        try:
            rec: ProcessRecord | None = self._store.get_process(pid)
        except NoSuchProcess:
            rec = None
        if rec is None or rec.root_pid != caller.root_pid:
            # Other trees are invisible: not even their existence leaks.
            raise NoSuchProcess(f"{call}: no process {pid} in this process tree")
        if rec.ppid == caller.pid or (pid == caller.pid and right == "signal"):
            self._authz.audit(caller, call, f"proc:{right}:{pid}", "allow",
                              {"reason": "own child" if rec.ppid == caller.pid else "itself"})
            return rec
        by_image = Request("proc", right, rec.image)
        if self._is_descendant(pid, caller.pid):
            # A descendant is reached by `children`, or by its image's name as any other
            # process of the tree is: a holder of proc:signal:sleeper reaches every
            # sleeper of its tree, its own grandchildren too.
            children = Request("proc", right, "children")
            if self._authz.decide(caller, children).verdict == "allow" \
                    or self._authz.decide(caller, by_image).verdict != "allow":
                self._authz.authorize(caller, call, children)
                return rec
        self._authz.authorize(caller, call, by_image)
        return rec

    def _is_descendant(self, pid: int, ancestor: int) -> bool:
        p: int | None = pid
        for _ in range(self._table.config.max_depth + 2):
            if p is None:
                return False
            rec = self._store.get_process(p)
            if rec.ppid == ancestor:
                return True
            p = rec.ppid
        return False

    def wait(self, caller: Caller, pid: int, timeout_s: float | None) -> Result:
        if pid == caller.pid:
            raise InvalidArgument("proc.wait: a process cannot wait for itself")
        rec = self._target(caller, pid, "wait", "proc.wait")
        target = self._table.live.get(pid)
        if target is None:
            return rec.public()
        if timeout_s == 0:
            raise Timeout(f"proc.wait: process {pid} is still {rec.state}")
        pending = Pending(caller.pid)
        target.waiters.append(pending)

        def expired() -> Timeout:
            if pending in target.waiters:
                target.waiters.remove(pending)
            return Timeout(f"proc.wait: process {pid} still running after {timeout_s:g} s")

        return self._waits.suspend(caller.pid, pending, f"proc:{pid}", timeout_s=timeout_s,
                                   on_timeout=expired, durable={})

    def kill(self, caller: Caller, pid: int) -> None:
        self._target(caller, pid, "signal", "proc.kill")
        self._table.terminate(pid, "killed", f"killed by process {caller.pid}")

    def exit(self, caller: Caller, status: str, result: Any, error: str | None) -> None:
        limit = self._table.config.max_result_bytes
        size = json_size(result)
        if size > limit:
            raise LimitExceeded(f"proc.exit: result of {size} bytes exceeds {limit}")
        live = self._table.live[caller.pid]
        live.exit_status, live.exit_result, live.exit_error = status, result, error

    def children(self, caller: Caller) -> list[dict[str, Any]]:
        return [
            {"pid": r.pid, "image": r.image, "state": r.state, "exit_reason": r.exit_reason}
            for r in self._store.children(caller.pid)
        ]

    # ---------------------------------------------------------------- capabilities

    def drop(self, caller: Caller, cap: str) -> list[str]:
        try:
            c = parse_cap(cap).resolved(caller.cwd)
        except PolicyError as e:
            raise InvalidArgument(f"cap.drop: {e.message}") from None
        kept: list[CapPattern] = []
        changed = False
        for h in caller.caps:
            if h.kind != c.kind or not (h.rights & c.rights):
                kept.append(h)
            elif c.glob.covers(h.glob):
                rest = h.rights - c.rights
                if rest:
                    kept.append(h.narrowed(rest))
                changed = True
            elif h.glob.covers(c.glob):
                raise InvalidArgument(
                    f"cap.drop: '{c}' is only part of the held '{h}'; drop the whole "
                    "capability (and re-request what you need from a narrower child)"
                )
            else:
                kept.append(h)
        if not changed:
            raise NotFound(f"cap.drop: this process holds nothing within '{c}'")
        caller.caps = kept
        if caller.via_tool is None:
            # A tool holds its own narrowed copy for the call it serves: what it gives up
            # is its own, never its caller's (stored capabilities are the process's).
            self._store.set_caps(caller.pid, [str(k) for k in kept])
        self._authz.audit(caller, "cap.drop", str(c), "info", {"held": [str(k) for k in kept]})
        return [str(k) for k in kept]

    def now(self) -> float:
        return time.time()
