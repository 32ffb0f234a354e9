"""The supervisor's side of the sandbox: prepare each process's profile before fork,
and account for its cgroup after it ends.

Host-level facts (can this host do cgroups? Landlock? is the seccomp filter compiled?)
are learnt once at start. A layer the profile requires but the host cannot provide
fails the spawn *before* fork, naming the layer and why; an optional one is left out
and the child records it as missing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlibos.config import Paths
from agentlibos.errors import LibOSError, SandboxError, Unavailable
from agentlibos.jit import deno
from agentlibos.kernel.image import Limits
from agentlibos.sandbox import cgroups, landlock, mountfd, namespaces, pool
from agentlibos.sandbox.profile import (
    LAYERS,
    HostView,
    SandboxConfig,
    SandboxProfile,
    build_profile,
    build_shell_profile,
    build_tool_profile,
    effective_limits,
    host_view,
    shell_view,
)

log = logging.getLogger(__name__)

# The environment's way to set [sandbox] cgroup_root (e.g. from a systemd unit).
CGROUP_ROOT_ENV = "AGENTLIBOS_CGROUP_ROOT"
_instances = itertools.count(1)
# Spare cgroups (SandboxManager.on_ready): at most this many held at once, each made this
# long after the child that asked for it answered its first syscall (off its path).
MAX_SPARES = 64
SPARE_AFTER_S = 0.002


@dataclass
class Prepared:
    profile: dict[str, Any]
    cgroup: Any  # agentlibos.sandbox.cgroups.ProcessCgroup | None
    pool: str | None = None  # the warm pool's key, if a pooled process may take it
    # The pooled process (by the cgroup it made) the zygote must hand it to, if any.
    pool_cgroup: str | None = None
    # That process's own cgroup when the agent lives in another (a nested agent's, in
    # its parent's): empty once it moved out, removed when the agent has ended.
    pool_leftover: Any = None
    # For a pooled process, which can no longer name host paths: its agent's binds,
    # cloned here (mountfd.clone_bind), and where each goes. The caller sends and closes.
    mount_fds: list[int] = field(default_factory=list)
    mount_targets: list[str] = field(default_factory=list)
    # And a nested agent's cgroup.procs files, opened (contain.Handed says why).
    cgroup_fds: list[int] = field(default_factory=list)

    @property
    def fds(self) -> list[int]:
        """What goes to the zygote with the spawn, in this order."""
        return [*self.mount_fds, *self.cgroup_fds]

    def assignment(self) -> dict[str, Any]:
        """The spawn spec's keys that name those descriptors (child._read_assignment)."""
        return {"mount_fds": self.mount_targets,
                "cgroup_fds": self.profile.get("cgroup_procs") if self.cgroup_fds else []}

    def close(self) -> None:
        """Close the descriptors (once sent to the zygote, or not to be)."""
        for fd in self.fds:
            os.close(fd)
        self.mount_fds, self.cgroup_fds = [], []


