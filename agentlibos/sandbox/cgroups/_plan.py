"""Deciding, pure: where the supervisor's group goes, its directories, and limit files.

:func:`plan_placement` looks at a :class:`HostDescription` (mounts, what each level
offers, who else lives there, what is writable, euid) and returns a :class:`Placement`
or a :class:`Refusal` carrying the reason and the command that fixes it.
:func:`plan_layout` turns a host, a placement and a group name into directories, and
:func:`limit_writes` turns :class:`CgroupLimits` into file writes for v1 or v2.
Nothing here reads or writes the host; see docs/sandbox-cgroups.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from agentlibos.errors import InvalidArgument, SandboxError
from agentlibos.sandbox.cgroups import _v1, _v2
from agentlibos.sandbox.cgroups._common import (
    _FEATURES,
    AGENTS_DIR,
    CPU_PERIOD_US,
    CPU_QUOTA_MIN_US,
    GROUP_PREFIX,
    LIMIT_CONTROLLERS,
    SELF_LEAF,
    SUPERVISOR_LEAF,
    UNIFIED,
    CgroupLimits,
    LimitWrite,
    _check_name,
)
from agentlibos.sandbox.cgroups._host import CgroupHost

# --------------------------------------------------------------------------- limits


def limit_writes(limits: CgroupLimits,
                 versions: Mapping[str, Literal["v1", "v2"]]) -> tuple[LimitWrite, ...]:
    """Which file gets which value, per controller version, in the order to write them.

    ``versions`` says which cgroup version serves each limit controller on this host
    (a hybrid host has v1 memory and could, in theory, have v2 pids). A limit whose
    controller is absent from ``versions`` is refused: an agent must never run with a
    limit silently dropped.
    """
    out: list[LimitWrite] = []

    def version(controller: str) -> Literal["v1", "v2"]:
        v = versions.get(controller)
        if v is None:
            raise SandboxError(f"cgroups: a {controller} limit was asked for but no {controller} "
                               f"controller is usable on this host")
        return v

    if limits.memory_max_bytes is not None:
        mod = _v1 if version("memory") == "v1" else _v2
        out += mod.memory_writes(limits.memory_max_bytes)
    if limits.pids_max is not None:
        version("pids")
        out.append(LimitWrite("pids", "pids.max", str(limits.pids_max)))
    if limits.cpu_max_cores is not None:
        quota = max(CPU_QUOTA_MIN_US, round(limits.cpu_max_cores * CPU_PERIOD_US))
        out += (_v1 if version("cpu") == "v1" else _v2).cpu_writes(quota)
    return tuple(out)


# ------------------------------------------------------------------------ placement

PlacementKind = Literal["own", "root", "delegated", "v1"]

# What an unprivileged operator runs to get a cgroup of their own with every controller.
DELEGATE_COMMAND: Final = "systemd-run --user --scope -p Delegate=yes agentlibos serve"


@dataclass(frozen=True)
class CgroupLevel:
    """One cgroup2 directory as the planner sees it."""

    path: str  # as /proc/self/cgroup names it; "/" is the (namespace's) root
    directory: str  # where it is on this host's cgroupfs
    controllers: frozenset[str] = frozenset()  # its cgroup.controllers
    subtree_control: frozenset[str] = frozenset()  # what it already enables for children
    others: bool = False  # holds processes other than this supervisor
    writable: bool = True  # this process may mkdir in it and write its control files
    exists: bool = True
    # The kernel's root cgroup: exempt from the no-internal-processes rule. A container's
    # cgroup-namespace root looks like "/" from inside but is not exempt.
    exempt: bool = False


@dataclass(frozen=True)
class HostDescription:
    """Everything plan_placement() needs, gathered by describe_host() or written by a test."""

    host: CgroupHost
    euid: int
    own: CgroupLevel | None = None  # the supervisor's cgroup2 cgroup
    root: CgroupLevel | None = None  # the cgroup2 root (as this process sees it)
    delegated: CgroupLevel | None = None  # the operator's [sandbox] cgroup_root, if set
    # v1 hierarchies: the operator's cgroup_root there, directory or None where missing.
    delegated_v1: Mapping[str, str | None] = field(default_factory=dict)
    delegated_v1_writable: bool = True


@dataclass(frozen=True)
class Placement:
    """Where the supervisor makes its group, in each hierarchy it uses, and what it enables."""

    kind: PlacementKind
    bases: Mapping[str, str]  # hierarchy key -> the directory the group is made in
    enable: tuple[str, ...] = ()  # cgroup2 controllers enabled down base -> group -> agents
    # The base is the kernel's root: never disable there what was enabled (other cgroups
    # under the root may be using it by then) and no process rule applies to it.
    base_exempt: bool = False
    why: str = ""  # one sentence for doctor: why this base

    def describe(self) -> str:
        """One line for doctor: which of the placements it made, where, and why."""
        u = self.bases.get(UNIFIED)
        what = {"own": f"own cgroup used ({u})",
                "root": f"created under the root cgroup ({u})",
                "delegated": "delegated cgroup used ("
                             + (u or ", ".join(sorted(set(self.bases.values())))) + ")",
                "v1": "v1: each v1 hierarchy's own cgroup"}[self.kind]
        return what + (f": {self.why}" if self.why else "")


@dataclass(frozen=True)
class Refusal:
    """No cgroup the supervisor may use: why, and what the operator runs to fix it."""

    reason: str
    command: str | None = None

    def message(self) -> str:
        return f"cgroups: {self.reason}" + (f"; to fix it run: {self.command}"
                                             if self.command else "")


def _v2_wanted(host: CgroupHost) -> tuple[str, ...]:
    """The limit controllers only cgroup2 can give here (no v1 hierarchy has them)."""
    if UNIFIED not in host.mounts:
        return ()
    return tuple(c for c in LIMIT_CONTROLLERS if c not in host.mounts)


def _hosts(level: CgroupLevel, wanted: tuple[str, ...]) -> str | None:
    """Why ``level`` cannot hold the group with ``wanted`` enabled; None when it can."""
    if not level.exists:
        return f"{level.path} does not exist"
    if not level.writable:
        return f"{level.directory} is not writable by this process"
    missing = [c for c in wanted if c not in level.controllers]
    if missing:
        return (f"{level.path} is not offered {' '.join(missing)} (its cgroup.controllers: "
                f"{' '.join(sorted(level.controllers)) or 'none'})")
    fresh = [c for c in wanted if c not in level.subtree_control]
    if fresh and level.others and not level.exempt:
        return (f"{level.path} holds other processes, and cgroup v2 enables controllers only "
                f"over cgroups without processes")
    return None


def plan_placement(d: HostDescription) -> Placement | Refusal:
    """Choose the cgroup the supervisor makes its group in. Pure.

    In order: the operator's delegated cgroup when one is given (and nothing else);
    else the supervisor's own cgroup when it can host the controllers for children;
    else, as root, a group directly under the kernel's root cgroup, which is exempt
    from the no-internal-processes rule; else a refusal naming the command that gives
    an unprivileged supervisor a delegated cgroup.
    """
    host = d.host
    if not host.own_dirs and d.delegated is None and not d.delegated_v1:
        return Refusal("no usable cgroup hierarchy: "
                       + ("; ".join(host.problems) or "none detected"))
    wanted = _v2_wanted(host)
    v1_bases = {k: v for k, v in host.own_dirs.items() if k != UNIFIED}

    if d.delegated is not None or d.delegated_v1:
        bases: dict[str, str] = {}
        for key, directory in d.delegated_v1.items():
            if directory is None:
                return Refusal(f"the configured cgroup_root does not exist in the {key} "
                               f"hierarchy")
            bases[key] = directory
        if d.delegated_v1 and not d.delegated_v1_writable:
            return Refusal(f"the configured cgroup_root is not writable by this process in "
                           f"the v1 hierarchies ({', '.join(sorted(bases.values()))})",
                           DELEGATE_COMMAND if d.euid != 0 else None)
        if d.delegated is not None:
            why = _hosts(d.delegated, wanted)
            if why is not None:
                return Refusal(f"the configured cgroup_root cannot be used: {why}",
                               DELEGATE_COMMAND if d.euid != 0 else None)
            bases[UNIFIED] = d.delegated.directory
        return Placement("delegated", bases, wanted if d.delegated else (),
                         base_exempt=bool(d.delegated and d.delegated.exempt),
                         why="configured by the operator")

    if UNIFIED not in host.own_dirs or not wanted:
        return Placement("v1", dict(host.own_dirs),
                         why="cgroup v1 holds memory, pids and cpu; cgroup2 is used for "
                             "cgroup.kill only" if UNIFIED in host.own_dirs else "")
    own = d.own
    own_why = "its own cgroup is unknown" if own is None else _hosts(own, wanted)
    if own is not None and own_why is None:
        return Placement("own", {**v1_bases, UNIFIED: own.directory}, wanted,
                         base_exempt=own.exempt,
                         why=f"{own.path} can host {' '.join(wanted)} for children")
    if d.euid != 0:
        return Refusal(f"not root, and its own cgroup cannot host controllers for agents: "
                       f"{own_why}; give it a delegated cgroup (or set [sandbox] cgroup_root "
                       f"or AGENTLIBOS_CGROUP_ROOT to one)", DELEGATE_COMMAND)
    root = d.root
    if root is None or not root.exempt:
        return Refusal(f"its own cgroup cannot host controllers for agents ({own_why}), and "
                       f"the cgroup2 root it sees is not the kernel's (a cgroup namespace), so "
                       f"it is not exempt from the no-internal-processes rule",
                       "systemd-run --scope -p Delegate=yes agentlibos serve (or start the "
                       "container with a cgroup of its own for agentlibos)")
    root_why = _hosts(root, wanted)
    if root_why is not None:
        return Refusal(f"its own cgroup cannot host controllers for agents ({own_why}), nor "
                       f"can the root: {root_why}",
                       "systemd-run --scope -p Delegate=yes agentlibos serve")
    return Placement("root", {**v1_bases, UNIFIED: root.directory}, wanted, base_exempt=True,
                     why=f"{own_why}")


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy the supervisor uses, and what it provides there."""

    key: str  # "unified" or the v1 controller it is named after
    own_dir: str  # the supervisor's own cgroup directory in it (where it goes back to)
    serves: frozenset[str]  # of memory, pids, cpu, freezer, kill
    base_dir: str = ""  # where the group is made; its own cgroup unless placed elsewhere

    @property
    def v2(self) -> bool:
        return self.key == UNIFIED

    @property
    def base(self) -> str:
        return (self.base_dir or self.own_dir).rstrip("/") or "/"


