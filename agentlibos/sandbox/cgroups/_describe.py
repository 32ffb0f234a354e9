"""Describing the host: what ``agentlibos doctor`` says of its cgroups, and where a
supervisor's group goes (the facts plan_placement() decides from). Reads only."""

from __future__ import annotations

import os

from agentlibos.sandbox.cgroups import _v2
from agentlibos.sandbox.cgroups._common import _FEATURES, UNIFIED
from agentlibos.sandbox.cgroups._host import CgroupHost, detect
from agentlibos.sandbox.cgroups._kernel import HOST_FS, CgroupFs, _procs
from agentlibos.sandbox.cgroups._plan import (
    CgroupLevel,
    HostDescription,
    Placement,
    Refusal,
    plan_placement,
)


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


def _relative(host: CgroupHost, path: str) -> str:
    """A cgroup path as /proc/self/cgroup writes it, also when given as a cgroupfs path."""
    path = "/" + path.strip("/")
    for mount in host.mounts.values():
        m = mount.rstrip("/")
        if path == m or path.startswith(m + "/"):
            return path[len(m):] or "/"
    return path


def describe_host(host: CgroupHost, *, cgroup_root: str | None = None,
                  euid: int | None = None, fs: CgroupFs | None = None,
                  pid: int | None = None) -> HostDescription:
    """Read what plan_placement() needs: each candidate level's controllers, who lives
    there and whether this process may write it. Reads only; changes nothing."""
    fs = fs if fs is not None else HOST_FS
    me = os.getpid() if pid is None else pid

    def read_set(path: str) -> frozenset[str]:
        try:
            return frozenset(fs.read(path).split())
        except OSError:
            return frozenset()

    def level(path: str, directory: str) -> CgroupLevel:
        if not fs.exists(directory):
            return CgroupLevel(path, directory, exists=False, writable=False)
        return CgroupLevel(
            path=path, directory=directory,
            controllers=read_set(f"{directory}/cgroup.controllers"),
            subtree_control=read_set(f"{directory}/{_v2.SUBTREE_CONTROL}"),
            others=bool(_procs(fs, directory) - {me}),
            writable=fs.writable(directory),
            # Every cgroup but the kernel's root has cgroup.type, also the root of a
            # cgroup namespace, which is not exempt from the no-internal-processes rule.
            exempt=not fs.exists(f"{directory}/cgroup.type"))

    own = root = delegated = None
    delegated_v1: dict[str, str | None] = {}
    writable_v1 = True
    mount = host.mounts.get(UNIFIED)
    if mount is not None and UNIFIED in host.own_dirs:
        own = level(host.own.get(UNIFIED, "/"), host.own_dirs[UNIFIED])
        root = level("/", mount)
    if cgroup_root:
        rel = _relative(host, cgroup_root)
        if mount is not None:
            delegated = level(rel, f"{mount.rstrip('/')}{rel}".rstrip("/") or "/")
        for key in sorted({k for f in _FEATURES
                           if (k := host.hierarchy_of(f)) not in (None, UNIFIED)}):
            assert key is not None
            d = f"{host.mounts[key].rstrip('/')}{rel}".rstrip("/") or "/"
            delegated_v1[key] = d if fs.exists(d) else None
            writable_v1 = writable_v1 and (not fs.exists(d) or fs.writable(d))
    return HostDescription(host=host, euid=os.geteuid() if euid is None else euid, own=own,
                           root=root, delegated=delegated, delegated_v1=delegated_v1,
                           delegated_v1_writable=writable_v1)


def place(host: CgroupHost, *, cgroup_root: str | None = None, euid: int | None = None,
          fs: CgroupFs | None = None) -> Placement | Refusal:
    """Where this supervisor's group goes on this host (see plan_placement)."""
    return plan_placement(describe_host(host, cgroup_root=cgroup_root, euid=euid, fs=fs))
