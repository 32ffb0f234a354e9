"""The supervisor's side of the sandbox: prepare each process's profile before fork,
and account for its cgroup after it ends.

Host-level facts (can this host do cgroups? Landlock? is the seccomp filter compiled?)
are learnt once at start. A layer the profile requires but the host cannot provide
fails the spawn *before* fork, naming the layer and why; an optional one is left out
and the child records it as missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentlibos.config import Paths
from agentlibos.errors import LibOSError, SandboxError, Unavailable
from agentlibos.jit import deno
from agentlibos.kernel.image import Limits
from agentlibos.sandbox import cgroups, landlock, namespaces
from agentlibos.sandbox.profile import (
    LAYERS,
    HostView,
    SandboxConfig,
    SandboxProfile,
    build_profile,
    build_tool_profile,
    host_view,
)

log = logging.getLogger(__name__)
_instances = itertools.count(1)


@dataclass
class Prepared:
    profile: dict[str, Any]
    cgroup: Any  # agentlibos.sandbox.cgroups.ProcessCgroup | None


class SandboxManager:
    def __init__(self, paths: Paths, config: SandboxConfig) -> None:
        self.paths = paths
        self.config = config
        self.unavailable: dict[str, str] = {}  # layer -> why this host cannot apply it
        self.view: HostView | None = None
        self.cgroups: Any = None  # CgroupManager
        self.seccomp_bpf = b""
        self.seccomp_bpf_deno = b""
        self.deno: Any = None  # agentlibos.jit.deno.DenoView, once Deno is found
        self.deno_problem: str | None = None
        self.new_root = paths.run / "root"

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        self.new_root.mkdir(mode=0o700, exist_ok=True)
        self.view = host_view(self.config.read_only_paths)
        if self.config.layer_mode("cgroups") != "disabled":
            self._start_cgroups()
        if self.config.layer_mode("seccomp") != "disabled":
            try:
                # Imported here: it loads libseccomp, which a host may lack.
                from agentlibos.sandbox import seccomp  # noqa: PLC0415

                self.seccomp_bpf = seccomp.compile_bpf(seccomp.build_profile("agent"))
                self.seccomp_bpf_deno = seccomp.compile_bpf(seccomp.build_profile("deno"))
            except (SandboxError, ImportError, OSError) as e:
                self.unavailable["seccomp"] = f"cannot compile the filter: {e}"
        if self.config.layer_mode("landlock") != "disabled" and landlock.abi_version() <= 0:
            self.unavailable["landlock"] = "the kernel does not offer Landlock"
        try:
            self.deno = deno.deno_view(deno.deno_binary())
        except Unavailable as e:
            self.deno_problem = e.message

    def _start_cgroups(self) -> None:
        try:
            host = cgroups.detect()
            # Unique per supervisor instance: a group a previous one in this same process
            # failed to tear down must not block this one.
            mgr = cgroups.CgroupManager(host, f"agentlibos-{os.getpid()}-{next(_instances)}")
            mgr.setup()
            with contextlib.suppress(SandboxError):
                for stale in mgr.cleanup_stale():
                    log.warning("removed a stale cgroup: %s", stale)
            self.cgroups = mgr
        except (LibOSError, OSError) as e:
            self.unavailable["cgroups"] = str(e)

    def stop(self) -> None:
        if self.cgroups is not None:
            try:
                self.cgroups.teardown()
            except (LibOSError, OSError) as e:
                log.error("cgroups: teardown failed: %s", e)
            self.cgroups = None

    # ----------------------------------------------------------------- per process

    def _require(self, layer: str) -> bool:
        """True if ``layer`` should be prepared; raise if it is required but impossible."""
        mode = self.config.layer_mode(layer)
        if mode == "disabled":
            return False
        why = self.unavailable.get(layer)
        if why is None:
            return True
        if mode == "required":
            raise SandboxError(f"{layer}: {why} (mark it optional in the config to run "
                               "without it)")
        return False

    def prepare(self, pid: int, limits: Limits, image_dir: str, scratch: Path) -> Prepared:
        """Everything decided before fork for an AgentProcess: cgroup, profile."""
        assert self.view is not None
        view = self.view
        return self._prepare(str(pid), limits, lambda procs: build_profile(
            config=self.config,
            view=view,
            image_dir=image_dir,
            scratch=str(scratch),
            broker_socket=self.paths.broker_endpoint[len("ipc://"):],
            new_root=str(self.new_root),
            cgroup_procs=procs,
            seccomp_bpf=self.seccomp_bpf,
            supervisor_uid=os.geteuid(),
            supervisor_gid=os.getegid(),
        ))

    def prepare_tool(self, wid: int, read_only_dirs: tuple[str, ...],
                     scratch: Path) -> Prepared:
        """A JIT tool's Deno process: the agents' layers, Deno's view, the tool's limits."""
        if self.deno is None:
            raise Unavailable(self.deno_problem or "Deno is not available")
        dv = self.deno
        return self._prepare(f"t{-wid}", self.config.tool_limits, lambda procs:
                             build_tool_profile(
                                 config=self.config,
                                 exe_files=dv.files,
                                 symlinks=dv.symlinks,
                                 read_only_dirs=read_only_dirs,
                                 scratch=str(scratch),
                                 new_root=str(self.new_root),
                                 cgroup_procs=procs,
                                 seccomp_bpf=self.seccomp_bpf_deno,
                                 supervisor_uid=os.geteuid(),
                                 supervisor_gid=os.getegid(),
                             ))

    def _prepare(self, name: str, limits: Limits,
                 build: Callable[[tuple[str, ...]], SandboxProfile]) -> Prepared:
        for layer in LAYERS:
            self._require(layer)  # fail closed before anything is created
        cgroup = None
        skipped = {layer: why for layer, why in self.unavailable.items()
                   if self.config.layer_mode(layer) == "optional"}
        if self.cgroups is not None and self._require("cgroups"):
            try:
                cgroup = self.cgroups.create(name, cgroups.CgroupLimits(
                    memory_max_bytes=limits.memory_max_bytes, pids_max=limits.pids_max,
                    cpu_max_cores=limits.cpu_max_cores))
            except (LibOSError, OSError) as e:
                if self.config.layer_mode("cgroups") == "required":
                    raise SandboxError(f"cgroups: {e}") from None
                skipped["cgroups"] = str(e)
        profile = build(tuple(cgroup.procs_files) if cgroup is not None else ())
        if profile.mount is not None:
            # Stat every bind source here, once, so the child only issues syscalls.
            try:
                profile = dataclasses.replace(profile, mount=namespaces.compile_mounts(
                    profile.mount))
            except SandboxError as e:
                if self.config.layer_mode("namespaces") == "required":
                    if cgroup is not None:
                        cgroup.remove(timeout_s=0)
                    raise
                skipped["namespaces"] = e.message
        return Prepared(dataclasses.replace(profile, skipped=skipped).to_json(), cgroup)

    @staticmethod
    def verdict(cgroup: Any) -> tuple[bool, bool, dict[str, int]]:
        """(OOM-killed, pids limit hit, stats) of a process's cgroup after it ended."""
        if cgroup is None:
            return False, False, {}
        try:
            return bool(cgroup.oom_killed()), bool(cgroup.pids_limit_hit()), cgroup.stats()
        except (SandboxError, OSError):
            return False, False, {}
