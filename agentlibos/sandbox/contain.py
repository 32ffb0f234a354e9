"""The ordered containment steps a freshly forked AgentProcess runs before any agent code.

The profile was decided by the supervisor before fork (:mod:`.profile`); this file only
applies it, top to bottom, each step needing the ones before it:

1. join the cgroups          -- first, so everything after (and every fork) is counted
2. unshare the namespaces    -- user (if unprivileged), mnt, pid, net, ipc, uts at once
3. fork into the pid namespace; the parent stays behind as a relay
4. build the mount tree and pivot into it    (needs the new pid namespace for /proc)
5. rlimits                   -- core 0, nofile, fsize
6. drop capabilities, and the uid where the mount tree hides root-only paths
7. no_new_privs              -- required by Landlock and seccomp
8. Landlock                  -- per thread: before any thread exists
9. seccomp, last, with TSYNC -- it also forbids the mount/unshare calls used above

Then the runtime connects to the broker. A layer that fails is fatal unless the operator
made it optional; an optional one that fails is recorded as missing, with the reason.
A layer is counted as applied only once it has been verified from inside.

A pooled process (docs/sandbox.md, "The warm pool") runs the same list in two halves.
:func:`pre_contain`, before it has an assignment: a top-level cgroup of its own (1,
without limits), the namespaces and the shared part of the mount tree, pivoted into (2,
3, 4), rlimits (5), the capability bounding set emptied (the first part of 6: it limits
only what an exec could gain, so the assignment's mounts and uid switch still work),
no_new_privs (7) and the pool's seccomp filter. :func:`apply` with ``pooled=``, on
assignment: verify it is in the agent's cgroups (a top-level agent's are the ones it
made, limits written by the supervisor; a nested agent's, inside its parent's, the
zygote moved it into) or join them by the descriptors its assignment brought (1),
attach its agent's binds (cloned by the supervisor) and seal the root (4), verify the
rlimits, drop the rest of its privileges (6), Landlock (8) and the agent's seccomp
filter stacked on the pool's (9).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentlibos.errors import SandboxError
from agentlibos.sandbox import cgroups, landlock, namespaces, privileges, rlimits, seccomp
from agentlibos.sandbox.namespaces import MountPlan
from agentlibos.sandbox.pdeathsig import set_pdeathsig
from agentlibos.sandbox.profile import SandboxProfile


@dataclass
class Contained:
    layers: list[str] = field(default_factory=list)  # applied and verified
    missing: list[str] = field(default_factory=list)  # "layer: why" for optional/disabled ones
    timings_ms: dict[str, float] = field(default_factory=dict)  # what each step cost
    # Host paths bound elsewhere in the process's own mount tree (scratch, the broker
    # socket): once the tree is in place, these are where the process finds them.
    moved: dict[str, str] = field(default_factory=dict)

    def inside(self, host_path: str) -> str:
        return self.moved.get(host_path, host_path)


def _step(profile: SandboxProfile, out: Contained, layer: str, fn: Callable[[], None]) -> bool:
    mode = profile.modes.get(layer, "required")
    if mode == "disabled":
        out.missing.append(f"{layer}: disabled by the operator")
        return False
    if layer in profile.skipped:  # optional, and the supervisor could not prepare it
        out.missing.append(f"{layer}: {profile.skipped[layer]}")
        return False
    t0 = time.perf_counter()
    try:
        fn()
    except SandboxError as e:
        if mode == "optional":
            msg = e.message
            out.missing.append(msg if msg.startswith(f"{layer}:") else f"{layer}: {msg}")
            return False
        raise
    except OSError as e:
        if mode == "optional":
            out.missing.append(f"{layer}: {e}")
            return False
        raise SandboxError(f"{layer}: {e}") from None
    finally:
        out.timings_ms[layer] = round((time.perf_counter() - t0) * 1e3, 3)
    out.layers.append(layer)
    return True


def _not_in(profile: SandboxProfile) -> list[str]:
    """The prepared cgroups (their cgroup.procs files) that /proc/self/cgroup does not
    show this process in."""
    with open("/proc/self/cgroup") as f:
        mine = f.read()
    paths = [line.split(":", 2)[2] for line in mine.splitlines() if line.count(":") >= 2]
    # The whole tail (agents/<pid>/self), not just the leaf's name: every process's leaf
    # is called "self", so the name alone would prove nothing.
    tails = ["/" + "/".join(os.path.dirname(procs).split("/")[-3:])
             for procs in profile.cgroup_procs]
    return [procs for procs, tail in zip(profile.cgroup_procs, tails, strict=True)
            if not any(p == tail or p.endswith(tail) for p in paths)]


def _join_cgroups(profile: SandboxProfile, handed: Handed | None = None) -> None:
    if not profile.cgroup_procs:
        raise SandboxError("cgroups: no cgroup was prepared for this process")
    # A pooled process may be there already: serving a top-level agent, in the cgroup
    # it made before its assignment (the agent's limits now written into it); serving
    # a nested one, moved by the zygote while it was blocked. Moving a process into the
    # cgroup it is in would still take the kernel's global lock.
    # Verified from inside: every prepared cgroup shows up in /proc/self/cgroup (read
    # again only after a join).
    missing = _not_in(profile)
    if missing and handed is not None:
        # Pivoted before its assignment, it can no longer name a cgroup: it joins by
        # the descriptors the supervisor sent, if any.
        if len(handed.cgroups) != len(profile.cgroup_procs):
            raise SandboxError(f"cgroups: the pooled process is not in {missing[0]}, and "
                               "its assignment brought no descriptor to join it")
        cgroups.join_fds(profile.cgroup_procs, handed.cgroups)
        missing = _not_in(profile)
    elif missing:
        cgroups.join(profile.cgroup_procs)
        missing = _not_in(profile)
    if missing:
        raise SandboxError(f"cgroups: joined {missing[0]} but /proc/self/cgroup does not "
                           "show it")


@dataclass
class Handed:
    """What a pooled process's assignment brought besides its spec: descriptors it can
    no longer open itself, having pivoted (docs/sandbox.md, "The warm pool")."""

    binds: list[int] = field(default_factory=list)  # namespaces.agent_binds, in order
    # A nested agent's cgroup.procs files (profile.cgroup_procs, in order), opened by the
    # supervisor: the zygote's move into them may lose a race with the process's own
    # join of its pooled cgroup, and then it joins them itself.
    cgroups: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in (*self.binds, *self.cgroups):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.binds, self.cgroups = [], []


@dataclass(frozen=True)
class Pooled:
    """What :func:`pre_contain` did, for :func:`apply` to finish and verify."""

    namespaces: tuple[str, ...]  # unshared (pid: by the zygote's fork)
    host_ns: dict[str, int]  # the namespaces' inodes before, to verify they changed
    mount: MountPlan  # the tree built so far (not pivoted into)
    rlimits: dict[str, int]
    timings_ms: dict[str, float]
    cgroup_procs: tuple[str, ...] = ()  # the top-level cgroup it made for itself, if any
    # Those cgroups' cgroup.procs, opened before the pivot hid them (join_own_cgroup
    # writes to and closes them).
    cgroup_fds: tuple[int, ...] = ()


def pre_contain(pool: dict[str, Any], cgroup_name: str | None = None,
                before_pivot: Callable[[], None] | None = None) -> Pooled:
    """Everything a process can be confined with before it knows which agent it will
    be (root only, no user namespace; pid 1 of its own pid namespace already).

    It pivots into the tree of the host view, so that the old root's unmount (an RCU
    grace period) is off the spawn's path; ``before_pivot`` runs just before, while
    host paths (the broker's socket) can still be named.

    ``pool``: ``namespaces``, ``mount`` (the host view and the broker socket, compiled),
    ``rlimits``, ``seccomp_bpf`` (the pool variant, hex), and ``cgroup`` (a recipe for a
    top-level cgroup of its own, named ``cgroup_name``) when the cgroups layer is on.
    Raises SandboxError."""
    t0 = time.perf_counter()
    names = tuple(str(n) for n in pool["namespaces"])
    if "user" in names or os.getpid() != 1:
        raise SandboxError("pool: needs root and a pid namespace made by the zygote")
    own: tuple[str, ...] = ()
    own_fds: list[int] = []
    timings: dict[str, float] = {}
    if pool.get("cgroup") is not None:
        if not cgroup_name:
            raise SandboxError("pool: the template has a cgroup recipe but no name was given")
        # Made here, joined by join_own_cgroup once the process has said it is ready.
        own = cgroups.make_own(pool["cgroup"], cgroup_name)
        try:
            own_fds.extend(os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in own)
        except OSError as e:
            raise SandboxError(f"cgroups: cannot open {cgroup_name}'s cgroup.procs: "
                               f"{e.strerror}") from None
        t = time.perf_counter()
        timings["pool_cgroups"] = round((t - t0) * 1e3, 3)
        t0 = t
    before = namespaces.current_namespaces()
    namespaces.unshare(tuple(n for n in names if n != "pid"))
    mount = MountPlan.from_json(pool["mount"])
    namespaces.start_mount_tree(mount)
    if before_pivot is not None:
        before_pivot()
    namespaces.pivot_root(mount.new_root)
    t1 = time.perf_counter()
    limits = {str(k): int(v) for k, v in pool["rlimits"].items()}
    rlimits.apply(limits)
    privileges.drop_bounding_set()  # root here (checked above), so it has CAP_SETPCAP
    privileges.set_no_new_privs()
    seccomp.load_bpf(bytes.fromhex(pool["seccomp_bpf"]))
    t2 = time.perf_counter()
    timings.update({"pool_namespaces": round((t1 - t0) * 1e3, 3),
                    "pool_rlimits_seccomp": round((t2 - t1) * 1e3, 3)})
    return Pooled(names, before, mount, limits, timings, own, tuple(own_fds))


def join_own_cgroup(pooled: Pooled) -> None:
    """A pooled process joins the cgroup it made (pre_contain), after it has said it
    is ready and before it reads its assignment. The move is the slow part (the
    kernel's global cgroup_threadgroup_rwsem: an RCU grace period when it was idle,
    1-12 ms on a busy host): the zygote and the supervisor learn of a ready process
    that much earlier, and a spawn that takes it waits at most for what is left of
    it. On assignment the agent's cgroups are verified from inside (apply)."""
    try:
        cgroups.join_fds(pooled.cgroup_procs, pooled.cgroup_fds)
    finally:
        # Opened as root before the pivot: no agent may inherit one.
        for fd in pooled.cgroup_fds:
            os.close(fd)


def rehearse(pooled: Pooled) -> None:
    """While a pooled process waits: build (and drop) a Landlock ruleset of the paths
    every agent's has, enforcing nothing. Its first run in a fresh process is mostly
    page faults -- the interpreter specializing the code it runs, objects it touches --
    that are then paid here rather than on the spawn's path. Best effort."""
    with contextlib.suppress(SandboxError, OSError):
        landlock.apply(landlock.LandlockRules(
            read_only=(*pooled.mount.ro_binds, *pooled.mount.dev_nodes, "/proc"),
            read_write=("/dev/null",), list_only=("/",)), rehearse=True)


def _finish_namespaces(profile: SandboxProfile, pooled: Pooled, binds: list[int]) -> None:
    """The pooled half of _enter_namespaces: the same namespaces, the agent's own binds
    (cloned by the supervisor); then the same check that every namespace differs from
    the host's."""
    if profile.mount is None or set(profile.namespaces) != set(pooled.namespaces):
        raise SandboxError(f"namespaces: the pooled process has {pooled.namespaces}, the "
                           f"profile wants {profile.namespaces}")
    namespaces.attach_agent_binds(profile.mount, pooled.mount, binds)
    after = namespaces.current_namespaces()
    # The pid namespace was new before host_ns was read: getpid() == 1 verifies it.
    same = [n for n in pooled.namespaces
            if n != "pid" and n in pooled.host_ns and pooled.host_ns[n] == after.get(n)]
    if same or os.getpid() != 1:
        raise SandboxError(f"namespaces: still in the host's {', '.join(same) or 'pid'} "
                           "namespace")


def _check_rlimits(profile: SandboxProfile, pooled: Pooled) -> None:
    # Set before the assignment (the filter now refuses setrlimit): only verify them.
    if profile.rlimits != pooled.rlimits:
        raise SandboxError(f"rlimits: the pooled process has {pooled.rlimits}, the "
                           f"profile wants {profile.rlimits}")
    rlimits.verify(profile.rlimits)


def _enter_namespaces(profile: SandboxProfile, pid_ns_ready: bool) -> None:
    if not profile.namespaces or profile.mount is None:
        raise SandboxError("namespaces: none were prepared for this process")
    before = namespaces.current_namespaces()
    # The zygote may already have forked us as pid 1 of a fresh pid namespace.
    names = tuple(n for n in profile.namespaces if not (n == "pid" and pid_ns_ready))
    namespaces.unshare(names)
    if profile.id_map is not None:
        namespaces.write_id_maps(*profile.id_map)
    if "pid" in names:
        namespaces.enter_pid_namespace()  # returns in the new child only
    if "pid" in profile.namespaces and os.getpid() != 1:
        raise SandboxError(f"namespaces: expected pid 1 in the new pid namespace, "
                           f"got {os.getpid()}")
    namespaces.build_mount_tree(profile.mount)
    after = namespaces.current_namespaces()
    same = [n for n in names if n in before and before[n] == after.get(n)]
    if same:
        raise SandboxError(f"namespaces: still in the host's {', '.join(same)} namespace")


def _landlock(profile: SandboxProfile, out: Contained) -> None:
    # In its own pid namespace /proc shows only the process and its children. Without
    # one, only its own /proc/<pid> (where /proc/self points when the rule is added):
    # /proc/<other>/mem of a process of the same uid would otherwise be readable.
    # Likewise "/" may be listed (names only, every file needs its own rule) when it is
    # the private mount tree, not the host's.
    private = "namespaces" in out.layers
    landlock.apply(landlock.LandlockRules(
        read_only=(*map(out.inside, profile.landlock_ro),
                   "/proc" if private else "/proc/self"),
        read_write=tuple(map(out.inside, profile.landlock_rw)),
        list_only=("/",) if private else ()))


def _seccomp(profile: SandboxProfile) -> None:
    if not profile.seccomp_bpf:
        raise SandboxError("seccomp: no filter was compiled for this process")
    seccomp.load_bpf(profile.seccomp_bpf)  # verifies PR_GET_SECCOMP says "filter"


def _privileges(profile: SandboxProfile, out: Contained, pooled: Pooled | None) -> None:
    """Not a layer the operator can turn off: always on, and fatal if it fails."""
    privileged = os.geteuid() == 0 or "user" in profile.namespaces
    # A pooled process emptied it before its assignment (pre_contain): 41 prctl calls
    # off the hot path. clear_capabilities checks it below either way.
    if privileged and pooled is None:
        privileges.drop_bounding_set()
    # The uid switch needs CAP_SETUID, so it comes after the bounding set is emptied
    # and before the effective set is.
    if profile.agent_ids is not None and "namespaces" in out.layers:
        if profile.scratch:
            # Its own, to write as itself.
            os.chown(out.inside(profile.scratch), *profile.agent_ids)
        privileges.switch_uid(*profile.agent_ids)
        # The kernel clears the parent-death signal on a uid change: set it again, or
        # an agent would outlive a zygote (and supervisor) killed with SIGKILL.
        set_pdeathsig(signal.SIGKILL)
    if privileged:
        privileges.clear_capabilities()
    privileges.set_no_new_privs()


def apply(profile_json: dict[str, Any], *, pid_ns_ready: bool = False,
          pooled: Pooled | None = None, handed: Handed | None = None) -> Contained:
    """Apply the profile; raise SandboxError naming the layer if a required one fails.

    With ``pooled``, finish what :func:`pre_contain` started instead of starting over,
    with what its assignment ``handed`` it (closed here, whatever happens)."""
    handed = handed if handed is not None else Handed() if pooled is not None else None
    try:
        return _apply(profile_json, pid_ns_ready, pooled, handed)
    finally:
        if handed is not None:
            handed.close()


def _apply(profile_json: dict[str, Any], pid_ns_ready: bool, pooled: Pooled | None,
           handed: Handed | None) -> Contained:
    out = Contained()
    if not profile_json:
        out.missing.append("all: no sandbox profile (the supervisor runs unsandboxed)")
        return out
    profile = SandboxProfile.from_json(profile_json)
    _step(profile, out, "cgroups", lambda: _join_cgroups(profile, handed))
    if pooled is not None:
        out.timings_ms.update(pooled.timings_ms)
        # Not optional here: a pooled process has these already, or was never pooled.
        binds = handed.binds if handed is not None else []
        if not _step(profile, out, "namespaces",
                     lambda: _finish_namespaces(profile, pooled, binds)):
            raise SandboxError("namespaces: a pooled process cannot run without its tree")
        out.moved = dict(profile.mount.moved) if profile.mount is not None else {}
        _step(profile, out, "rlimits", lambda: _check_rlimits(profile, pooled))
    else:
        if _step(profile, out, "namespaces", lambda: _enter_namespaces(profile, pid_ns_ready)):
            out.moved = dict(profile.mount.moved) if profile.mount is not None else {}
        _step(profile, out, "rlimits", lambda: rlimits.apply(profile.rlimits))
    t0 = time.perf_counter()
    _privileges(profile, out, pooled)
    out.timings_ms["privileges"] = round((time.perf_counter() - t0) * 1e3, 3)
    _step(profile, out, "landlock", lambda: _landlock(profile, out))
    _step(profile, out, "seccomp", lambda: _seccomp(profile))
    return out