@dataclass(frozen=True)
class Layout:
    """Every directory of one supervisor's group, in every hierarchy it uses::

        <base>/<group>/supervisor                 the supervisor itself (and its zygote)
        <base>/<group>/agents/<name>              one AgentProcess's tree: its limits
        <base>/<group>/agents/<name>/self         the process itself (a leaf)
        <base>/<group>/agents/<name>/<child>/...  each child it spawned, the same way

    ``hierarchies`` is ordered kill-first: a child joins them in this order, so it is
    killable from its first write on, even if a later join fails.
    """

    group: str
    hierarchies: tuple[Hierarchy, ...]
    v2_enable: tuple[str, ...]  # controllers to switch on down <base> -> group -> agents
    base_exempt: bool = False
    kind: PlacementKind = "own"

    def group_dir(self, h: Hierarchy) -> str:
        return f"{h.base.rstrip('/')}/{self.group}"

    def supervisor_dir(self, h: Hierarchy) -> str:
        return f"{self.group_dir(h)}/{SUPERVISOR_LEAF}"

    def agents_dir(self, h: Hierarchy) -> str:
        return f"{self.group_dir(h)}/{AGENTS_DIR}"

    def agent_dir(self, h: Hierarchy, name: str, parent: str | None = None) -> str:
        """An agent's tree directory; ``parent`` is its parent's tree directory, if any."""
        return f"{parent or self.agents_dir(h)}/{name}"

    @staticmethod
    def leaf_dir(tree_dir: str) -> str:
        return f"{tree_dir}/{SELF_LEAF}"

    def hierarchy_for(self, feature: str) -> Hierarchy | None:
        return next((h for h in self.hierarchies if feature in h.serves), None)

    def unified(self) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.v2), None)

    def subtree_control_writes(self) -> tuple[tuple[str, str], ...]:
        """The cgroup.subtree_control writes, top down (each needs the one above it)."""
        h = self.unified()
        if h is None:
            return ()
        return _v2.subtree_control_writes((h.base, self.group_dir(h), self.agents_dir(h)),
                                          self.v2_enable)


