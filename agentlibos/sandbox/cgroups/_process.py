"""Applying, one AgentProcess: its cgroups prepared before fork, joined by the child."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentlibos.errors import SandboxError
from agentlibos.sandbox.cgroups._common import SELF_LEAF
from agentlibos.sandbox.cgroups._kernel import (
    HOST_FS,
    CgroupFs,
    _kill_tree,
    _KillVia,
    _read_int,
    _read_kv,
    _rmdir_all,
    _sweep,
    _tree,
    _why,
)


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

    def _event(self, tree: str, file: str, key: str) -> int:
        """An event count for this process: its tree's or its leaf's, whichever is larger.

        v2 counts a limit hit where the limit is (the tree) and propagates it up; v1
        counts it only where it happened: in the leaf holding the process itself.
        """
        return max(_read_kv(self.fs, f"{d}/{file}").get(key, 0)
                   for d in (tree, f"{tree}/{SELF_LEAF}"))

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process in it."""
        if self.memory_dir is None:
            return False
        if self.memory_v2:
            return self._event(self.memory_dir, "memory.events", "oom_kill") > 0
        ctl = _read_kv(self.fs, f"{self.memory_dir}/memory.oom_control")
        if "oom_kill" in ctl:  # Linux 4.13+
            return self._event(self.memory_dir, "memory.oom_control", "oom_kill") > 0
        # Older v1 kernels only count hitting the limit; that is a hint, not proof.
        return (_read_int(self.fs, f"{self.memory_dir}/memory.failcnt") or 0) > 0

    def pids_limit_hit(self) -> bool:
        """Whether pids.max refused a fork in it."""
        if self.pids_dir is None:
            return False
        return self._event(self.pids_dir, "pids.events", "max") > 0

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
                out["memory_oom_kills"] = self._event(
                    m, "memory.events" if self.memory_v2 else "memory.oom_control", "oom_kill")
        if self.pids_dir is not None:
            for key, name in (("pids_current", "pids.current"), ("pids_peak", "pids.peak")):
                if (v := _read_int(fs, f"{self.pids_dir}/{name}")) is not None:
                    out[key] = v
            if "max" in _read_kv(fs, f"{self.pids_dir}/pids.events"):
                out["pids_max_hits"] = self._event(self.pids_dir, "pids.events", "max")
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



def join_fds(procs_files: Sequence[str], fds: Sequence[int]) -> None:
    """:func:`join` by descriptors opened earlier (``procs_files`` only name them): a
    pooled process, pivoted, can no longer open the files. The caller closes ``fds``."""
    pid = str(os.getpid()).encode()
    for path, fd in zip(procs_files, fds, strict=True):
        try:
            os.write(fd, pid)
        except OSError as e:
            raise SandboxError(f"cgroups: cannot join {path}: {_why(e)}", file=path,
                               errno=e.errno) from None


def make_own(recipe: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A pooled process's own top-level cgroup (CgroupManager.pool_recipe): make
    ``<agents>/<name>`` and its leaf in every hierarchy, kill-first; return the leaves'
    cgroup.procs files, for :func:`join`. Runs before any assignment, as root.

    The directory must be new (EEXIST fails): a pooled process never shares a cgroup
    with another. Limits come on assignment, written by the supervisor."""
    leaves: list[str] = []
    for agents, enable in zip(recipe["agents_dirs"], recipe["enable"], strict=True):
        tree = f"{agents}/{name}"
        try:
            os.mkdir(tree, 0o755)
            if enable:
                # Before the leaf exists, so its children's limits can be enforced.
                fd = os.open(f"{tree}/cgroup.subtree_control", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, str(enable).encode())
                finally:
                    os.close(fd)
            os.mkdir(f"{tree}/{SELF_LEAF}", 0o755)
        except OSError as e:
            raise SandboxError(f"cgroups: cannot make the pooled cgroup {tree}: {_why(e)}",
                               path=tree, errno=e.errno) from None
        leaves.append(f"{tree}/{SELF_LEAF}/cgroup.procs")
    return tuple(leaves)