class SandboxManager:
    def __init__(self, paths: Paths, config: SandboxConfig) -> None:
        self.paths = paths
        self.config = config
        self.unavailable: dict[str, str] = {}  # layer -> why this host cannot apply it
        self.view: HostView | None = None
        self.cgroups: cgroups.CgroupManager | None = None
        # One line for doctor and ps: where the supervisor's cgroup group went, or why none.
        self.cgroup_placement: str | None = None
        # Agents' cgroups by pid, so a child's is made inside its parent's.
        self._by_pid: dict[int, cgroups.ProcessCgroup] = {}
        self.seccomp_bpf = b""
        self.seccomp_bpf_deno = b""
        self.seccomp_bpf_shell = b""
        self.seccomp_bpf_pool = b""
        # The warm pool's template ({"key", "base"}), once pool_template() made one.
        self.pool: dict[str, Any] | None = None
        # Pooled processes ready for an agent, by the cgroup each made for itself (the
        # zygote's "pool-ready"), oldest first; and those handed to an agent, by pid.
        self.pool_ready: collections.deque[str] = collections.deque()
        self._pool_claims: dict[int, str] = {}
        # Limits already written into a ready pooled cgroup (on_pool_ready), so that a
        # spawn taking it with those limits writes nothing there on its hot path.
        self._preset: dict[str, cgroups.CgroupLimits] = {}
        # A spare cgroup made inside an agent's own ahead of its next child (on_ready),
        # by that agent's pid, with the limits written in it; the children that will
        # ask for one once ready (child -> parent, limits); the agents whose cgroup is
        # not named by their pid (a spare or a pooled one taken), by that name.
        self.spares_on = False  # with the warm pool (pool_template)
        self._spares: dict[int, tuple[cgroups.ProcessCgroup, cgroups.CgroupLimits]] = {}
        self._spare_due: dict[int, tuple[int, cgroups.CgroupLimits]] = {}
        self._spare_names = itertools.count(1)
        self._pid_of: dict[str, int] = {}
        self.shell_view: HostView | None = None
        self.deno: Any = None  # agentlibos.jit.deno.DenoView, once Deno is found
        self.deno_problem: str | None = None
        self.new_root = paths.run / "root"

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        self.new_root.mkdir(mode=0o700, exist_ok=True)
        self.view = host_view(self.config.read_only_paths)
        self.shell_view = shell_view()
        if self.config.layer_mode("cgroups") != "disabled":
            self._start_cgroups()
        if self.config.layer_mode("seccomp") != "disabled":
            try:
                # Imported here: it loads libseccomp, which a host may lack.
                from agentlibos.sandbox import seccomp  # noqa: PLC0415

                self.seccomp_bpf = seccomp.compile_bpf(seccomp.build_profile("agent"))
                self.seccomp_bpf_deno = seccomp.compile_bpf(seccomp.build_profile("deno"))
                self.seccomp_bpf_shell = seccomp.compile_bpf(seccomp.build_profile("shell"))
                self.seccomp_bpf_pool = seccomp.compile_bpf(seccomp.build_profile("pool"))
            except (SandboxError, ImportError, OSError) as e:
                self.unavailable["seccomp"] = f"cannot compile the filter: {e}"
        if self.config.layer_mode("landlock") != "disabled" and landlock.abi_version() <= 0:
            self.unavailable["landlock"] = "the kernel does not offer Landlock"
        try:
            self.deno = deno.deno_view(deno.deno_binary())
        except Unavailable as e:
            self.deno_problem = e.message

    def _start_cgroups(self) -> None:
        """Place the supervisor's group (see cgroups.plan_placement) and move in.

        Before the zygote starts: it and every helper inherit the supervisor's leaf.
        """
        root = self.config.cgroup_root or os.environ.get(CGROUP_ROOT_ENV) or None
        try:
            host = cgroups.detect()
            plan = cgroups.place(host, cgroup_root=root)
            if isinstance(plan, cgroups.Refusal):
                self.unavailable["cgroups"] = plan.message()
                self.cgroup_placement = f"none: {plan.message()}"
                return
            # Unique per supervisor instance: a group a previous one in this same process
            # failed to tear down must not block this one.
            mgr = cgroups.CgroupManager(host, f"agentlibos-{os.getpid()}-{next(_instances)}",
                                        placement=plan)
            mgr.setup()
            with contextlib.suppress(SandboxError):
                stale = mgr.cleanup_stale()
                if stale:  # one line, however many a dead supervisor left
                    log.warning("removed %d stale cgroup(s) left by a supervisor that died: %s",
                                len(stale), ", ".join(stale))
            self.cgroups = mgr
            self.cgroup_placement = plan.describe()
        except (LibOSError, OSError) as e:
            self.unavailable["cgroups"] = str(e)
            self.cgroup_placement = f"none: {e}"

    def pool_template(self, size: int) -> dict[str, Any] | None:
        """The zygote's "pool" message for ``size`` pooled processes, or None where the
        pool cannot serve (docs/sandbox.md): not root, a user namespace, a layer it
        pre-applies disabled or missing here."""
        self.pool = None
        self.pool_ready.clear()  # a new zygote: the old one's pool died with it
        self.spares_on = size > 0 and self.cgroups is not None
        usable = (size > 0 and os.geteuid() == 0 and self.view is not None
                  and self.config.user_namespace != "always" and self.seccomp_bpf_pool
                  and all(self.config.layer_mode(layer) != "disabled"
                          and layer not in self.unavailable for layer in pool.PRE_APPLIED))
        if not usable or self.view is None:
            return None
        # A pooled process pivots before its assignment and is handed its binds as
        # descriptors (sandbox/mountfd.py): without that API, every spawn goes cold.
        why = mountfd.missing()
        if why is not None:
            log.warning("no warm pool: %s", why)
            return None
        try:
            recipe = None
            if self.cgroups is not None and self.config.layer_mode("cgroups") != "disabled":
                recipe = self.cgroups.pool_recipe()
            self.pool = pool.pool_base(
                config=self.config, view=self.view, new_root=str(self.new_root),
                pool_bpf=self.seccomp_bpf_pool, cgroup=recipe,
                broker_socket=self.paths.broker_socket)
        except SandboxError as e:
            log.warning("no warm pool: %s", e)
            return None
        return {"op": "pool", "size": size, **self.pool}

    def stop(self) -> None:
        for table in (self._by_pid, self._spares, self._spare_due, self._pid_of):
            table.clear()
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

    def prepare(self, pid: int, limits: Limits, image_dir: str, scratch: Path,
                parent_pid: int | None = None) -> Prepared:
        """Everything decided before fork for an AgentProcess: cgroup, profile.

        With ``parent_pid`` its cgroup is made inside its parent's, so the whole tree
        counts against the root's limits (the limits themselves are clamped to the
        parent's by effective_limits(..., parent=)).
        """
        assert self.view is not None
        view = self.view
        # A pooled process with a cgroup of its own, if one is ready: a top-level agent
        # takes over that cgroup (no mkdir here, no move in the child); a nested one
        # still gets one inside its parent's, and the pooled process moves there.
        claim = self._claim_pooled()
        adopt = claim if parent_pid is None else None
        if claim is not None and adopt is None:
            self._preset.pop(claim, None)  # a nested agent leaves that cgroup: forgotten
        try:
            prepared = self._prepare(str(pid), limits, parent_pid, lambda procs: build_profile(
            config=self.config,
            view=view,
            image_dir=image_dir,
            scratch=str(scratch),
            broker_socket=self.paths.broker_socket,
            new_root=str(self.new_root),
            cgroup_procs=procs,
            seccomp_bpf=self.seccomp_bpf,
            supervisor_uid=os.geteuid(),
            supervisor_gid=os.getegid(),
            ), adopt=adopt, spare=True)
            if adopt is not None and getattr(prepared.cgroup, "name", None) != adopt:
                claim = adopt = None  # not adopted: that pooled process is not usable
            fits = self.pool is not None and pool.fits(prepared.profile, self.pool["base"])
            if claim is not None and not fits:
                # It goes cold: it must not join a cgroup a pooled process is still in.
                self._unclaim(claim)
                if adopt is not None and prepared.cgroup is not None:
                    prepared = self._replace_cgroup(prepared, str(pid), limits)
                claim = None
            if fits and self.pool is not None and (claim is not None
                                                   or "cgroup" not in self.pool["base"]):
                # Cloned only when a pooled process will take it: one the zygote closes
                # unused costs it an RCU grace period.
                self._clone_binds(prepared)
            if claim is not None and adopt is None:
                # A nested agent: the join its pooled process may have to make itself.
                self._open_procs(prepared)
        except BaseException:
            if claim is not None:
                self._unclaim(claim)
            raise
        if prepared.cgroup is not None:
            self._by_pid[pid] = prepared.cgroup
            if prepared.cgroup.name != str(pid):
                self._pid_of[prepared.cgroup.name] = pid
            if parent_pid is not None and self.spares_on:
                self._spare_due[pid] = (parent_pid, _cg_limits(limits))
        if fits and self.pool is not None:
            prepared.pool = self.pool["key"]
        if claim is not None:
            assert self.cgroups is not None
            self._pool_claims[pid] = claim
            prepared.pool_cgroup = claim
            if adopt is None:
                prepared.pool_leftover = self.cgroups.pooled_cgroup(claim)
        return prepared

    def _clone_binds(self, prepared: Prepared) -> None:
        assert self.pool is not None
        plan = namespaces.MountPlan.from_json(prepared.profile["mount"])
        done = namespaces.MountPlan.from_json(self.pool["base"]["mount"])
        try:
            for source, target, flags in namespaces.agent_binds(plan, done):
                # A strict source is reached without following a link, as the cold
                # path's child binds it: a link swapped in since the check is not cloned.
                at = (namespaces.open_no_symlinks(source)
                      if flags & namespaces.STRICT_SOURCE else None)
                try:
                    prepared.mount_fds.append(mountfd.clone_bind(source, flags, at=at))
                finally:
                    if at is not None:
                        os.close(at)
                prepared.mount_targets.append(target)
        except BaseException:
            prepared.close()
            raise

    @staticmethod
    def _open_procs(prepared: Prepared) -> None:
        try:
            for path in prepared.profile.get("cgroup_procs") or ():
                prepared.cgroup_fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            prepared.close()
            raise SandboxError(f"cgroups: cannot open {e.filename}: {e.strerror}") from None

    # ......................................................... the pool's cgroups

    def _claim_pooled(self) -> str | None:
        if self.cgroups is None or self.pool is None or "cgroup" not in self.pool["base"]:
            return None
        return self.pool_ready.popleft() if self.pool_ready else None

    def _unclaim(self, name: str) -> None:
        """Back to the front: that pooled process is still ready (limits written into
        its cgroup are overwritten by the next agent that takes it)."""
        self.pool_ready.appendleft(name)

    def _replace_cgroup(self, prepared: Prepared, name: str, limits: Limits) -> Prepared:
        assert self.cgroups is not None
        cgroup = self.cgroups.create(name, _cg_limits(limits))
        profile = {**prepared.profile, "cgroup_procs": list(cgroup.procs_files)}
        return Prepared(profile, cgroup)

    def on_pool_ready(self, name: str) -> None:
        """The zygote's "pool-ready": a pooled process with cgroup ``name`` waits."""
        if self.pool is not None and "cgroup" in self.pool["base"]:
            self.pool_ready.append(name)
            if self.cgroups is not None:
                # The limits of an agent whose image sets none, written now rather than
                # when a spawn takes it (adopt writes only what differs). Best effort:
                # what was not written here is written then.
                preset = _cg_limits(effective_limits(Limits(), self.config))
                with contextlib.suppress(LibOSError, OSError):
                    self.cgroups.adopt(name, preset)
                    self._preset[name] = preset

    def on_pool_gone(self, name: str) -> None:
        """The zygote's "pool-gone": the pooled process of cgroup ``name`` ended without
        an assignment. Unless a spawn claimed it (whose agent then joins that cgroup
        cold, and owns it), remove the cgroup; what cannot be removed yet goes with the
        supervisor's group at stop."""
        self._preset.pop(name, None)
        if name in self._pool_claims.values():
            return
        with contextlib.suppress(ValueError):
            self.pool_ready.remove(name)
        if self.cgroups is not None:
            with contextlib.suppress(LibOSError, OSError):
                self.cgroups.pooled_cgroup(name).remove(timeout_s=0)

    def prepare_tool(self, wid: int, read_only_dirs: tuple[str, ...],
                     scratch: Path, owner_pid: int | None = None) -> Prepared:
        """A JIT tool's Deno process: the agents' layers, Deno's view, the tool's limits.

        With ``owner_pid`` (the AgentProcess calling the tool) its cgroup is made inside
        the owner's, so the tool's memory, pids and CPU count against the owner's tree.
        """
        if self.deno is None:
            raise Unavailable(self.deno_problem or "Deno is not available")
        dv = self.deno
        return self._prepare(f"t{-wid}", self.config.tool_limits, owner_pid, lambda procs:
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

    def tool_cgroup(self, wid: int, owner_pid: int) -> Any:
        """A cgroup for a pooled JIT worker (prepared by ``prepare_tool`` with no owner)
        assigned to ``owner_pid``: the tool limits, inside the owner's cgroup, as a cold
        worker's is made; None where cgroups are not in use. The worker is moved in by
        ``supervisor/jit_pool.move_into``."""
        if self.cgroups is None or not self._require("cgroups"):
            return None
        return self.cgroups.create(f"t{-wid}", _cg_limits(self.config.tool_limits),
                                   parent=self._parent_cgroup(owner_pid))

    def prepare_shell(self, wid: int, *, read_only: tuple[str, ...],
                      read_write: tuple[str, ...], scratch: Path, run_as: tuple[int, int],
                      owner_pid: int) -> Prepared:
        """A shell.exec command: every layer, the "shell" seccomp variant (exec allowed),
        a tree of the system plus the host paths given (the caller's fs capabilities),
        ``scratch`` as its /tmp, running as ``run_as``. Its cgroup is made inside
        ``owner_pid``'s, so what it uses counts against the caller's tree."""
        assert self.shell_view is not None
        view = self.shell_view
        return self._prepare(f"s{-wid}", self.config.shell_limits, owner_pid, lambda procs:
                             build_shell_profile(
                                 config=self.config,
                                 view=view,
                                 read_only=read_only,
                                 read_write=read_write,
                                 scratch=str(scratch),
                                 new_root=str(self.new_root),
                                 cgroup_procs=procs,
                                 seccomp_bpf=self.seccomp_bpf_shell,
                                 run_as=run_as,
                                 supervisor_uid=os.geteuid(),
                                 supervisor_gid=os.getegid(),
                             ))

    def _parent_cgroup(self, parent_pid: int | None) -> cgroups.ProcessCgroup | None:
        if parent_pid is None:
            return None
        return self._by_pid.get(parent_pid)

    def _prepare(self, name: str, limits: Limits, parent_pid: int | None,
                 build: Callable[[tuple[str, ...]], SandboxProfile], *,
                 adopt: str | None = None, spare: bool = False) -> Prepared:
        for layer in LAYERS:
            self._require(layer)  # fail closed before anything is created
        cgroup = None
        skipped = {layer: why for layer, why in self.unavailable.items()
                   if self.config.layer_mode(layer) == "optional"}
        if self.cgroups is not None and self._require("cgroups"):
            cg_limits = _cg_limits(limits)
            if adopt is not None:
                # Its cgroup gone (the process died and it was removed): a fresh one.
                with contextlib.suppress(LibOSError, OSError):
                    cgroup = self.cgroups.adopt(adopt, cg_limits, self._preset.pop(adopt, None))
            try:
                if cgroup is None and spare and parent_pid is not None:
                    cgroup = self._take_spare(parent_pid, cg_limits)
                if cgroup is None:
                    cgroup = self.cgroups.create(name, cg_limits,
                                                 parent=self._parent_cgroup(parent_pid))
            except (LibOSError, OSError) as e:
                if self.config.layer_mode("cgroups") == "required":
                    msg = str(e)
                    raise SandboxError(msg if msg.startswith("cgroups:")
                                       else f"cgroups: {msg}") from None
                skipped["cgroups"] = str(e)
        profile = build(tuple(cgroup.procs_files) if cgroup is not None else ())
        if profile.mount is not None:
            # Stat every bind source here, once, so the child only issues syscalls.
            try:
                profile = dataclasses.replace(profile, mount=namespaces.compile_mounts(
                    profile.mount))
            except SandboxError as e:
                if self.config.layer_mode("namespaces") == "required":
                    if cgroup is not None and cgroup.name != adopt:
                        # Not a pooled process's (it is still in it, and goes back to
                        # the pool); a failed removal must not hide why it failed.
                        with contextlib.suppress(LibOSError, OSError):
                            cgroup.remove(timeout_s=0)
                    raise
                skipped["namespaces"] = e.message
        return Prepared(dataclasses.replace(profile, skipped=skipped).to_json(), cgroup)

    def forget(self, pid: int) -> None:
        """``pid`` ended: no child will be made inside its cgroup any more (its spare,
        if it has one, goes with that cgroup: ProcessCgroup.remove takes the subtree)."""
        cgroup = self._by_pid.pop(pid, None)
        if cgroup is not None:
            self._pid_of.pop(cgroup.name, None)
        self._pool_claims.pop(pid, None)
        self._spares.pop(pid, None)
        self._spare_due.pop(pid, None)

    # ......................................................... spare nested cgroups

    def on_ready(self, pid: int, later: Callable[[float, Callable[[], None]], Any]) -> None:
        """``pid`` answered its first syscall. If it is a child whose parent has no spare
        cgroup, make one inside the parent's, shortly (``later``: the loop's call_later),
        for the parent's next child: on a hybrid host a nested cgroup is eight mkdirs
        (~1.3 ms), on pure v2 two, which that spawn then does not wait for."""
        due = self._spare_due.pop(pid, None)
        if due is not None and due[0] not in self._spares:
            later(SPARE_AFTER_S, lambda: self._make_spare(*due))

    def _make_spare(self, parent_pid: int, limits: cgroups.CgroupLimits) -> None:
        parent = self._by_pid.get(parent_pid)
        if (self.cgroups is None or parent is None or parent_pid in self._spares
                or len(self._spares) >= MAX_SPARES):
            return  # the parent ended, has one, or enough are held
        try:
            spare = self.cgroups.create(f"n{next(self._spare_names)}", limits, parent=parent)
        except (LibOSError, OSError) as e:  # its tree is full, or its cgroup is going
            log.debug("no spare cgroup for %d: %s", parent_pid, e)
            return
        self._spares[parent_pid] = (spare, limits)

    def _take_spare(self, parent_pid: int, limits: cgroups.CgroupLimits
                    ) -> cgroups.ProcessCgroup | None:
        """The spare made inside ``parent_pid``'s cgroup, made a child's: its limits
        written where they differ from the last child's; None if there is none. It never
        held a process: a spare is made empty and taken once."""
        got = self._spares.pop(parent_pid, None)
        parent = self._by_pid.get(parent_pid)
        if got is None or parent is None or self.cgroups is None:
            return None
        spare, written = got
        try:
            return self.cgroups.adopt(spare.name, limits, written, parent=parent)
        except (LibOSError, OSError):
            # Gone, no room, a write refused: the spawn makes its own (create says why,
            # if it fails too); the spare is not used again.
            with contextlib.suppress(LibOSError, OSError):
                spare.remove(timeout_s=0)
            return None

    def verdict(self, cgroup: Any) -> tuple[bool, bool, dict[str, int]]:
        """(OOM-killed, pids limit hit, stats) of a process's cgroup after it ended."""
        if cgroup is None:
            return False, False, {}
        # Called once the process has ended: its cgroup takes no new children now.
        name = getattr(cgroup, "name", "")
        pid = self._pid_of.get(name, int(name) if name.isdigit() else -1)
        if self._by_pid.get(pid) is cgroup:
            self.forget(pid)
        try:
            return bool(cgroup.oom_killed()), bool(cgroup.pids_limit_hit()), cgroup.stats()
        except (SandboxError, OSError):
            return False, False, {}


def _cg_limits(limits: Limits) -> cgroups.CgroupLimits:
    """The cgroup's share of an agent's (or a tool's, a command's) limits."""
    return cgroups.CgroupLimits(memory_max_bytes=limits.memory_max_bytes,
                                pids_max=limits.pids_max, cpu_max_cores=limits.cpu_max_cores)
