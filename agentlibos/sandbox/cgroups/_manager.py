"""Applying, the supervisor's group: placing it, creating agents' cgroups, tearing down."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from typing import Any, Literal

from agentlibos.errors import SandboxError
from agentlibos.kernel.units import format_size
from agentlibos.sandbox.cgroups import _v1, _v2
from agentlibos.sandbox.cgroups._common import (
    _V1_KEYS,
    GROUP_PREFIX,
    STALE_MIN_AGE_S,
    SUPERVISOR_LEAF,
    SWEEP_TIMEOUT_S,
    UNIFIED,
    CgroupLimits,
    LimitWrite,
    _check_name,
)
from agentlibos.sandbox.cgroups._host import CgroupHost
from agentlibos.sandbox.cgroups._kernel import (
    HOST_FS,
    CgroupFs,
    _kill_tree,
    _KillVia,
    _poll,
    _procs,
    _rmdir_all,
    _sweep,
    _tree,
    _why,
)
from agentlibos.sandbox.cgroups._plan import (
    DELEGATE_COMMAND,
    Hierarchy,
    Placement,
    limit_writes,
    plan_layout,
)
from agentlibos.sandbox.cgroups._process import ProcessCgroup


class CgroupManager:
    """One supervisor's cgroups: its group, its own leaf, and one cgroup per agent.

    See :class:`Layout` for the directories. On every host shape the supervisor moves
    into ``<base>/<group>/supervisor``: cgroup v2 requires it (controllers can be enabled
    only over cgroups without processes), and everywhere a populated leaf is what tells
    a live supervisor's group from a dead one's, across pid namespaces. ``<base>`` is
    its own cgroup unless a :class:`Placement` (see plan_placement) puts the group
    elsewhere: under the root cgroup, or in a delegated one.

    Call setup() before starting helper processes (the zygote), so they start in the
    leaf too: on v2 a helper left in ``<own>`` keeps the controllers from being enabled,
    and helpers started later inherit the leaf.
    """

    def __init__(self, host: CgroupHost, group: str, *, fs: CgroupFs | None = None,
                 placement: Placement | None = None) -> None:
        self.host = host
        self.group = group
        self.placement = placement
        self.layout = plan_layout(host, group, placement)
        self.fs: CgroupFs = fs if fs is not None else HOST_FS
        self._pid = 0
        self._moved: list[Hierarchy] = []
        self._enabled_in_base: tuple[str, ...] = ()
        self._ready = False

    # ..................................................................... helpers

    def _mkdir(self, path: str, what: str) -> None:
        try:
            self.fs.mkdir(path)
        except OSError as e:
            raise SandboxError(f"cgroups: cannot create {path} ({what}): {_why(e)}",
                               path=path, errno=e.errno) from e

    def _write(self, path: str, value: str, what: str) -> None:
        try:
            self.fs.write(path, value)
        except OSError as e:
            hint = _why(e)
            if e.errno == errno.EINVAL:
                hint = "the kernel rejected the value (above an ancestor's limit?)"
            elif (e.errno == errno.EBUSY and value.isdigit()
                  and path.endswith(("memory.max", "memory.limit_in_bytes"))):
                # The process is in its cgroup already (a pooled one, or v1's check): a
                # limit below what it uses cannot be set, and no agent could run in it.
                hint = (f"{format_size(int(value))} is below what the process already "
                        "uses; give [limits] memory a realistic value (tens of MiB)")
            raise SandboxError(f"cgroups: cannot {what}: writing {value!r} to {path}: {hint}",
                               path=path, value=value, errno=e.errno) from e

    def _controller_problems(self, feature: str) -> str:
        lines = [p for p in self.host.problems if p.startswith(f"{feature}:")]
        return "; ".join(lines) or f"{feature}: not usable on this host"

    def _group_live(self, group: str) -> set[int]:
        """The processes in that group's supervisor leaf, in any hierarchy."""
        return {p for h in self.layout.hierarchies
                for p in _procs(self.fs, f"{h.base.rstrip('/')}/{group}/{SUPERVISOR_LEAF}")}

    def _group_via(self, roots: Mapping[str, str]) -> _KillVia:
        """How to kill a whole group's tree, given its root dir per hierarchy key."""
        u = roots.get(UNIFIED)
        fz = self.layout.hierarchy_for("freezer")
        if "kill" in self.host.usable and u and self.fs.exists(f"{u}/cgroup.kill"):
            return _KillVia(tuple(roots.values()), kill_file=f"{u}/cgroup.kill")
        if fz is not None and not fz.v2 and fz.key in roots:
            return _KillVia(tuple(roots.values()),
                            freezer_state=f"{roots[fz.key]}/{_v1.FREEZER_STATE}")
        if u and self.fs.exists(f"{u}/cgroup.freeze"):
            return _KillVia(tuple(roots.values()), freeze_file=f"{u}/cgroup.freeze")
        return _KillVia(tuple(roots.values()))

    def _group_elsewhere(self, group: str, roots: Mapping[str, str]) -> dict[str, str]:
        """The group's directories in hierarchies where its supervisor had another base.

        A group is found under *our* base in each hierarchy, but a dead supervisor may
        have had a different one in some (on this kind of host the memory cgroup differs
        per session while the others are shared). Its agents' /proc/<pid>/cgroup names
        those: remove them too, or they would leak where no later supervisor looks.
        """
        found: dict[str, str] = {}
        for pid in sorted(_sweep(self.fs, list(roots.values()))):
            try:
                text = self.fs.read(f"/proc/{pid}/cgroup")
            except OSError:
                continue
            for line in text.splitlines():
                fields = line.split(":", 2)
                if len(fields) != 3:
                    continue
                ctrls, parts = fields[1], fields[2].split("/")
                key = UNIFIED if not ctrls else next(
                    (c for c in ctrls.split(",") if c in _V1_KEYS), None)
                if key is None or key in roots or key in found or group not in parts:
                    continue
                mount = self.host.mounts.get(key)
                d = f"{mount}{'/'.join(parts[:parts.index(group) + 1])}" if mount else None
                if d and self.fs.exists(d):
                    found[key] = d
        return found

    def _remove_group(self, group: str, timeout_s: float) -> tuple[list[str], dict[str, str]]:
        """Kill everything in a (dead) group and rmdir it; (removed roots, {left: why})."""
        roots = {h.key: f"{h.base.rstrip('/')}/{group}" for h in self.layout.hierarchies
                 if self.fs.exists(f"{h.base.rstrip('/')}/{group}")}
        if not roots:
            return [], {}
        roots.update(self._group_elsewhere(group, roots))
        _kill_tree(self.fs, self._group_via(roots))
        _poll(lambda: not _sweep(self.fs, list(roots.values())), timeout_s)
        left = _rmdir_all(self.fs, [d for r in roots.values() for d in _tree(self.fs, r)],
                          timeout_s)
        return [r for r in roots.values() if r not in left], left

    # ......................................................................... API

    def setup(self) -> None:
        """Create the group in every hierarchy and move the supervisor into its leaf."""
        if self._ready:
            return
        if not self.layout.hierarchies:
            raise SandboxError("cgroups: no usable cgroup hierarchy on this host: "
                               + ("; ".join(self.host.problems) or "none detected"))
        if not {"kill", "freezer"} & self.host.usable:
            raise SandboxError("cgroups: cannot contain agents: "
                               + self._controller_problems("kill"))
        existing = [self.layout.group_dir(h) for h in self.layout.hierarchies
                    if self.fs.exists(self.layout.group_dir(h))]
        if existing:
            # Our name, left by a dead supervisor that had our pid (another boot's, another
            # pid namespace's): reclaim it. A live one (even this very process, under
            # another manager) is refused: killing its group would kill it.
            live = self._group_live(self.group)
            if live:
                raise SandboxError(f"cgroups: {existing[0]} belongs to a live "
                                   f"supervisor (pids {sorted(live)}); pick another group name")
            _, left = self._remove_group(self.group, SWEEP_TIMEOUT_S)
            if left:
                raise SandboxError(f"cgroups: a dead supervisor's {self.group} could not be "
                                   f"removed: {'; '.join(f'{d} ({w})' for d, w in left.items())}")
        pid = os.getpid()
        created: list[str] = []
        try:
            for h in self.layout.hierarchies:
                for d in (self.layout.group_dir(h), self.layout.supervisor_dir(h),
                          self.layout.agents_dir(h)):
                    self._mkdir(d, "the supervisor's group")
                    created.append(d)
            for h in self.layout.hierarchies:
                self._write(f"{self.layout.supervisor_dir(h)}/cgroup.procs", str(pid),
                            "move the supervisor into its leaf")
                self._moved.append(h)
            self._enable_v2()
        except SandboxError as e:
            undone = self._undo_setup(pid, created)
            if undone:
                e.message += f"; could not undo: {', '.join(undone)}"
                e.args = (e.message,)
            raise
        self._pid = pid
        self._ready = True

    def _enable_v2(self) -> None:
        writes = self.layout.subtree_control_writes()
        if not writes:
            return
        base_file = writes[0][0]
        try:
            before = set(self.fs.read(base_file).split())
        except OSError as e:
            raise SandboxError(f"cgroups: cannot read {base_file}: {_why(e)}") from e
        self._enabled_in_base = tuple(c for c in self.layout.v2_enable if c not in before)
        for path, value in writes:
            try:
                self.fs.write(path, value)
            except OSError as e:
                d = os.path.dirname(path)
                if e.errno == errno.EBUSY:
                    others = sorted(_procs(self.fs, d))
                    why = (f"{d} still holds other processes {others}, and cgroup v2 allows "
                           f"controllers only over cgroups without processes; give the "
                           f"supervisor a cgroup of its own (run it as root, which makes one "
                           f"under the root cgroup, or: {DELEGATE_COMMAND})")
                elif e.errno == errno.ENOENT:
                    why = (f"{d} is not offered one of them (see its cgroup.controllers); the "
                           f"parent must delegate it (Delegate=yes)")
                else:
                    why = _why(e)
                raise SandboxError(f"cgroups: cannot enable {value} in {path}: {why}",
                                   path=path, errno=e.errno) from e

    def _disable_v2(self) -> str | None:
        """Undo our subtree_control writes in <base>, so the supervisor may go back there.

        Never at the kernel's root: it takes processes whatever it enables, and by now
        other cgroups under it may be using what was enabled.
        """
        u = self.layout.unified()
        if u is None or not self.layout.v2_enable:
            return None
        off = _v2.disable_value(self.layout.v2_enable)
        steps = [(self.layout.agents_dir(u), off), (self.layout.group_dir(u), off)]
        if self._enabled_in_base and not self.layout.base_exempt:
            steps.append((u.base, _v2.disable_value(self._enabled_in_base)))
        # A controller can be disabled only once no child has it enabled: bottom up.
        for d, value in steps:
            if not self.fs.exists(d):
                continue
            try:
                self.fs.write(f"{d.rstrip('/')}/{_v2.SUBTREE_CONTROL}", value)
            except OSError as e:
                return f"cannot write {value!r} to {d}/{_v2.SUBTREE_CONTROL}: {_why(e)}"
        self._enabled_in_base = ()
        return None

    def _undo_setup(self, pid: int, created: list[str]) -> list[str]:
        self._disable_v2()
        for h in reversed(self._moved):
            with contextlib.suppress(OSError):
                self.fs.write(f"{h.own_dir.rstrip('/')}/cgroup.procs", str(pid))
        self._moved.clear()
        return list(_rmdir_all(self.fs, created, SWEEP_TIMEOUT_S))

    def create(self, name: str, limits: CgroupLimits,
               parent: ProcessCgroup | None = None) -> ProcessCgroup:
        """Make the agent's cgroup in every hierarchy and write its limits (before fork).

        With ``parent`` (another cgroup this manager made) the new one is made inside
        it, so the kernel charges the child to every ancestor too: a tree shares its
        root's budget whatever limits its members were given. The process itself joins
        the leaf ``<tree>/self``; its children's trees sit beside that leaf.
        """
        if not self._ready:
            raise SandboxError("cgroups: create() before setup()")
        _check_name(name, "agent name")
        lay, fs = self.layout, self.fs
        if parent is not None:
            if len(parent.dirs) != len(lay.hierarchies) or not all(
                    d.startswith(lay.agents_dir(h) + "/")
                    for d, h in zip(parent.dirs, lay.hierarchies, strict=True)):
                raise SandboxError(f"cgroups: the parent of {name} ({parent.name}) is not a "
                                   f"cgroup of this supervisor's group")
            gone = [d for d in parent.dirs if not fs.exists(d)]
            if gone:
                raise SandboxError(f"cgroups: the parent of {name} ({parent.name}) has no "
                                   f"cgroup any more ({gone[0]} is gone)")
            self._check_room(name, parent)
        writes = self._limit_writes(name, limits)
        trees = {h: lay.agent_dir(h, name, None if parent is None else parent.dirs[i])
                 for i, h in enumerate(lay.hierarchies)}
        made: list[str] = []
        try:
            for h, tree in trees.items():
                self._mkdir(tree, f"agent {name}")
                made.append(tree)
                if h.v2 and lay.v2_enable:
                    # Before the leaf exists, so its children's limits can be enforced.
                    self._write(f"{tree}/{_v2.SUBTREE_CONTROL}",
                                _v2.enable_value(lay.v2_enable),
                                f"enable controllers for the children of agent {name}")
                self._mkdir(lay.leaf_dir(tree), f"agent {name}")
                made.append(lay.leaf_dir(tree))
            self._write_limits(name, trees, writes)
            pc = self._describe(name, trees)
        except SandboxError:
            _rmdir_all(fs, made, SWEEP_TIMEOUT_S)
            raise
        return pc

    def _write_limits(self, name: str, trees: dict[Any, str],
                      writes: tuple[LimitWrite, ...]) -> None:
        """Write agent ``name``'s limits into its directories (``trees``, by hierarchy)."""
        lay, fs = self.layout, self.fs
        for w in writes:
            h = lay.hierarchy_for(w.controller)
            assert h is not None  # _limit_writes refused a limit without its controller
            path = f"{trees[h]}/{w.file}"
            if w.optional and not fs.exists(path):
                continue
            self._write(path, w.value, f"set the {w.controller} limit of agent {name}")

    def _limit_writes(self, name: str, limits: CgroupLimits) -> tuple[LimitWrite, ...]:
        versions: dict[str, Literal["v1", "v2"]] = {}
        for c, wanted in (("memory", limits.memory_max_bytes), ("pids", limits.pids_max),
                          ("cpu", limits.cpu_max_cores)):
            h = self.layout.hierarchy_for(c)
            if h is not None:
                versions[c] = "v2" if h.v2 else "v1"
            elif wanted is not None:
                raise SandboxError(f"cgroups: agent {name} asks for a {c} limit, but "
                                   + self._controller_problems(c))
        return limit_writes(limits, versions)

    # ......................................................... the warm pool's cgroups

    def pool_recipe(self) -> dict[str, Any]:
        """How a pooled process makes and joins a top-level cgroup of its own before it
        has an assignment (JSON; cgroups.make_own): each hierarchy's agents directory,
        kill-first, and a v2 tree's cgroup.subtree_control value (as :meth:`create`).
        Joining is slow on the hot path (the kernel's global cgroup_threadgroup_rwsem, an
        RCU grace period if idle; a move between cpu cgroups reschedules: 0.8-12 ms): a
        pooled process pays it early; the supervisor writes limits there (:meth:`adopt`)."""
        if not self._ready:
            raise SandboxError("cgroups: pool_recipe() before setup()")
        lay = self.layout
        enable = _v2.enable_value(lay.v2_enable) if lay.v2_enable else None
        return {"agents_dirs": [lay.agents_dir(h) for h in lay.hierarchies],
                "enable": [enable if h.v2 else None for h in lay.hierarchies]}

    def adopt(self, name: str, limits: CgroupLimits,
              written: CgroupLimits | None = None, *,
              parent: ProcessCgroup | None = None) -> ProcessCgroup:
        """The top-level cgroup ``name`` a pooled process made for itself (pool_recipe),
        made an agent's: its limits written, as :meth:`create` writes them, except those
        ``written`` there already (preset before any spawn wanted it). Nothing of another
        agent is in it: each pooled process makes its own, serves one agent, and the
        cgroup is removed with that agent (or unused, with the process).

        With ``parent``: ``name`` is a spare made inside that cgroup ahead of need (by
        :meth:`create`, with the limits ``written``, while no process was in it), taken
        by a child of its owner; the tree must have room for it, as :meth:`create`
        checks."""
        _check_name(name, "pooled cgroup name")
        lay, fs = self.layout, self.fs
        trees = {h: lay.agent_dir(h, name, None if parent is None else parent.dirs[i])
                 for i, h in enumerate(lay.hierarchies)}
        gone = [d for d in trees.values() if not fs.exists(d)]
        if gone:
            raise SandboxError(f"cgroups: the pooled cgroup {gone[0]} is gone", path=gone[0])
        if parent is not None:
            self._check_room(name, parent)
        done = set(self._limit_writes(name, written)) if written is not None else set()
        self._write_limits(name, trees, tuple(
            w for w in self._limit_writes(name, limits) if w not in done))
        return self._describe(name, trees)

    def pooled_cgroup(self, name: str) -> ProcessCgroup:
        """The cgroup a pooled process made for itself, to remove once it is unused."""
        _check_name(name, "pooled cgroup name")
        return self._describe(name, {h: self.layout.agent_dir(h, name)
                                     for h in self.layout.hierarchies})

    def _check_room(self, name: str, parent: ProcessCgroup) -> None:
        """Refuse a child whose tree has no pid left for it.

        Moving a process into a cgroup is not checked against pids.max (only fork is),
        so a child forked outside the tree and joining it would overshoot the tree's
        budget by one per spawn. Checked here, before fork; what remains is a race of
        spawns in flight at the same moment (closed for good by forking the child
        straight into its cgroup, clone3 CLONE_INTO_CGROUP).
        """
        h = self.layout.hierarchy_for("pids")
        if h is None or parent.pids_dir is None:
            return
        top = self.layout.agents_dir(h)
        d = parent.pids_dir
        while d.startswith(top + "/"):
            try:
                limit = self.fs.read(f"{d}/pids.max").strip()
                current = int(self.fs.read(f"{d}/pids.current"))
            except (OSError, ValueError):
                limit, current = "max", 0
            if limit != "max" and current >= int(limit):
                raise SandboxError(f"cgroups: no room for {name}: its tree {d} already holds "
                                   f"{current} of its {limit} pids", path=d)
            d = os.path.dirname(d)

    def _describe(self, name: str, trees: Mapping[Hierarchy, str]) -> ProcessCgroup:
        lay, fs = self.layout, self.fs

        def tree_of(feature: str) -> str | None:
            h = lay.hierarchy_for(feature)
            return None if h is None else trees[h]

        u = lay.unified()
        udir = None if u is None else trees[u]
        kill_file = freezer_state = freeze_file = None
        fz = lay.hierarchy_for("freezer")
        if "kill" in self.host.usable and udir and fs.exists(f"{udir}/{_v2.KILL}"):
            kill_file = f"{udir}/{_v2.KILL}"
        elif fz is not None and not fz.v2:
            freezer_state = f"{trees[fz]}/{_v1.FREEZER_STATE}"
        elif udir and "freezer" in self.host.usable and fs.exists(f"{udir}/{_v2.FREEZE}"):
            freeze_file = f"{udir}/{_v2.FREEZE}"
        else:
            raise SandboxError(f"cgroups: no way to kill agent {name}'s whole tree: "
                               + self._controller_problems("kill"))
        mem, cpu = lay.hierarchy_for("memory"), lay.hierarchy_for("cpu")
        dirs = tuple(trees[h] for h in lay.hierarchies)
        return ProcessCgroup(
            procs_files=tuple(f"{lay.leaf_dir(d)}/cgroup.procs" for d in dirs), name=name,
            dirs=dirs, memory_dir=tree_of("memory"), memory_v2=mem is not None and mem.v2,
            pids_dir=tree_of("pids"), cpu_dir=tree_of("cpu"),
            cpu_v2=cpu is not None and cpu.v2, unified_dir=udir, kill_file=kill_file,
            freezer_state_file=freezer_state, freeze_file=freeze_file, fs=fs)

    def cleanup_stale(self, *, min_age_s: float = STALE_MIN_AGE_S) -> list[str]:
        """Kill and remove the groups of supervisors that died; return the dirs removed.

        A group is stale when its supervisor leaf holds no process in any hierarchy (its
        supervisor is gone, whatever pid namespace it ran in) and it is at least
        ``min_age_s`` old (a supervisor between mkdir and moving in looks the same).
        """
        names: set[str] = set()
        for h in self.layout.hierarchies:
            with contextlib.suppress(OSError):
                names.update(n for n in self.fs.subdirs(h.base)
                             if n.startswith(GROUP_PREFIX) and n != self.group)
        removed: list[str] = []
        failed: dict[str, str] = {}
        for n in sorted(names):
            if self._group_live(n):
                continue
            ages = [self.fs.age_s(f"{h.base.rstrip('/')}/{n}")
                    for h in self.layout.hierarchies
                    if self.fs.exists(f"{h.base.rstrip('/')}/{n}")]
            if not ages or min(ages) < min_age_s:
                continue
            gone, left = self._remove_group(n, SWEEP_TIMEOUT_S)
            removed += gone
            failed.update(left)
        if failed:
            raise SandboxError("cgroups: stale cgroups could not be removed: "
                               + "; ".join(f"{d} ({w})" for d, w in failed.items()),
                               removed=removed, left=sorted(failed))
        return removed

    def teardown(self, timeout_s: float = 2.0) -> None:
        """Move the supervisor back to its own cgroup and remove the group.

        Every agent must be gone: agent cgroups still holding processes are refused
        (kill() and remove() them first); empty ones left behind are removed.
        """
        if not self._ready:
            return
        lay, fs = self.layout, self.fs
        agents = [d for h in lay.hierarchies for n in self._subdirs(lay.agents_dir(h))
                  for d in _tree(fs, f"{lay.agents_dir(h)}/{n}")]
        live = _sweep(fs, agents)
        if live:
            raise SandboxError(f"cgroups: teardown while agents still run (pids {sorted(live)}); "
                               f"kill() and remove() their cgroups first")
        troubles: list[str] = []
        left = _rmdir_all(fs, [*agents, *(lay.agents_dir(h) for h in lay.hierarchies)],
                          timeout_s)
        # Only matters if it keeps the supervisor from going back: the root cgroup takes
        # processes whatever its subtree_control says.
        disable_err = self._disable_v2()
        for h in list(reversed(self._moved)):
            try:
                fs.write(f"{h.own_dir.rstrip('/')}/cgroup.procs", str(self._pid))
            except OSError as e:
                troubles.append(f"cannot move the supervisor back to {h.own_dir}: {_why(e)}"
                                + (f" ({disable_err})" if disable_err else ""))
            else:
                self._moved.remove(h)
        gone = [h for h in lay.hierarchies if h not in self._moved]
        left.update(_rmdir_all(fs, [d for h in gone for d in
                                    (lay.supervisor_dir(h), lay.group_dir(h))], timeout_s))
        for h in self._moved:  # still holding the supervisor: no use polling rmdir
            left[lay.supervisor_dir(h)] = "the supervisor is still in it"
        self._ready = bool(self._moved)
        if left or troubles:
            raise SandboxError(
                "cgroups: teardown left "
                + "; ".join([*(f"{d} ({w})" for d, w in left.items()), *troubles])
                + " (a later supervisor's cleanup_stale() removes them once this one exits)",
                left=sorted(left))

    def _subdirs(self, d: str) -> list[str]:
        try:
            return self.fs.subdirs(d)
        except OSError:
            return []
