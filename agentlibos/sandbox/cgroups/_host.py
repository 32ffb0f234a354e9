"""Reading the host: which cgroup hierarchies are mounted, and where this process sits.

Pure when given the texts of ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` (and a
mapping standing for the few cgroupfs files it consults): tests describe hosts this
machine is not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from agentlibos.sandbox.cgroups._common import (
    _FREEZE_SINCE,
    _KILL_SINCE,
    _V1_KEYS,
    GROUP_PREFIX,
    LIMIT_CONTROLLERS,
    SUPERVISOR_LEAF,
    UNIFIED,
    CgroupVersion,
)


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

