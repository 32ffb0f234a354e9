"""The tool syscalls' services: find a tool, call a JIT tool, register one at run time.

Implements ``broker.syscalls.tool.ToolService``. A JIT call or a type check suspends the
calling syscall (``tool:NAME`` / ``jit.register:NAME``) through the waits service.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from agentlibos.broker.syscalls import Caller, Pending, Result
from agentlibos.errors import InvalidArgument, NotFound
from agentlibos.kernel.image import AgentImage, ToolSpec
from agentlibos.store import Store
from agentlibos.supervisor.jit import JitManager, ToolDef
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.waits import Waits

_IMAGE_TOOLS_MAX = 4096  # (image, tool) definitions kept; past it the cache starts over


class ToolCalls:
    def __init__(self, table: ProcessTable, jit: JitManager, waits: Waits,
                 store: Store) -> None:
        self._table = table
        self._jit = jit
        self._waits = waits
        self._store = store
        self._image_tools: dict[tuple[int, str], tuple[AgentImage, ToolDef]] = {}

    def find(self, caller: Caller, name: str) -> ToolSpec | ToolDef:
        """A registered JIT tool, else the image's tool of that name (builtin or JIT)."""
        live = self._table.live[caller.pid]
        if name in live.jit_tools:
            tool: ToolDef = live.jit_tools[name]
            return tool
        spec = caller.image.tool(name)
        if spec is None:
            known = [t.name for t in caller.image.tools] + list(live.jit_tools)
            raise NotFound(f"tool.call: no tool named {name!r} "
                           f"(this process has: {', '.join(known) or 'none'})")
        if spec.kind == "builtin":
            return spec
        # An image is immutable and the supervisor keeps loaded ones: its JIT tools'
        # definitions are made once (a path join per call was a tenth of a warm call's
        # time on the loop). The entry holds the image, so its id is not reused.
        key = (id(caller.image), name)
        hit = self._image_tools.get(key)
        if hit is not None and hit[0] is caller.image:
            return hit[1]
        if len(self._image_tools) >= _IMAGE_TOOLS_MAX:
            self._image_tools.clear()
        tool = ToolDef(name=name, path=str(caller.image.path / spec.ref), caps=spec.caps,
                       schema=spec.schema, timeout_s=spec.timeout_s, version="image")
        self._image_tools[key] = (caller.image, tool)
        return tool

    def acts_through_the_broker(self, caller: Caller, args: dict[str, Any]) -> bool:
        """Whether tool.call with ``args`` calls a JIT tool: its Deno process can do
        nothing but ask the broker, in later turns (a builtin acts in the call itself)."""
        name = args.get("name")
        if not isinstance(name, str) or caller.pid not in self._table.live:
            return False
        try:
            return isinstance(self.find(caller, name), ToolDef)
        except NotFound:
            return False

    def call_jit(self, caller: Caller, tool: ToolDef, args: dict[str, Any]) -> Result:
        pending = self._jit.call(caller, tool, args)
        return self._waits.suspend(caller.pid, pending, f"tool:{tool.name}")

    def register(self, caller: Caller, name: str, source: str,
                 schema: dict[str, Any] | None, caps: tuple[str, ...] | None,
                 timeout_s: float | None) -> Result:
        version = hashlib.sha256(source.encode()).hexdigest()[:16]
        path = self._jit.tool_dir(caller.pid, name) / f"tool-{version}.ts"
        path.write_text(source, encoding="utf-8")
        os.chmod(path, 0o644)
        tool = ToolDef(name=name, path=str(path), caps=caps, schema=schema,
                       timeout_s=timeout_s, version=version)
        pending = Pending(caller.pid)
        pid = caller.pid

        def done(ok: bool, output: str) -> None:
            live = self._table.live.get(pid)
            with self._store.transaction():
                self._store.append_audit(pid, "jit.register", f"jit:register:{name}",
                                         "info" if ok else "deny",
                                         {"tool": name, "version": version, "checked": ok,
                                          "caps": None if caps is None else list(caps),
                                          "compiler": output[:2000]})
            if not ok:
                pending.reject(InvalidArgument(
                    f"jit.register: {name!r} does not pass `deno check`:\n{output}"))
            elif live is not None:
                live.jit_tools[name] = tool
                pending.resolve({"name": name, "version": version})

        self._jit.check(pid, tool, done)
        return self._waits.suspend(pid, pending, f"jit.register:{name}")
