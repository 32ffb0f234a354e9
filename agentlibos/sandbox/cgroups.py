"""cgroups: memory, pids and CPU limits for AgentProcesses, and killing a whole tree.

One interface over the three host shapes, chosen at run time by :func:`detect`:

* **v1**: one hierarchy per controller (``/sys/fs/cgroup/memory``, ``.../pids``...);
* **hybrid**: v1 controllers beside a cgroup2 mount that has none of them but still
  offers ``cgroup.kill``, ``cgroup.freeze`` and ``cgroup.events``;
* **v2**: one cgroup2 hierarchy with the controllers, under the "no internal
  processes" rule.

Deciding is pure and needs no root: :func:`detect` turns the texts of
``/proc/self/mountinfo`` and ``/proc/self/cgroup`` into a :class:`CgroupHost`,
:func:`plan_layout` turns a host and a group name into directories and
``cgroup.subtree_control`` writes, and :func:`limit_writes` turns
:class:`CgroupLimits` into ``(controller, file, value)`` writes for v1 or v2.

Enforcing is thin. :class:`CgroupManager` performs those plans on cgroupfs *before*
fork; the forked child calls :func:`join` and nothing else; :class:`ProcessCgroup`
kills and reads back what the kernel counted. Layout, file mapping and what is tested
where: docs/sandbox-cgroups.md.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from agentlibos.errors import InvalidArgument, SandboxError

__all__ = [
    "AGENTS_DIR",
    "CGROUPS_LAYER",
    "CPU_PERIOD_US",
    "GROUP_PREFIX",
    "STALE_MIN_AGE_S",
    "SUPERVISOR_LEAF",
    "CgroupFs",
    "CgroupHost",
    "CgroupLimits",
    "CgroupManager",
    "Hierarchy",
    "HostFs",
    "Layout",
    "LimitWrite",
    "ProcessCgroup",
    "describe",
    "detect",
    "group_name",
    "join",
    "limit_writes",
    "plan_layout",
]

CGROUPS_LAYER: Final = "cgroups"

# Every per-supervisor group starts with this, so cleanup_stale() can find the
# leftovers of any supervisor, whatever its pid, without touching anyone else's cgroups.
GROUP_PREFIX: Final = "agentlibos-"
SUPERVISOR_LEAF: Final = "supervisor"
AGENTS_DIR: Final = "agents"
UNIFIED: Final = "unified"  # the hierarchy key of the cgroup2 mount, in every mapping here

CPU_PERIOD_US: Final = 100_000  # the kernel default CFS period
CPU_QUOTA_MIN_US: Final = 1_000  # the kernel refuses a smaller quota (EINVAL)

# A supervisor that has made its group but not yet moved into its leaf looks exactly like
# a dead one; cleanup_stale() leaves groups younger than this alone.
STALE_MIN_AGE_S: Final = 10.0
FREEZE_TIMEOUT_S: Final = 1.0
SWEEP_TIMEOUT_S: Final = 2.0

# cgroup.kill appeared in Linux 5.14, cgroup.freeze in 5.2.
_KILL_SINCE: Final = (5, 14)
_FREEZE_SINCE: Final = (5, 2)

CgroupVersion = Literal["v1", "v2", "hybrid"]
LIMIT_CONTROLLERS: Final = ("memory", "pids", "cpu")
_FEATURES: Final = ("memory", "pids", "cpu", "freezer", "kill")
_V1_KEYS: Final = ("memory", "pids", "cpu", "cpuacct", "freezer")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class CgroupLimits:
    """What one AgentProcess may use; ``None`` means no limit of that kind."""

    memory_max_bytes: int | None = None
    pids_max: int | None = None
    cpu_max_cores: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("memory_max_bytes", self.memory_max_bytes),
                            ("pids_max", self.pids_max)):
            v: object = value
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidArgument(f"cgroups: {name} must be a positive integer or None, "
                                      f"got {v!r}")
        c: object = self.cpu_max_cores
        if c is None:
            return
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
            raise InvalidArgument(f"cgroups: cpu_max_cores must be a number of cores or None, "
                                  f"got {c!r}")
        if c * CPU_PERIOD_US < CPU_QUOTA_MIN_US:
            raise InvalidArgument(
                f"cgroups: cpu_max_cores={c} is below the smallest quota the kernel accepts "
                f"({CPU_QUOTA_MIN_US / CPU_PERIOD_US} cores)")


@dataclass(frozen=True)
class LimitWrite:
    """One value for one file in one controller's directory of an agent's cgroup."""

    controller: str  # memory | pids | cpu
    file: str
    value: str
    # Written only when the kernel offers the file: swap accounting can be compiled out
    # or off (swapaccount=0), and memory.oom.group needs Linux 4.19.
    optional: bool = False


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
        n = str(limits.memory_max_bytes)
        if version("memory") == "v1":
            # memsw (memory + swap) must be >= the memory limit, so it is written second.
            # Without it an agent that fills its limit is swapped out instead of killed.
            out += [LimitWrite("memory", "memory.limit_in_bytes", n),
                    LimitWrite("memory", "memory.memsw.limit_in_bytes", n, optional=True)]
        else:
            out += [LimitWrite("memory", "memory.max", n),
                    LimitWrite("memory", "memory.swap.max", "0", optional=True),
                    # An agent is one unit: after an OOM kill of one of its processes the
                    # rest is broken anyway, so the kernel kills the whole group.
                    LimitWrite("memory", "memory.oom.group", "1", optional=True)]
    if limits.pids_max is not None:
        version("pids")
        out.append(LimitWrite("pids", "pids.max", str(limits.pids_max)))
    if limits.cpu_max_cores is not None:
        quota = max(CPU_QUOTA_MIN_US, round(limits.cpu_max_cores * CPU_PERIOD_US))
        if version("cpu") == "v1":
            # Period first: a quota is checked against the period in force when written.
            out += [LimitWrite("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                    LimitWrite("cpu", "cpu.cfs_quota_us", str(quota))]
        else:
            out.append(LimitWrite("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"))
    return tuple(out)


# ------------------------------------------------------------------------ detection


@dataclass(frozen=True)
class CgroupHost:
    """What :func:`detect` found. Hierarchy keys are v1 controller names or ``"unified"``."""

    version: CgroupVersion | None
    mounts: Mapping[str, str]  # hierarchy key -> mount point
    own: Mapping[str, str]  # hierarchy key -> this supervisor's cgroup, as /proc/self/cgroup says
    own_dirs: Mapping[str, str]  # hierarchy key -> that cgroup's directory, for usable ones
    v2_controllers: frozenset[str]  # what cgroup2 offers below `own` (its cgroup.controllers)
    usable: frozenset[str]  # of memory, pids, cpu, freezer, kill
    problems: tuple[str, ...]  # one sentence per thing missing, naming the reason

    def hierarchy_of(self, feature: str) -> str | None:
        """The hierarchy key serving ``feature`` (memory, pids, cpu, freezer, kill)."""
        if feature not in self.usable:
            return None
        if feature != "kill" and feature in self.own_dirs:
            return feature  # a v1 hierarchy named after its controller
        return UNIFIED


@dataclass(frozen=True)
class _Mount:
    point: str
    root: str
    fstype: str
    controllers: frozenset[str]
    read_only: bool


class _HostFiles(Mapping[str, str]):
    """Lookup-only view of the host's files for detect(); ``in`` tests existence."""

    def __getitem__(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            raise KeyError(path) from None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and os.path.exists(path)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _parse_mountinfo(text: str) -> list[_Mount]:
    out: list[_Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 6 or not rf or rf[0] not in ("cgroup", "cgroup2"):
            continue
        superopts = rf[2].split(",") if len(rf) >= 3 else []
        ctrls = frozenset(o for o in superopts if o in _V1_KEYS and rf[0] == "cgroup")
        out.append(_Mount(point=_unescape(lf[4]), root=_unescape(lf[3]), fstype=rf[0],
                          controllers=ctrls,
                          read_only="ro" in lf[5].split(",") or "ro" in superopts))
    return out


def _parse_self_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and not ctrls:
            unified = path
        else:
            for c in ctrls.split(","):
                v1[c] = path
    return v1, unified


def _strip_leaf(path: str) -> str:
    """The base cgroup of a supervisor that already sits in ``<base>/<group>/supervisor``.

    detect() may run again after setup() (``doctor`` inside the daemon, a re-exec); the
    group must still be planned beside the old one, not inside it.
    """
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-1] == SUPERVISOR_LEAF and parts[-2].startswith(GROUP_PREFIX):
        return "/".join(parts[:-2]) or "/"
    return path


def _own_dir(m: _Mount, path: str) -> str | None:
    """Where ``path`` (relative to the hierarchy's root) appears under mount ``m``."""
    if not path.startswith("/") or ".." in path.split("/") or path.endswith(" (deleted)"):
        return None
    root = m.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None  # a bind mount of some other subtree (a container's view)
    rel = (path[len(root):] if root else path).rstrip("/")
    return (m.point.rstrip("/") + rel) or "/"


def _kernel_version(release: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def detect(mountinfo: str | None = None, self_cgroup: str | None = None, *,
           files: Mapping[str, str] | None = None) -> CgroupHost:
    """Find the cgroup hierarchies this process can use and its own cgroup in each.

    Pure when given both texts: it then reads nothing, and ``files`` (path -> content;
    ``in`` means the file exists) stands for the few cgroupfs and /proc files it would
    otherwise consult: ``<cgroup2 dir>/cgroup.controllers``, ``.../cgroup.kill``,
    ``.../cgroup.freeze`` and ``/proc/sys/kernel/osrelease``. Whether the directories are
    writable is not decided here: setup() finds out and says why not.
    """
    if files is None:
        files = {} if mountinfo is not None and self_cgroup is not None else _HostFiles()
    if mountinfo is None:
        mountinfo = _read_text("/proc/self/mountinfo")
    if self_cgroup is None:
        self_cgroup = _read_text("/proc/self/cgroup")

    problems: list[str] = []
    mounts_all = _parse_mountinfo(mountinfo)
    v1_paths, unified_path = _parse_self_cgroup(self_cgroup)
    mounts: dict[str, str] = {}
    own: dict[str, str] = {}
    own_dirs: dict[str, str] = {}

    def place(key: str, cands: list[_Mount], path: str | None) -> None:
        mounts[key] = cands[0].point
        if path is None:
            problems.append(f"{key}: mounted at {cands[0].point}, but /proc/self/cgroup names no "
                            f"cgroup of that hierarchy for this process")
            return
        path = _strip_leaf(path)
        own[key] = path
        for m in cands:
            d = _own_dir(m, path)
            if d is None:
                continue
            mounts[key] = m.point
            if m.read_only:
                problems.append(f"{key}: {m.point} is mounted read-only (a container without "
                                f"cgroup delegation?)")
            else:
                own_dirs[key] = d
            return
        problems.append(f"{key}: this process's cgroup {path} is not visible under any mount of "
                        f"the hierarchy (mount root {cands[0].root} at {cands[0].point})")

    for key in _V1_KEYS:
        cands = [m for m in mounts_all if m.fstype == "cgroup" and key in m.controllers]
        if cands:
            place(key, cands, v1_paths.get(key))
    cg2 = [m for m in mounts_all if m.fstype == "cgroup2"]
    if cg2:
        place(UNIFIED, cg2, unified_path)

    v2_controllers: frozenset[str] = frozenset()
    text: str | None = None
    has_kill = has_freeze = False
    kernel = _kernel_version(files.get("/proc/sys/kernel/osrelease"))
    if UNIFIED in own_dirs:
        d = own_dirs[UNIFIED]
        text = files.get(f"{d}/cgroup.controllers")
        if text is None:
            problems.append(f"unified: cannot read {d}/cgroup.controllers, so which controllers "
                            f"cgroup2 offers is unknown")
        else:
            v2_controllers = frozenset(text.split())
        # The root cgroup has neither file, so fall back on the kernel's version.
        has_kill = f"{d}/cgroup.kill" in files or (kernel is not None and kernel >= _KILL_SINCE)
        has_freeze = (f"{d}/cgroup.freeze" in files
                      or (kernel is not None and kernel >= _FREEZE_SINCE))

    usable: set[str] = set()
    for c in LIMIT_CONTROLLERS:
        if c in own_dirs or (c not in mounts and UNIFIED in own_dirs and c in v2_controllers):
            usable.add(c)
        elif c not in mounts:  # a mounted-but-unusable one already has its problem
            if UNIFIED in own_dirs and text is not None:
                offered = " ".join(sorted(v2_controllers)) or "none"
                problems.append(f"{c}: no cgroup v1 {c} hierarchy, and cgroup2 does not offer it "
                                f"below {own[UNIFIED]} (cgroup.controllers: {offered}); the "
                                f"parent cgroup must delegate it (systemd: Delegate=yes)")
            elif mounts_all:
                problems.append(f"{c}: no cgroup v1 {c} hierarchy and no cgroup2 offering it")
    if "freezer" in own_dirs or has_freeze:
        usable.add("freezer")
    if has_kill:
        usable.add("kill")
    elif mounts_all:
        if "freezer" in usable:
            problems.append("kill: no cgroup.kill (needs cgroup2 and Linux 5.14+); kill() "
                            "freezes the group and signals each process instead")
        else:
            problems.append("kill: neither cgroup.kill nor a freezer is available, so a "
                            "forking agent could outrun kill(); agents cannot be contained")
    if not mounts_all:
        problems.append("no cgroup filesystem is mounted (no cgroup or cgroup2 entry in "
                        "/proc/self/mountinfo)")

    has_v1 = any(k in mounts for k in ("memory", "pids", "cpu", "freezer"))
    has_v2 = UNIFIED in mounts
    version: CgroupVersion | None = ("hybrid" if has_v1 and has_v2 else "v1" if has_v1
                                     else "v2" if has_v2 else None)
    return CgroupHost(version=version, mounts=mounts, own=own, own_dirs=own_dirs,
                      v2_controllers=v2_controllers, usable=frozenset(usable),
                      problems=tuple(problems))


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy the supervisor uses, and what it provides there."""

    key: str  # "unified" or the v1 controller it is named after
    own_dir: str  # the supervisor's own cgroup directory in it
    serves: frozenset[str]  # of memory, pids, cpu, freezer, kill

    @property
    def v2(self) -> bool:
        return self.key == UNIFIED


@dataclass(frozen=True)
class Layout:
    """Every directory of one supervisor's group, in every hierarchy it uses::

        <own>/<group>/supervisor      the supervisor itself (and its zygote)
        <own>/<group>/agents/<name>   one AgentProcess and all its descendants

    ``hierarchies`` is ordered kill-first: a child joins them in this order, so it is
    killable from its first write on, even if a later join fails.
    """

    group: str
    hierarchies: tuple[Hierarchy, ...]
    v2_enable: tuple[str, ...]  # controllers to switch on down <own> -> group -> agents

    def group_dir(self, h: Hierarchy) -> str:
        return f"{h.own_dir.rstrip('/')}/{self.group}"

    def supervisor_dir(self, h: Hierarchy) -> str:
        return f"{self.group_dir(h)}/{SUPERVISOR_LEAF}"

    def agents_dir(self, h: Hierarchy) -> str:
        return f"{self.group_dir(h)}/{AGENTS_DIR}"

    def agent_dir(self, h: Hierarchy, name: str) -> str:
        return f"{self.agents_dir(h)}/{name}"

    def hierarchy_for(self, feature: str) -> Hierarchy | None:
        return next((h for h in self.hierarchies if feature in h.serves), None)

    def unified(self) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.v2), None)

    def subtree_control_writes(self) -> tuple[tuple[str, str], ...]:
        """The cgroup.subtree_control writes, top down (each needs the one above it)."""
        h = self.unified()
        if h is None or not self.v2_enable:
            return ()
        value = " ".join(f"+{c}" for c in self.v2_enable)
        return tuple((f"{d.rstrip('/')}/cgroup.subtree_control", value)
                     for d in (h.own_dir, self.group_dir(h), self.agents_dir(h)))


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise InvalidArgument(f"cgroups: {what} {name!r} is not a plain directory name "
                              f"(letters, digits, _ . @ : + -; at most 200)")


def group_name(pid: int | None = None) -> str:
    """The conventional group name of the supervisor with this pid (default: ours)."""
    return f"{GROUP_PREFIX}{os.getpid() if pid is None else pid}"


def plan_layout(host: CgroupHost, group: str) -> Layout:
    """Which hierarchies a supervisor uses, in which order, and what to enable on v2."""
    _check_name(group, "group")
    if not group.startswith(GROUP_PREFIX):
        # cleanup_stale() finds leftovers by this prefix; a group without it would leak.
        raise InvalidArgument(f"cgroups: group {group!r} must start with {GROUP_PREFIX!r}")
    serves: dict[str, set[str]] = {}
    for feature in _FEATURES:
        key = host.hierarchy_of(feature)
        if key is not None and key in host.own_dirs:
            serves.setdefault(key, set()).add(feature)
    if UNIFIED in host.own_dirs:
        # Joined even with no controller: cgroup.events and cpu.stat's usage_usec are there.
        serves.setdefault(UNIFIED, set())
    by_dir: dict[str, Hierarchy] = {}
    for key, feats in serves.items():
        d = host.own_dirs[key]
        if d in by_dir:  # co-mounted v1 controllers (memory,pids) share one directory
            old = by_dir[d]
            by_dir[d] = Hierarchy(old.key, d, old.serves | feats)
        else:
            by_dir[d] = Hierarchy(key, d, frozenset(feats))
    order = (UNIFIED, "freezer", "memory", "pids", "cpu")

    def rank(h: Hierarchy) -> tuple[int, int]:
        first = 0 if "kill" in h.serves else 1 if "freezer" in h.serves else 2
        return first, order.index(h.key) if h.key in order else len(order)

    hierarchies = tuple(sorted(by_dir.values(), key=rank))
    v2_enable = tuple(c for c in LIMIT_CONTROLLERS if host.hierarchy_of(c) == UNIFIED)
    return Layout(group=group, hierarchies=hierarchies, v2_enable=v2_enable)


# ------------------------------------------------------------------------ the kernel


class CgroupFs(Protocol):
    """The kernel interface the manager uses: cgroupfs files, and one signal.

    Tests substitute a fake that keeps cgroup v2's rules, to cover pure v2 hosts from
    a host that has none.
    """

    def read(self, path: str) -> str: ...
    def write(self, path: str, data: str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def subdirs(self, path: str) -> list[str]: ...
    def age_s(self, path: str) -> float: ...
    def kill_pid(self, pid: int) -> None: ...


class HostFs:
    """:class:`CgroupFs` on the real cgroupfs."""

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def write(self, path: str, data: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # One write(2): cgroupfs parses each write on its own.
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]

    def age_s(self, path: str) -> float:
        # kernfs sets a cgroup directory's ctime when it is made and never after.
        return time.time() - os.stat(path).st_ctime

    def kill_pid(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


HOST_FS: Final = HostFs()


def _why(e: OSError) -> str:
    """The reason an operator can act on, for an errno met on cgroupfs."""
    code = e.errno
    if code in (errno.EACCES, errno.EPERM):
        return ("permission denied: not root and no delegation (run as root, or give the "
                "supervisor a delegated cgroup, e.g. systemd-run -p Delegate=yes)")
    if code == errno.EROFS:
        return "cgroupfs is mounted read-only (a container without cgroup delegation?)"
    if code == errno.ENOENT:
        return "no such file (the controller is not mounted or not enabled there)"
    if code == errno.EEXIST:
        return "it already exists"
    return e.strerror or str(e)


def _poll(cond: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``cond`` with a short backoff until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _read_kv(fs: CgroupFs, path: str) -> dict[str, int]:
    """``key value`` lines (cgroup.events, memory.events, cpu.stat...); {} if absent."""
    try:
        text = fs.read(path)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def _read_int(fs: CgroupFs, path: str) -> int | None:
    try:
        return int(fs.read(path).strip())
    except (OSError, ValueError):
        return None


def _tree(fs: CgroupFs, root: str) -> list[str]:
    """``root`` and every cgroup below it, parents first; [] if it is gone."""
    if not fs.exists(root):
        return []
    out = [root]
    try:
        names = fs.subdirs(root)
    except OSError:
        return out
    for n in sorted(names):
        out += _tree(fs, f"{root}/{n}")
    return out


def _procs(fs: CgroupFs, d: str) -> set[int]:
    try:
        return {int(x) for x in fs.read(f"{d}/cgroup.procs").split()}
    except (OSError, ValueError):
        return set()


def _sweep(fs: CgroupFs, roots: Sequence[str]) -> set[int]:
    """Every pid in the subtrees at ``roots`` (v1 cgroup.procs lists only its own level)."""
    return {p for r in roots for d in _tree(fs, r) for p in _procs(fs, d)}


def _rmdir_all(fs: CgroupFs, dirs: Sequence[str], timeout_s: float) -> dict[str, str]:
    """rmdir deepest first, retrying until the deadline; return {dir left: why}."""
    pending = sorted(set(dirs), key=lambda d: d.count("/"), reverse=True)
    why: dict[str, str] = {}

    def attempt() -> bool:
        nonlocal pending
        left: list[str] = []
        for d in pending:
            try:
                fs.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                # EBUSY while exiting tasks still hold the cgroup: the kernel lets go a
                # little after the last one is gone, so this is polled, not failed.
                why[d] = _why(e)
                left.append(d)
            else:
                why.pop(d, None)
        pending = left
        return not pending

    _poll(attempt, timeout_s)
    return {d: why.get(d, "busy") for d in pending}


@dataclass(frozen=True)
class _KillVia:
    roots: tuple[str, ...]  # whose subtrees hold the processes (one per hierarchy)
    kill_file: str | None = None  # cgroup2 cgroup.kill
    freezer_state: str | None = None  # v1 freezer.state
    freeze_file: str | None = None  # cgroup2 cgroup.freeze (5.2 - 5.13)

    @property
    def name(self) -> str:
        return ("cgroup.kill" if self.kill_file else "freezer" if self.freezer_state
                else "cgroup.freeze" if self.freeze_file else "none")


def _freeze(fs: CgroupFs, via: _KillVia, on: bool) -> bool:
    try:
        if via.freezer_state is not None:
            fs.write(via.freezer_state, "FROZEN" if on else "THAWED")
        elif via.freeze_file is not None:
            fs.write(via.freeze_file, "1" if on else "0")
    except FileNotFoundError:
        return False  # the cgroup is gone, and so is everything in it
    except OSError as e:
        raise SandboxError(f"cgroups: cannot {'freeze' if on else 'thaw'} "
                           f"{via.freezer_state or via.freeze_file}: {_why(e)}") from e
    return True


def _frozen(fs: CgroupFs, via: _KillVia) -> bool:
    if via.freezer_state is not None:
        try:
            return fs.read(via.freezer_state).strip() == "FROZEN"
        except OSError:
            return True
    if via.freeze_file is not None:
        events = f"{os.path.dirname(via.freeze_file)}/cgroup.events"
        return _read_kv(fs, events).get("frozen", 1) == 1
    return True


def _kill_tree(fs: CgroupFs, via: _KillVia) -> None:
    """SIGKILL every process in the subtrees at ``via.roots``; idempotent.

    Signalling pids read from cgroup.procs one by one races with fork (a child made
    after the read survives) and with pid reuse (a pid read, then freed and reused,
    hits a stranger). cgroup.kill does it in the kernel, atomically. Without it the
    group is frozen first: frozen tasks can neither fork nor exit, so the pids read
    are all there is and still theirs.
    """
    if via.kill_file is not None:
        try:
            fs.write(via.kill_file, "1")
        except FileNotFoundError:
            return  # already removed: nothing left to kill
        except OSError as e:
            raise SandboxError(f"cgroups: cannot write {via.kill_file}: {_why(e)}") from e
        return
    signalled: set[int] = set()
    if via.freezer_state is None and via.freeze_file is None:
        # Only a stale group's remains can get here (its part in the hierarchy that can
        # kill is already gone); create() refuses agents without a way to kill them.
        if not _sweep(fs, via.roots):
            return
    else:
        if not _freeze(fs, via, True):
            return
        frozen = _poll(lambda: _frozen(fs, via), FREEZE_TIMEOUT_S)
        try:
            for pid in _sweep(fs, via.roots):
                fs.kill_pid(pid)
                signalled.add(pid)
        finally:
            # v1 frozen tasks act on SIGKILL only once thawed.
            _freeze(fs, via, False)
        if frozen:
            return

    # A task in uninterruptible sleep can hold the freezer in FREEZING, and then a
    # forking process may have made children after the sweep: sweep until none is new.
    def settled() -> bool:
        new = _sweep(fs, via.roots) - signalled
        for pid in new:
            fs.kill_pid(pid)
        signalled.update(new)
        return not new

    if not _poll(settled, SWEEP_TIMEOUT_S):
        raise SandboxError(f"cgroups: processes kept appearing in {', '.join(via.roots)} while "
                           f"killing them one by one (the group could not be frozen)")


# ------------------------------------------------------------------ one AgentProcess


@dataclass
class ProcessCgroup:
    """The cgroups of one AgentProcess, prepared before fork.

    The child joins ``procs_files`` (one per hierarchy, kill-first) with :func:`join`;
    the supervisor kills and reads back through the rest.
    """

    procs_files: tuple[str, ...]
    name: str = ""
    dirs: tuple[str, ...] = ()  # one per hierarchy, same order as procs_files
    memory_dir: str | None = None
    memory_v2: bool = False
    pids_dir: str | None = None
    cpu_dir: str | None = None
    cpu_v2: bool = False
    unified_dir: str | None = None  # cgroup.events and cpu.stat usage, also on hybrid
    kill_file: str | None = None
    freezer_state_file: str | None = None
    freeze_file: str | None = None
    fs: CgroupFs = field(default=HOST_FS, repr=False, compare=False)

    @property
    def kill_via(self) -> str:
        """How kill() works here: cgroup.kill, freezer or cgroup.freeze."""
        return self._via().name

    def _via(self) -> _KillVia:
        return _KillVia(roots=self.dirs, kill_file=self.kill_file,
                        freezer_state=self.freezer_state_file, freeze_file=self.freeze_file)

    def kill(self) -> None:
        """SIGKILL every process in it, however it was forked; idempotent.

        Does not wait for them to die (poll populated(); the parent reaps its child).
        A child not yet past join() is not in the cgroup: kill it by pid as well.
        """
        _kill_tree(self.fs, self._via())

    def populated(self) -> bool:
        """Whether any live process is left in it (exited zombies do not count)."""
        if self.unified_dir is not None:
            if not self.fs.exists(self.unified_dir):
                return False
            return _read_kv(self.fs, f"{self.unified_dir}/cgroup.events").get("populated", 0) > 0
        return bool(_sweep(self.fs, self.dirs))

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process in it."""
        if self.memory_dir is None:
            return False
        if self.memory_v2:
            return _read_kv(self.fs, f"{self.memory_dir}/memory.events").get("oom_kill", 0) > 0
        ctl = _read_kv(self.fs, f"{self.memory_dir}/memory.oom_control")
        if "oom_kill" in ctl:  # Linux 4.13+
            return ctl["oom_kill"] > 0
        # Older v1 kernels only count hitting the limit; that is a hint, not proof.
        return (_read_int(self.fs, f"{self.memory_dir}/memory.failcnt") or 0) > 0

    def pids_limit_hit(self) -> bool:
        """Whether pids.max refused a fork in it."""
        if self.pids_dir is None:
            return False
        return _read_kv(self.fs, f"{self.pids_dir}/pids.events").get("max", 0) > 0

    def stats(self) -> dict[str, int]:
        """What the kernel counted; keys carry their units and are absent when unknown.

        memory_current_bytes, memory_peak_bytes, memory_oom_kills, pids_current,
        pids_peak, pids_max_hits, cpu_usage_usec, cpu_throttled_usec, cpu_nr_periods,
        cpu_nr_throttled.
        """
        fs = self.fs
        out: dict[str, int] = {}
        if self.memory_dir is not None:
            m = self.memory_dir
            files = (("memory.current", "memory.peak") if self.memory_v2
                     else ("memory.usage_in_bytes", "memory.max_usage_in_bytes"))
            for key, name in zip(("memory_current_bytes", "memory_peak_bytes"), files, strict=True):
                if (v := _read_int(fs, f"{m}/{name}")) is not None:
                    out[key] = v
            ooms = _read_kv(fs, f"{m}/memory.events" if self.memory_v2
                            else f"{m}/memory.oom_control")
            if "oom_kill" in ooms:
                out["memory_oom_kills"] = ooms["oom_kill"]
        if self.pids_dir is not None:
            for key, name in (("pids_current", "pids.current"), ("pids_peak", "pids.peak")):
                if (v := _read_int(fs, f"{self.pids_dir}/{name}")) is not None:
                    out[key] = v
            if "max" in (ev := _read_kv(fs, f"{self.pids_dir}/pids.events")):
                out["pids_max_hits"] = ev["max"]
        # cgroup2 counts usage in every cgroup, with or without the cpu controller.
        if self.unified_dir is not None and "usage_usec" in (
                st := _read_kv(fs, f"{self.unified_dir}/cpu.stat")):
            out["cpu_usage_usec"] = st["usage_usec"]
        if self.cpu_dir is not None:
            st = _read_kv(fs, f"{self.cpu_dir}/cpu.stat")
            if self.cpu_v2:
                if "throttled_usec" in st:
                    out["cpu_throttled_usec"] = st["throttled_usec"]
            else:
                if "throttled_time" in st:
                    out["cpu_throttled_usec"] = st["throttled_time"] // 1000
                # v1 usage lives in cpuacct, co-mounted with cpu on most v1 hosts.
                if "cpu_usage_usec" not in out and (
                        ns := _read_int(fs, f"{self.cpu_dir}/cpuacct.usage")) is not None:
                    out["cpu_usage_usec"] = ns // 1000
            for key, name in (("cpu_nr_periods", "nr_periods"),
                              ("cpu_nr_throttled", "nr_throttled")):
                if name in st:
                    out[key] = st[name]
        return out

    def remove(self, timeout_s: float = 2.0) -> None:
        """rmdir it in every hierarchy, polling while the kernel still holds it."""
        dirs = [d for r in self.dirs for d in _tree(self.fs, r)]
        left = _rmdir_all(self.fs, dirs, timeout_s)
        if left:
            pids = sorted(_sweep(self.fs, list(left)))
            raise SandboxError(
                f"cgroups: cannot remove {'; '.join(f'{d} ({w})' for d, w in left.items())}"
                + (f"; processes still in it: {pids} (kill() first)" if pids else ""),
                dirs=sorted(left), pids=pids)


def join(procs_files: Sequence[str]) -> None:
    """Move the calling process into each cgroup; run in the child right after fork.

    No thinking here: the parent prepared the paths. Fails closed, naming the file.
    """
    pid = str(os.getpid()).encode()
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError as e:
            raise SandboxError(f"cgroups: cannot join {path}: {_why(e)}", file=path,
                               errno=e.errno) from None


# ----------------------------------------------------------------------- the manager


class CgroupManager:
    """One supervisor's cgroups: its group, its own leaf, and one cgroup per agent.

    See :class:`Layout` for the directories. On every host shape the supervisor moves
    into ``<own>/<group>/supervisor``: cgroup v2 requires it (controllers can be enabled
    only over cgroups without processes), and everywhere a populated leaf is what tells
    a live supervisor's group from a dead one's, across pid namespaces.

    Call setup() before starting helper processes (the zygote), so they start in the
    leaf too: on v2 a helper left in ``<own>`` keeps the controllers from being enabled.
    """

    def __init__(self, host: CgroupHost, group: str, *, fs: CgroupFs | None = None) -> None:
        self.host = host
        self.group = group
        self.layout = plan_layout(host, group)
        self.fs: CgroupFs = fs if fs is not None else HOST_FS
        self._pid = 0
        self._moved: list[Hierarchy] = []
        self._enabled_in_own: tuple[str, ...] = ()
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
            raise SandboxError(f"cgroups: cannot {what}: writing {value!r} to {path}: {hint}",
                               path=path, value=value, errno=e.errno) from e

    def _controller_problems(self, feature: str) -> str:
        lines = [p for p in self.host.problems if p.startswith(f"{feature}:")]
        return "; ".join(lines) or f"{feature}: not usable on this host"

    def _group_live(self, group: str) -> set[int]:
        """The processes in that group's supervisor leaf, in any hierarchy."""
        return {p for h in self.layout.hierarchies
                for p in _procs(self.fs, f"{h.own_dir.rstrip('/')}/{group}/{SUPERVISOR_LEAF}")}

    def _group_via(self, roots: Mapping[str, str]) -> _KillVia:
        """How to kill a whole group's tree, given its root dir per hierarchy key."""
        u = roots.get(UNIFIED)
        fz = self.layout.hierarchy_for("freezer")
        if "kill" in self.host.usable and u and self.fs.exists(f"{u}/cgroup.kill"):
            return _KillVia(tuple(roots.values()), kill_file=f"{u}/cgroup.kill")
        if fz is not None and not fz.v2 and fz.key in roots:
            return _KillVia(tuple(roots.values()),
                            freezer_state=f"{roots[fz.key]}/freezer.state")
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
        roots = {h.key: f"{h.own_dir.rstrip('/')}/{group}" for h in self.layout.hierarchies
                 if self.fs.exists(f"{h.own_dir.rstrip('/')}/{group}")}
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
        own_file = writes[0][0]
        try:
            before = set(self.fs.read(own_file).split())
        except OSError as e:
            raise SandboxError(f"cgroups: cannot read {own_file}: {_why(e)}") from e
        self._enabled_in_own = tuple(c for c in self.layout.v2_enable if c not in before)
        for path, value in writes:
            try:
                self.fs.write(path, value)
            except OSError as e:
                d = os.path.dirname(path)
                if e.errno == errno.EBUSY:
                    others = sorted(_procs(self.fs, d))
                    why = (f"{d} still holds other processes {others}, and cgroup v2 allows "
                           f"controllers only over cgroups without processes; give the "
                           f"supervisor a cgroup of its own (systemd-run --scope -p "
                           f"Delegate=yes agentlibos serve, or a service with Delegate=yes)")
                elif e.errno == errno.ENOENT:
                    why = (f"{d} is not offered one of them (see its cgroup.controllers); the "
                           f"parent must delegate it (Delegate=yes)")
                else:
                    why = _why(e)
                raise SandboxError(f"cgroups: cannot enable {value} in {path}: {why}",
                                   path=path, errno=e.errno) from e

    def _disable_v2(self) -> str | None:
        """Undo our subtree_control writes in <own>, so the supervisor may go back there."""
        if not self._enabled_in_own:
            return None
        u = self.layout.unified()
        assert u is not None
        off = " ".join(f"-{c}" for c in self.layout.v2_enable)
        mine = " ".join(f"-{c}" for c in self._enabled_in_own)
        # A controller can be disabled only once no child has it enabled: bottom up.
        for d, value in ((self.layout.agents_dir(u), off), (self.layout.group_dir(u), off),
                         (u.own_dir, mine)):
            if not self.fs.exists(d):
                continue
            try:
                self.fs.write(f"{d.rstrip('/')}/cgroup.subtree_control", value)
            except OSError as e:
                return f"cannot write {value!r} to {d}/cgroup.subtree_control: {_why(e)}"
        self._enabled_in_own = ()
        return None

    def _undo_setup(self, pid: int, created: list[str]) -> list[str]:
        self._disable_v2()
        for h in reversed(self._moved):
            with contextlib.suppress(OSError):
                self.fs.write(f"{h.own_dir.rstrip('/')}/cgroup.procs", str(pid))
        self._moved.clear()
        return list(_rmdir_all(self.fs, created, SWEEP_TIMEOUT_S))

    def create(self, name: str, limits: CgroupLimits) -> ProcessCgroup:
        """Make the agent's cgroup in every hierarchy and write its limits (before fork)."""
        if not self._ready:
            raise SandboxError("cgroups: create() before setup()")
        _check_name(name, "agent name")
        lay, fs = self.layout, self.fs
        versions: dict[str, Literal["v1", "v2"]] = {}
        for c, wanted in (("memory", limits.memory_max_bytes), ("pids", limits.pids_max),
                          ("cpu", limits.cpu_max_cores)):
            h = lay.hierarchy_for(c)
            if h is not None:
                versions[c] = "v2" if h.v2 else "v1"
            elif wanted is not None:
                raise SandboxError(f"cgroups: agent {name} asks for a {c} limit, but "
                                   + self._controller_problems(c))
        writes = limit_writes(limits, versions)
        made: list[str] = []
        try:
            for h in lay.hierarchies:
                self._mkdir(lay.agent_dir(h, name), f"agent {name}")
                made.append(lay.agent_dir(h, name))
            for w in writes:
                h = lay.hierarchy_for(w.controller)
                assert h is not None  # limit_writes refused a limit without its controller
                path = f"{lay.agent_dir(h, name)}/{w.file}"
                if w.optional and not fs.exists(path):
                    continue
                self._write(path, w.value, f"set the {w.controller} limit of agent {name}")
            pc = self._describe(name)
        except SandboxError:
            _rmdir_all(fs, made, SWEEP_TIMEOUT_S)
            raise
        return pc

    def _describe(self, name: str) -> ProcessCgroup:
        lay, fs = self.layout, self.fs

        def agent_dir(feature: str) -> str | None:
            h = lay.hierarchy_for(feature)
            return None if h is None else lay.agent_dir(h, name)

        u = lay.unified()
        udir = None if u is None else lay.agent_dir(u, name)
        kill_file = freezer_state = freeze_file = None
        fz = lay.hierarchy_for("freezer")
        if "kill" in self.host.usable and udir and fs.exists(f"{udir}/cgroup.kill"):
            kill_file = f"{udir}/cgroup.kill"
        elif fz is not None and not fz.v2:
            freezer_state = f"{lay.agent_dir(fz, name)}/freezer.state"
        elif udir and "freezer" in self.host.usable and fs.exists(f"{udir}/cgroup.freeze"):
            freeze_file = f"{udir}/cgroup.freeze"
        else:
            raise SandboxError(f"cgroups: no way to kill agent {name}'s whole tree: "
                               + self._controller_problems("kill"))
        mem, cpu = lay.hierarchy_for("memory"), lay.hierarchy_for("cpu")
        dirs = tuple(lay.agent_dir(h, name) for h in lay.hierarchies)
        return ProcessCgroup(
            procs_files=tuple(f"{d}/cgroup.procs" for d in dirs), name=name, dirs=dirs,
            memory_dir=agent_dir("memory"), memory_v2=mem is not None and mem.v2,
            pids_dir=agent_dir("pids"), cpu_dir=agent_dir("cpu"),
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
                names.update(n for n in self.fs.subdirs(h.own_dir)
                             if n.startswith(GROUP_PREFIX) and n != self.group)
        removed: list[str] = []
        failed: dict[str, str] = {}
        for n in sorted(names):
            if self._group_live(n):
                continue
            ages = [self.fs.age_s(f"{h.own_dir.rstrip('/')}/{n}")
                    for h in self.layout.hierarchies
                    if self.fs.exists(f"{h.own_dir.rstrip('/')}/{n}")]
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


def describe(host: CgroupHost | None = None) -> str:
    """One line for ``agentlibos doctor``: what is enforced where, and why not."""
    probe = host is None
    h = detect() if host is None else host
    if h.version is None:
        return "cgroups: unavailable: " + ("; ".join(h.problems) or "no cgroup hierarchy found")
    where = []
    for c in ("memory", "pids", "cpu"):
        key = h.hierarchy_of(c)
        where.append(f"{c} {'v2' if key == UNIFIED else 'v1'}" if key else f"{c} MISSING")
    kill = ("cgroup.kill" if "kill" in h.usable
            else "freezer" if "freezer" in h.usable else "MISSING")
    line = f"cgroups: {h.version} ({', '.join(where)}, kill via {kill})"
    if probe and os.geteuid() != 0:
        unwritable = [d for d in h.own_dirs.values() if not os.access(d, os.W_OK)]
        if unwritable:
            line += f"; cannot write {unwritable[0]}: not root and no delegation"
    return line + ("; " + "; ".join(h.problems) if h.problems else "")