def plan_layout(host: CgroupHost, group: str, placement: Placement | None = None) -> Layout:
    """Which hierarchies a supervisor uses, in which order, and what to enable on v2.

    Without a placement the group goes in the supervisor's own cgroups, with what they
    offer (the behaviour before placements, kept for hosts that need nothing else).
    """
    _check_name(group, "group")
    if not group.startswith(GROUP_PREFIX):
        # cleanup_stale() finds leftovers by this prefix; a group without it would leak.
        raise InvalidArgument(f"cgroups: group {group!r} must start with {GROUP_PREFIX!r}")
    bases = dict(placement.bases) if placement is not None else dict(host.own_dirs)
    v2_enable = (placement.enable if placement is not None
                 else tuple(c for c in LIMIT_CONTROLLERS if host.hierarchy_of(c) == UNIFIED))
    serves: dict[str, set[str]] = {}
    for feature in _FEATURES:
        key = host.hierarchy_of(feature)
        if feature in LIMIT_CONTROLLERS and feature in v2_enable:
            key = UNIFIED
        elif key == UNIFIED and feature in LIMIT_CONTROLLERS:
            key = None  # offered by its own cgroup, but not enabled where the group goes
        if key is not None and key in bases:
            serves.setdefault(key, set()).add(feature)
    if UNIFIED in bases:
        # Joined even with no controller: cgroup.events and cpu.stat's usage_usec are there.
        serves.setdefault(UNIFIED, set())
    by_dir: dict[str, Hierarchy] = {}
    for key, feats in serves.items():
        base = bases[key]
        own = host.own_dirs.get(key, base)
        if base in by_dir:  # co-mounted v1 controllers (memory,pids) share one directory
            old = by_dir[base]
            by_dir[base] = Hierarchy(old.key, old.own_dir, old.serves | feats, base)
        else:
            by_dir[base] = Hierarchy(key, own, frozenset(feats), base)
    order = (UNIFIED, "freezer", "memory", "pids", "cpu")

    def rank(h: Hierarchy) -> tuple[int, int]:
        first = 0 if "kill" in h.serves else 1 if "freezer" in h.serves else 2
        return first, order.index(h.key) if h.key in order else len(order)

    hierarchies = tuple(sorted(by_dir.values(), key=rank))
    return Layout(group=group, hierarchies=hierarchies, v2_enable=v2_enable,
                  base_exempt=placement.base_exempt if placement is not None else False,
                  kind=placement.kind if placement is not None else "own")
