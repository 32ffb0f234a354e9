"""Linux namespaces: a private mount tree, and no network, pids, IPC or hostname of the host.

What each namespace stops (see docs/threat-model.md):

* ``net``  -- a new network namespace has only a loopback that is down: no TCP, UDP or
  raw socket reaches anything. The broker is reached through a path-based ``ipc://``
  socket, which lives in the file system, not the network namespace.
* ``mnt``  -- the process sees a tmpfs root holding read-only binds of what Python needs
  (the interpreter, its packages, the image) and its own writable scratch directory:
  not the state database, other processes' directories, the user's files, or other
  sockets. Every path keeps its host name, so the same paths serve Landlock whether or
  not this layer is on.
* ``pid``  -- the agent is pid 1 of its own pid namespace with a fresh ``/proc``: it
  sees no other process, so it can neither signal nor inspect them, and when it exits
  the kernel kills everything it forked.
* ``ipc``, ``uts`` -- no System V IPC or POSIX message queues shared with the host; a
  hostname of its own.
* ``user`` -- only when the supervisor is not root: it lends the process the
  capabilities (inside the namespace only) that the other namespaces need.

Order matters: ``unshare`` (all at once) happens in the forked child; the pid namespace
only applies to that child's *children*, so it forks once more (:func:`enter_pid_namespace`)
and stays behind as a tiny relay. The grandchild -- the agent, pid 1 in its namespace --
builds the mount tree (``/proc`` must be mounted from inside the new pid namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat as stat_mod
from dataclasses import dataclass
from typing import Final, NoReturn

from agentlibos import libc
from agentlibos.errors import SandboxError
from agentlibos.sandbox import mountfd
from agentlibos.sandbox.pdeathsig import set_pdeathsig

NAMESPACES_LAYER: Final = "namespaces"

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
NS_FLAGS: Final[dict[str, int]] = {
    "user": CLONE_NEWUSER,
    "mnt": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
}

MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REMOUNT: Final = 32
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_PRIVATE: Final = 1 << 18
MS_RELATIME: Final = 1 << 21
MNT_DETACH: Final = 2

_SYS_PIVOT_ROOT: Final[dict[str, int]] = {"x86_64": 155, "aarch64": 41}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise SandboxError(f"namespaces: {what}: {os.strerror(e)} (errno {e})", errno=e)


def unshare(names: tuple[str, ...]) -> None:
    """Enter new namespaces of the given kinds (keys of :data:`NS_FLAGS`), all at once."""
    flags = 0
    for n in names:
        flags |= NS_FLAGS[n]
    _check(libc.unshare(ctypes.c_int(flags)), f"unshare({', '.join(names)})")


def write_id_maps(uid: int, gid: int, inside_uid: int = 0, inside_gid: int = 0) -> None:
    """Map ``inside`` ids to the outside ones in a fresh user namespace (unprivileged case)."""
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{inside_uid} {uid} 1\n")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{inside_gid} {gid} 1\n")
    except OSError as e:
        raise SandboxError(f"namespaces: writing the user namespace id maps: {e}") from None


def enter_pid_namespace(*, relay_signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """Fork after ``unshare(pid)``: return in the child (pid 1 of the new namespace).

    The parent never returns: it stays behind as a relay that forwards ``relay_signals``
    to the child and finally exits with the child's own status -- re-raising the signal
    that killed it, so the supervisor sees the agent's real cause of death. The child
    dies with the relay (PDEATHSIG), and the relay dies with the zygote.
    """
    try:
        child = os.fork()
    except OSError as e:
        raise SandboxError(f"namespaces: fork into the new pid namespace: {e}") from None
    if child == 0:
        set_pdeathsig(signal.SIGKILL)
        return
    _relay(child, relay_signals)


def _relay(child: int, relay_signals: tuple[int, ...]) -> NoReturn:
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for s in relay_signals:
        signal.signal(s, forward)
    # Nothing else may keep resources open on the agent's behalf.
    with contextlib.suppress(OSError):
        os.closerange(3, 1 << 16)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        for s in relay_signals:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal did not end us (it is blocked)
    os._exit(os.waitstatus_to_exitcode(status))


# ----------------------------------------------------------------------- the mount tree


@dataclass(frozen=True)
class MountOps:
    dirs: tuple[str, ...]  # directories to create in the new root, parents first
    files: tuple[str, ...]  # empty files to create as mount points
    # (host source, path inside, flags of its read-only/-write remount)
    binds: tuple[tuple[str, str, int], ...]

# Where a process finds its own scratch directory and the broker socket inside its
# mount tree: fixed places, so nothing it can see reveals where $AGENTLIBOS_HOME is.
SCRATCH_INSIDE: Final = "/scratch"
BROKER_INSIDE: Final = "/run/agentlibos/broker.sock"


@dataclass(frozen=True)
class MountPlan:
    """The file-system view of one process, decided by the supervisor before fork."""

    new_root: str  # an empty host directory; a tmpfs is mounted on it in the child
    ro_binds: tuple[str, ...]  # host paths bound read-only at the same path
    rw_binds: tuple[str, ...]  # host paths bound read-write at the same path
    dev_nodes: tuple[str, ...]  # /dev/null and friends, bound from the host
    symlinks: tuple[tuple[str, str], ...]  # (path, target), e.g. ("/lib", "usr/lib")
    tmp_dir: str  # what /tmp points to (the scratch directory, as seen inside)
    hostname: str = "agentlibos"
    # (host path, path inside): read-write binds placed elsewhere than their host path
    # (scratch at /scratch, the broker socket at /run/agentlibos/broker.sock).
    moved: tuple[tuple[str, str], ...] = ()
    # Precomputed by the supervisor (compile_mounts): what to create and how to remount,
    # so the child runs a short list of syscalls instead of stat-ing its way there.
    ops: MountOps | None = None
    # Sources the child opens without following a symbolic link in any component, then
    # binds by that descriptor: the user's paths a shell command sees. Their parents are
    # writable by agents, and a path checked in the supervisor could be swapped for a
    # link to anywhere (/etc) before the child's mount(2) -- which follows links -- ran.
    strict: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "new_root": self.new_root,
            "ro_binds": list(self.ro_binds),
            "rw_binds": list(self.rw_binds),
            "dev_nodes": list(self.dev_nodes),
            "symlinks": [list(s) for s in self.symlinks],
            "tmp_dir": self.tmp_dir,
            "hostname": self.hostname,
            "moved": [list(m) for m in self.moved],
            "strict": list(self.strict),
            "ops": None if self.ops is None else {
                "dirs": list(self.ops.dirs), "files": list(self.ops.files),
                "binds": [list(b) for b in self.ops.binds]},
        }

    @staticmethod
    def from_json(d: dict[str, object]) -> MountPlan:
        def strs(key: str) -> tuple[str, ...]:
            v = d.get(key, [])
            assert isinstance(v, list)
            return tuple(str(x) for x in v)

        links = d.get("symlinks", [])
        assert isinstance(links, list)
        moved = d.get("moved", [])
        assert isinstance(moved, list)
        ops = d.get("ops")
        compiled = None
        if isinstance(ops, dict):
            compiled = MountOps(
                dirs=tuple(str(x) for x in ops["dirs"]),
                files=tuple(str(x) for x in ops["files"]),
                binds=tuple((str(a), str(b), int(c)) for a, b, c in ops["binds"]),
            )
        return MountPlan(
            new_root=str(d["new_root"]),
            ro_binds=strs("ro_binds"),
            rw_binds=strs("rw_binds"),
            dev_nodes=strs("dev_nodes"),
            symlinks=tuple((str(a), str(b)) for a, b in links),
            tmp_dir=str(d["tmp_dir"]),
            hostname=str(d.get("hostname", "agentlibos")),
            moved=tuple((str(a), str(b)) for a, b in moved),
            ops=compiled,
            strict=strs("strict"),
        )

    def inside(self, host_path: str) -> str:
        """Where ``host_path`` (bound into the tree) is seen from inside it."""
        return dict(self.moved).get(host_path, host_path)


# Not a mount flag (those are 32 bits): marks a MountOps bind of a ``strict`` source.
STRICT_SOURCE: Final = 1 << 40


def open_no_symlinks(path: str) -> int:
    """An O_PATH descriptor of the absolute ``path``, reached one component at a time
    without following a symbolic link (where one is found: SandboxError, ELOOP). The
    descriptor is what a bind then mounts: what was checked is what is bound."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in (p for p in path.split("/") if p):
            if part in (".", ".."):
                raise SandboxError(f"namespaces: cannot bind {path}: not a plain path")
            nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                raise SandboxError(f"namespaces: cannot bind {path}: a symbolic link took "
                                   "the place of a directory in it", errno=40)
    except OSError as e:
        os.close(fd)
        raise SandboxError(f"namespaces: cannot bind {path}: {e.strerror}",
                           errno=e.errno) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    ret = libc.mount(
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    _check(ret, f"mount {source or fstype or '-'} on {target}")


def _locked_flags(path: str) -> int:
    """Flags a remount must keep: a bind remount that drops nosuid/nodev/noexec of its
    source is refused (EPERM) inside a user namespace, where they are locked."""
    f = os.statvfs(path).f_flag
    out = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if f & st_flag:
            out |= ms_flag
    return out


def pivot_root(new_root: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise SandboxError(f"namespaces: pivot_root: unknown architecture {os.uname().machine}")
    os.chdir(new_root)
    # pivot_root(".", ".") stacks the old root under the new one at "/", then the lazy
    # unmount drops it: no directory for the old root is needed (the runc idiom).
    _check(libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
    _check(libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "unmount the old root")
    os.chdir("/")


def compile_mounts(plan: MountPlan) -> MountPlan:
    """In the supervisor, before fork: stat every source once and decide the operations.

    Raises SandboxError naming a source that is missing (fail closed, before fork).
    """
    dirs: list[str] = []
    files: list[str] = []
    binds: list[tuple[str, str, int]] = []

    def parents(path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)

    for path, target, read_only in [*((p, p, True) for p in plan.ro_binds),
                                    *((p, p, False) for p in plan.rw_binds),
                                    *((p, t, False) for p, t in plan.moved)]:
        try:
            is_dir = stat_mod.S_ISDIR(os.stat(path).st_mode)
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | _locked_flags(path)
        except OSError as e:
            raise SandboxError(f"namespaces: cannot bind {path}: {e.strerror}") from None
        parents(target)
        if is_dir:
            if target not in dirs:
                dirs.append(target)
        else:
            files.append(target)
        strict = STRICT_SOURCE if path in plan.strict else 0
        binds.append((path, target, flags | strict | (MS_RDONLY if read_only else 0)))
    # A bind whose target lies inside another's must come after it, or the outer one
    # would hide it: a shell command's project under /tmp sits inside its private /tmp,
    # a writable out/ inside a read-only project. Depth first, stably, is enough.
    binds.sort(key=lambda b: b[1].rstrip("/").count("/"))
    for node in plan.dev_nodes:
        parents(node)
        files.append(node)
    for link, _ in plan.symlinks:
        parents(link)
    return MountPlan(plan.new_root, plan.ro_binds, plan.rw_binds, plan.dev_nodes,
                     plan.symlinks, plan.tmp_dir, plan.hostname, plan.moved,
                     MountOps(tuple(dirs), tuple(files), tuple(binds)), plan.strict)


def build_mount_tree(plan: MountPlan) -> None:
    """In the child (pid 1 of its pid namespace, in its own mount namespace): build the
    view of ``plan`` and make it the root. Any failure raises SandboxError."""
    start_mount_tree(plan)
    finish_mount_tree(plan)


def start_mount_tree(plan: MountPlan) -> None:
    """The first half of :func:`build_mount_tree`: a tmpfs at the new root holding every
    bind, device node and link of ``plan`` and a fresh /proc -- not pivoted into yet.

    A pooled process (docs/sandbox.md) runs this before it has an assignment, with the
    part of the tree every agent shares (the host view), and pivots into it; on
    assignment :func:`attach_agent_binds` adds what is its agent's own."""
    # Nothing done here may propagate back to the host's mount table.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = plan.new_root
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    _populate(plan)
    os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
    # A fresh procfs shows only this pid namespace; read-only, because uid 0 may write
    # some /proc/sys files by owner permission alone (core_pattern is a host escape).
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    # Here, not after the pivot: a pooled process's filter already refuses sethostname.
    with contextlib.suppress(OSError):
        socket.sethostname(plan.hostname)


def _make_points(ops: MountOps, root: str, skip: MountOps) -> None:
    """Create under ``root`` the directories and files ``ops`` binds onto, less ``skip``'s."""
    skip_dirs, skip_files = set(skip.dirs), set(skip.files)
    try:
        for d in ops.dirs:
            if d not in skip_dirs:
                # exist_ok: a pooled tree's parents may already hold it.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(root + d, 0o755)
        for f in ops.files:
            if f not in skip_files:
                os.close(os.open(root + f, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    except OSError as e:
        raise SandboxError(f"namespaces: preparing the new root: {e}") from None


def _populate(plan: MountPlan) -> None:
    """Create and bind everything ``plan`` holds, under its new root (not pivoted into)."""
    root = plan.new_root
    if plan.ops is None:
        plan = compile_mounts(plan)
    assert plan.ops is not None
    _make_points(plan.ops, root, MountOps((), (), ()))
    for path, target, flags in plan.ops.binds:
        if flags & STRICT_SOURCE:
            fd = open_no_symlinks(path)
            try:
                _mount(f"/proc/self/fd/{fd}", root + target, None, MS_BIND | MS_REC)
            finally:
                os.close(fd)
        else:
            _mount(path, root + target, None, MS_BIND | MS_REC)
        _mount(None, root + target, None, flags & ~STRICT_SOURCE)
    for node in plan.dev_nodes:
        # Device nodes need a mount without nodev: the bind keeps devtmpfs's flags.
        _mount(node, root + node, None, MS_BIND)
    for link, dest in plan.symlinks:
        os.symlink(dest, root + link)


def _seal(plan: MountPlan, root: str) -> None:
    """Link /tmp and make the tmpfs root (at ``root``) read-only: from here nothing can
    be created outside the writable binds."""
    # /tmp is the scratch directory, unless binds already live under /tmp.
    if not os.path.lexists(root + "/tmp"):  # noqa: S108 - a path in the new root
        os.symlink(plan.tmp_dir, root + "/tmp")  # noqa: S108
    _mount(None, root or "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def finish_mount_tree(plan: MountPlan) -> None:
    """The second half (cold path): seal the root and pivot into it."""
    _seal(plan, plan.new_root)
    pivot_root(plan.new_root)


def agent_binds(plan: MountPlan, done: MountPlan) -> list[tuple[str, str, int]]:
    """The binds of ``plan`` that the pooled tree ``done`` lacks, in the order they go
    on: what the supervisor clones (mountfd.clone_bind) and the process attaches."""
    if plan.ops is None or done.ops is None:
        raise SandboxError("namespaces: a pooled tree needs compiled mount plans")
    have = set(done.ops.binds)
    return [b for b in plan.ops.binds if b not in have]


def attach_agent_binds(plan: MountPlan, done: MountPlan, fds: list[int]) -> None:
    """In a pooled process, inside the tree ``done`` it pivoted into before its
    assignment: attach its agent's binds (``fds``, cloned by the supervisor in the order
    of :func:`agent_binds`), then seal the root. The caller closes ``fds``."""
    if done.new_root != plan.new_root:
        raise SandboxError("namespaces: the pooled tree was built for another root")
    binds = agent_binds(plan, done)
    if len(binds) != len(fds):
        raise SandboxError(f"namespaces: the assignment brought {len(fds)} binds, "
                           f"its plan has {len(binds)}")
    assert plan.ops is not None and done.ops is not None
    _make_points(plan.ops, "", done.ops)
    for (_source, target, _flags), fd in zip(binds, fds, strict=True):
        mountfd.attach(fd, target)
    _seal(plan, "")


def current_namespaces() -> dict[str, int]:
    """Inode of each namespace this process is in, to verify an unshare took."""
    out: dict[str, int] = {}
    for n in NS_FLAGS:
        with contextlib.suppress(OSError):
            out[n] = os.stat(f"/proc/self/ns/{n}").st_ino
    return out


def describe() -> str:
    """One line for `agentlibos doctor`."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            max_user = int(f.read().strip() or 0)
    except (OSError, ValueError):
        max_user = -1
    have = [n for n in NS_FLAGS if os.path.exists(f"/proc/self/ns/{n}")]
    priv = "root" if os.geteuid() == 0 else f"uid {os.geteuid()} (needs user namespaces)"
    no_api = mountfd.missing()
    return (f"{', '.join(have)} available; as {priv}; max_user_namespaces={max_user}; "
            f"pivot_root on {os.uname().machine}: "
            f"{'yes' if os.uname().machine in _SYS_PIVOT_ROOT else 'unknown arch'}; "
            f"binds by descriptor (the warm pool): {'yes' if no_api is None else no_api}")

