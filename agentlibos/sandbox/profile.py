"""Sandbox policy as data: the operator's config, and the per-process profile built from it.

:class:`SandboxConfig` is what the operator writes in ``$AGENTLIBOS_HOME/config.toml``
(every default below applies when it is absent). :func:`build_profile` turns it, the
image's ``[limits]`` and facts about the host into a :class:`SandboxProfile` -- pure
code, run in the supervisor before fork. The child only applies the profile
(:mod:`agentlibos.sandbox.contain`), in order, failing closed.
"""

from __future__ import annotations

import os
import site
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import agentlibos
from agentlibos.errors import InvalidArgument, LimitExceeded, PolicyError
from agentlibos.kernel import units
from agentlibos.kernel.budgets import QUOTA_KEYS, TreeQuota
from agentlibos.kernel.image import Limits
from agentlibos.sandbox.namespaces import BROKER_INSIDE, SCRATCH_INSIDE, MountPlan

# The layers, in the order contain.apply applies them. no_new_privs and dropping
# capabilities are not layers: they cannot fail where the others work, and are always on.
LAYERS: Final[tuple[str, ...]] = ("cgroups", "namespaces", "rlimits", "landlock", "seccomp")

UserNamespace = Literal["auto", "always", "never"]

# The default [limits.ceiling]: what no image may ask for unless the operator raises it.
# Memory: the smaller of 4 GiB and half the host's RAM (one agent must not be able to
# ask for the host); pids: 1024 (a fork bomb stops there, a build with -j fits); cpu: the
# host's cores (more is meaningless); wall: 24 h (longer work is durable and resumes).
CEILING_MEMORY_BYTES: Final = 4 << 30
CEILING_PIDS: Final = 1024
CEILING_WALL_S: Final = 24 * 3600.0


def default_ceiling(host_memory_bytes: int | None, host_cores: int | None) -> Limits:
    """The built-in ceiling for a host with this much RAM and these many cores. Pure."""
    memory = (min(CEILING_MEMORY_BYTES, max(host_memory_bytes // 2, 64 << 20))
              if host_memory_bytes else CEILING_MEMORY_BYTES)
    return Limits(memory_max_bytes=memory, pids_max=CEILING_PIDS,
                  cpu_max_cores=float(host_cores) if host_cores else None,
                  wall_limit_s=CEILING_WALL_S)


def host_ceiling() -> Limits:
    """default_ceiling() for the host this runs on."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 0
    return default_ceiling(ram if ram > 0 else None, os.cpu_count())


class LimitAboveCeiling(LimitExceeded):
    """An image asked for more of a resource than the operator's ceiling allows.

    The image author's side (ask for less) or the operator's (raise [limits.ceiling]).
    """

    def __init__(self, limit: str, asked: float, ceiling: float) -> None:
        self.limit, self.asked, self.ceiling = limit, asked, ceiling
        super().__init__(f"the image asks for {limit} {_show(limit, asked)}, above the "
                         f"ceiling of {_show(limit, ceiling)} ([limits.ceiling] {limit} in "
                         f"the operator's config.toml)",
                         limit=limit, asked=asked, ceiling=ceiling)


def _show(limit: str, value: float) -> str:
    if limit == "memory":
        return units.format_size(int(value))
    if limit == "wall":
        return units.format_duration(value)
    if limit == "cpu":
        return f"{value:g} cores"
    return f"{value:g}"


@dataclass(frozen=True)
class ParentBudget:
    """What a spawning process has: its effective limits and how long it has left."""

    limits: Limits
    wall_left_s: float | None = None  # None: no wall limit


@dataclass(frozen=True)
class SandboxConfig:
    """The operator's sandbox settings. See docs/sandbox.md for each one."""

    # Layers that may be missing on this host: applied when possible, otherwise the
    # process runs without them and `ps`, `doctor` and the audit say so.
    optional: frozenset[str] = frozenset()
    # Layers not applied at all (for debugging); recorded as missing like optional ones.
    disabled: frozenset[str] = frozenset()
    # Limits for images that set none, and ceilings no image may exceed (None: none).
    default_limits: Limits = field(default_factory=lambda: Limits(
        memory_max_bytes=512 << 20, pids_max=64, cpu_max_cores=1.0, wall_limit_s=3600.0))
    ceiling_limits: Limits = field(default_factory=host_ceiling)
    # The cgroup the supervisor makes its group in (a delegated one); None: decided at
    # start (its own cgroup, or as root one under the root cgroup). AGENTLIBOS_CGROUP_ROOT
    # in the environment sets it too.
    cgroup_root: str | None = None
    nofile: int = 1024
    fsize_bytes: int = 1 << 30
    # The uid/gid agent code runs as when the mount namespace is in place (None: keep).
    agent_uid: int | None = 65534
    agent_gid: int | None = 65534
    # "auto": a user namespace only when the supervisor is not root.
    user_namespace: UserNamespace = "auto"
    # Extra host paths every agent may read (model files, a shared corpus...).
    read_only_paths: tuple[str, ...] = ()
    # JIT tools (each a Deno process): limits, V8 heap, a call's time limit, and how long
    # an idle warm tool process is kept.
    tool_limits: Limits = field(default_factory=lambda: Limits(
        memory_max_bytes=256 << 20, pids_max=32, cpu_max_cores=1.0))
    tool_heap_mb: int = 160
    tool_timeout_s: float = 30.0
    tool_idle_s: float = 300.0
    # shell.exec commands (docs/shell.md): each gets a cgroup of its own inside the
    # calling process's, with these limits (a fork bomb stops at pids_max).
    shell_limits: Limits = field(default_factory=lambda: Limits(
        memory_max_bytes=512 << 20, pids_max=64, cpu_max_cores=1.0))
    # Per-tree quotas on what the broker stores and writes for a tree ([limits]
    # object_bytes, objects, write_bytes, journal_bytes; defaults in kernel/budgets.py).
    tree_quota: TreeQuota = field(default_factory=TreeQuota)

    def layer_mode(self, layer: str) -> Literal["required", "optional", "disabled"]:
        if layer in self.disabled:
            return "disabled"
        return "optional" if layer in self.optional else "required"


def _limits(table: object, where: str) -> Limits:
    if not isinstance(table, dict):
        raise PolicyError(f"{where} must be a table")
    unknown = set(table) - {"memory", "pids", "cpu", "wall", "ceiling"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        return Limits(
            memory_max_bytes=units.parse_size(table["memory"], what=f"{where} memory")
            if "memory" in table else None,
            pids_max=units.parse_count(table["pids"], what=f"{where} pids")
            if "pids" in table else None,
            cpu_max_cores=units.parse_cores(table["cpu"], what=f"{where} cpu")
            if "cpu" in table else None,
            wall_limit_s=units.parse_duration(table["wall"], what=f"{where} wall")
            if "wall" in table else None,
        )
    except (InvalidArgument, TypeError, ValueError) as e:
        msg = str(e)  # parse_size/parse_duration's own message names `where` already
        raise PolicyError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _tree_quota(table: dict[str, Any], where: str) -> TreeQuota:
    """[limits] objects (a count) and the *_bytes quotas (sizes: "256MiB")."""
    d = TreeQuota()
    try:
        objects = table.get("objects", d.objects)
        if isinstance(objects, bool) or not isinstance(objects, int) or objects < 0:
            raise InvalidArgument(f"objects: expected a whole number >= 0, got {objects!r}")
        sizes = {k: units.parse_size(table.get(k, getattr(d, k)), what=k)
                 for k in QUOTA_KEYS if k != "objects"}
        return TreeQuota(objects=objects, **sizes)
    except (InvalidArgument, ValueError) as e:
        raise PolicyError(f"{where}: {e}") from None


def parse_config(text: str, source: str) -> SandboxConfig:
    """The sandbox part of a config.toml (``agentlibos.config`` reads the whole file)."""
    from agentlibos.config import parse_operator_config  # noqa: PLC0415 - config imports us

    return parse_operator_config(text, source).sandbox


def sandbox_config_from(data: dict[str, Any], source: str) -> SandboxConfig:
    """The ``[sandbox]``, ``[limits]`` and ``[jit]`` tables of a parsed config.toml;
    unknown keys and layers are errors naming the file."""
    sb = data.get("sandbox", {})
    if not isinstance(sb, dict):
        raise PolicyError(f"{source}: [sandbox] must be a table")
    known = {"optional", "disable", "nofile", "fsize", "agent_uid", "agent_gid",
             "user_namespace", "read_only_paths", "cgroup_root"}
    if set(sb) - known:
        raise PolicyError(f"{source}: unknown key(s) in [sandbox]: "
                          f"{', '.join(sorted(set(sb) - known))}")
    layers: dict[str, frozenset[str]] = {}
    for key in ("optional", "disable"):
        names = sb.get(key, [])
        if not isinstance(names, list) or any(n not in LAYERS for n in names):
            raise PolicyError(f"{source}: [sandbox] {key} must list layers among "
                              f"{', '.join(LAYERS)}; got {names!r}")
        layers[key] = frozenset(names)
    userns = sb.get("user_namespace", "auto")
    if userns not in ("auto", "always", "never"):
        raise PolicyError(f"{source}: [sandbox] user_namespace must be auto, always or never")
    defaults = SandboxConfig()
    lim = data.get("limits", {})
    default_limits = defaults.default_limits
    ceiling = defaults.ceiling_limits
    tree_quota = defaults.tree_quota
    if isinstance(lim, dict) and lim.keys() & set(QUOTA_KEYS):
        tree_quota = _tree_quota(lim, f"{source}: [limits]")
        lim = {k: v for k, v in lim.items() if k not in QUOTA_KEYS}
    if lim:
        given = _limits(lim, f"{source}: [limits]")
        default_limits = Limits(
            memory_max_bytes=given.memory_max_bytes or default_limits.memory_max_bytes,
            pids_max=given.pids_max or default_limits.pids_max,
            cpu_max_cores=given.cpu_max_cores or default_limits.cpu_max_cores,
            wall_limit_s=given.wall_limit_s or default_limits.wall_limit_s,
        )
        if "ceiling" in lim:
            # Each key given replaces that one of the built-in ceiling; the rest stay.
            raised = _limits(lim["ceiling"], f"{source}: [limits.ceiling]")
            ceiling = Limits(
                memory_max_bytes=raised.memory_max_bytes or ceiling.memory_max_bytes,
                pids_max=raised.pids_max or ceiling.pids_max,
                cpu_max_cores=raised.cpu_max_cores or ceiling.cpu_max_cores,
                wall_limit_s=raised.wall_limit_s or ceiling.wall_limit_s,
            )
    jit = data.get("jit", {})
    if not isinstance(jit, dict) or set(jit) - {"memory", "pids", "cpu", "heap", "timeout",
                                               "idle"}:
        raise PolicyError(f"{source}: [jit] takes memory, pids, cpu, heap, timeout, idle")
    tool_limits = defaults.tool_limits
    if jit.keys() & {"memory", "pids", "cpu"}:
        given = _limits({k: jit[k] for k in ("memory", "pids", "cpu") if k in jit},
                        f"{source}: [jit]")
        tool_limits = Limits(
            memory_max_bytes=given.memory_max_bytes or tool_limits.memory_max_bytes,
            pids_max=given.pids_max or tool_limits.pids_max,
            cpu_max_cores=given.cpu_max_cores or tool_limits.cpu_max_cores,
        )
    uid = sb.get("agent_uid", defaults.agent_uid)
    gid = sb.get("agent_gid", uid if "agent_uid" in sb else defaults.agent_gid)
    try:
        return SandboxConfig(
            optional=layers["optional"],
            disabled=layers["disable"],
            default_limits=default_limits,
            ceiling_limits=ceiling,
            nofile=int(sb.get("nofile", defaults.nofile)),
            fsize_bytes=units.parse_size(sb.get("fsize", defaults.fsize_bytes), what="fsize"),
            agent_uid=None if uid in (None, -1) else int(uid),
            agent_gid=None if gid in (None, -1) else int(gid),
            user_namespace=userns,
            read_only_paths=tuple(str(p) for p in sb.get("read_only_paths", [])),
            cgroup_root=_cgroup_root(sb.get("cgroup_root")),
            tool_limits=tool_limits,
            tool_heap_mb=units.parse_size(jit.get("heap", defaults.tool_heap_mb << 20),
                                    what="[jit] heap") >> 20,
            tool_timeout_s=units.parse_duration(jit.get("timeout", defaults.tool_timeout_s),
                                          what="[jit] timeout"),
            tool_idle_s=units.parse_duration(jit.get("idle", defaults.tool_idle_s),
                                       what="[jit] idle"),
            tree_quota=tree_quota,
        )
    except (InvalidArgument, TypeError, ValueError) as e:
        raise PolicyError(f"{source}: [sandbox]: {e}") from None


def load_config(path: str | Path | None) -> SandboxConfig:
    """The sandbox part of the config at ``path``; with None, the built-in defaults."""
    from agentlibos.config import load_operator_config  # noqa: PLC0415 - config imports us

    return load_operator_config(path).sandbox


def _cgroup_root(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidArgument(f"cgroup_root must be an absolute cgroup path, got {value!r}")
    return value


_KEYS: Final = (("memory", "memory_max_bytes"), ("pids", "pids_max"),
                ("cpu", "cpu_max_cores"), ("wall", "wall_limit_s"))


def effective_limits(image: Limits, config: SandboxConfig,
                     parent: ParentBudget | None = None) -> Limits:
    """The limits a process runs with. Pure.

    The image's own values, refused with :class:`LimitAboveCeiling` when above the
    operator's ceiling; the operator's defaults where the image sets none (a default
    above the ceiling is lowered to it: the image asked for nothing). With ``parent``
    every value is then clamped to the parent's (a child never gets more memory, pids
    or cores than the process that spawned it), and the wall limit to what the parent
    has left: a tree lives within its root's budget.
    """
    d, c = config.default_limits, config.ceiling_limits
    out: dict[str, Any] = {}
    for name, attr in _KEYS:
        mine, ceiling = getattr(image, attr), getattr(c, attr)
        if mine is not None and ceiling is not None and mine > ceiling:
            raise LimitAboveCeiling(name, mine, ceiling)
        v = mine if mine is not None else getattr(d, attr)
        if v is not None and ceiling is not None:
            v = min(v, ceiling)
        if parent is not None:
            cap = (parent.wall_left_s if attr == "wall_limit_s"
                   else getattr(parent.limits, attr))
            if cap is not None:
                v = cap if v is None else min(v, cap)
        out[attr] = v
    if out["wall_limit_s"] is not None:
        out["wall_limit_s"] = max(0.0, out["wall_limit_s"])
    return Limits(**out)


# --------------------------------------------------------------------- the host view


@dataclass(frozen=True)
class HostView:
    """What an agent's Python needs to see, read-only. Computed once per supervisor."""

    ro_paths: tuple[str, ...]  # real host paths
    symlinks: tuple[tuple[str, str], ...]  # top-level links such as /lib -> usr/lib
    dev_nodes: tuple[str, ...]


_ETC_FILES: Final = ("/etc/ld.so.cache", "/etc/localtime")
_DEV_NODES: Final = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def _minimal(paths: list[str]) -> tuple[str, ...]:
    """Drop paths inside others (one bind covers them) and duplicates; keep order."""
    real = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})
    out: list[str] = []
    for p in real:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return tuple(out)


def host_view(extra: tuple[str, ...] = ()) -> HostView:
    """The interpreter, its standard library and packages, shared libraries, this package."""
    paths: list[str] = ["/usr"]
    links: list[tuple[str, str]] = []
    for top in ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            paths.append(top)  # not a merged-/usr system: bind the real directory
    paths += [sys.base_prefix, sys.prefix, sys.exec_prefix, *site.getsitepackages()]
    paths.append(str(Path(agentlibos.__file__).resolve().parent))
    paths += [f for f in _ETC_FILES if os.path.exists(f)]
    paths += list(extra)
    return HostView(
        ro_paths=_minimal(paths),
        symlinks=tuple(links),
        dev_nodes=tuple(n for n in _DEV_NODES if os.path.exists(n)),
    )


# ----------------------------------------------------------------------- the profile


@dataclass(frozen=True)
class SandboxProfile:
    """Everything one child needs to contain itself; JSON-serialisable for the zygote."""

    modes: dict[str, str]  # layer -> required | optional | disabled
    cgroup_procs: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    mount: MountPlan | None = None
    id_map: tuple[int, int] | None = None  # outside uid, gid for a user namespace
    agent_ids: tuple[int, int] | None = None  # uid, gid to become once contained
    rlimits: dict[str, int] = field(default_factory=dict)
    landlock_ro: tuple[str, ...] = ()
    landlock_rw: tuple[str, ...] = ()
    seccomp_bpf: bytes = b""
    scratch: str = ""  # handed to the agent uid if the uid switch happens
    # Optional layers the supervisor could not prepare, with the reason: the child
    # records them as missing instead of trying.
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "scratch": self.scratch,
            "modes": self.modes,
            "cgroup_procs": list(self.cgroup_procs),
            "namespaces": list(self.namespaces),
            "mount": self.mount.to_json() if self.mount else None,
            "id_map": list(self.id_map) if self.id_map else None,
            "agent_ids": list(self.agent_ids) if self.agent_ids else None,
            "rlimits": self.rlimits,
            "landlock_ro": list(self.landlock_ro),
            "landlock_rw": list(self.landlock_rw),
            "seccomp_bpf": self.seccomp_bpf.hex(),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> SandboxProfile:
        mount = d.get("mount")
        id_map = d.get("id_map")
        agent_ids = d.get("agent_ids")
        return SandboxProfile(
            modes=dict(d.get("modes", {})),
            cgroup_procs=tuple(d.get("cgroup_procs", [])),
            namespaces=tuple(d.get("namespaces", [])),
            mount=MountPlan.from_json(mount) if mount else None,
            id_map=(int(id_map[0]), int(id_map[1])) if id_map else None,
            agent_ids=(int(agent_ids[0]), int(agent_ids[1])) if agent_ids else None,
            rlimits={str(k): int(v) for k, v in d.get("rlimits", {}).items()},
            landlock_ro=tuple(d.get("landlock_ro", [])),
            landlock_rw=tuple(d.get("landlock_rw", [])),
            seccomp_bpf=bytes.fromhex(d.get("seccomp_bpf", "")),
            scratch=str(d.get("scratch", "")),
            skipped={str(k): str(v) for k, v in d.get("skipped", {}).items()},
        )


def build_profile(
    *,
    config: SandboxConfig,
    view: HostView,
    image_dir: str,
    scratch: str,
    broker_socket: str,
    new_root: str,
    cgroup_procs: tuple[str, ...],
    seccomp_bpf: bytes,
    supervisor_uid: int,
    supervisor_gid: int,
) -> SandboxProfile:
    """Decide an AgentProcess's sandbox. Pure: everything it needs is an argument."""
    return _assemble(
        config=config,
        ro=tuple(dict.fromkeys((*view.ro_paths, image_dir))),
        rw=(scratch, broker_socket),
        view=view,
        scratch=scratch,
        new_root=new_root,
        cgroup_procs=cgroup_procs,
        seccomp_bpf=seccomp_bpf,
        supervisor_ids=(supervisor_uid, supervisor_gid),
        # Inside its tree an agent finds its scratch and the broker at fixed places:
        # nothing it sees names the host's $AGENTLIBOS_HOME.
        moved=((scratch, SCRATCH_INSIDE), (broker_socket, BROKER_INSIDE)),
        strict=(image_dir,),  # a sibling image's, agent-writable: bound link-free
    )


def build_tool_profile(
    *,
    config: SandboxConfig,
    exe_files: tuple[str, ...],
    symlinks: tuple[tuple[str, str], ...],
    read_only_dirs: tuple[str, ...],
    scratch: str,
    new_root: str,
    cgroup_procs: tuple[str, ...],
    seccomp_bpf: bytes,
    supervisor_uid: int,
    supervisor_gid: int,
) -> SandboxProfile:
    """Decide a JIT tool's sandbox (a Deno process): the same layers as an agent, a tree
    holding only Deno, its libraries, the runner and the tool, and no broker socket --
    it talks to the supervisor over its stdin and stdout only. Pure."""
    view = HostView(ro_paths=exe_files, symlinks=symlinks,
                    dev_nodes=("/dev/null", "/dev/urandom"))
    return _assemble(
        config=config,
        ro=tuple(dict.fromkeys((*exe_files, *read_only_dirs))),
        rw=(scratch,),
        view=view,
        scratch=scratch,
        new_root=new_root,
        cgroup_procs=cgroup_procs,
        seccomp_bpf=seccomp_bpf,
        supervisor_ids=(supervisor_uid, supervisor_gid),
    )


# A shell command's /etc: the loader's cache, the time zone, Debian's alternatives
# (/usr/bin/awk -> /etc/alternatives/awk); not passwd, hosts or anything naming users.
_SHELL_ETC: Final = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
# /dev/fd and /dev/std* for bash's process substitution and programs that open them.
_DEV_LINKS: Final = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                     ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"))
# Where a shell command's private scratch directory appears: its /tmp.
SHELL_TMP: Final = "/tmp"  # noqa: S108 - a path inside the command's own mount tree


def shell_view() -> HostView:
    """The system part of a shell command's tree: /usr, /bin, /lib* (as on the host),
    a minimal /etc, the harmless device nodes. Computed once per supervisor."""
    paths: list[str] = ["/usr"]
    links: list[tuple[str, str]] = []
    for top in ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            paths.append(top)
    paths += [f for f in _SHELL_ETC if os.path.exists(f)]
    return HostView(ro_paths=_minimal(paths), symlinks=(*links, *_DEV_LINKS),
                    dev_nodes=tuple(n for n in _DEV_NODES if os.path.exists(n)))


def build_shell_profile(
    *,
    config: SandboxConfig,
    view: HostView,
    read_only: tuple[str, ...],
    read_write: tuple[str, ...],
    scratch: str,
    new_root: str,
    cgroup_procs: tuple[str, ...],
    seccomp_bpf: bytes,
    run_as: tuple[int, int],
    supervisor_uid: int,
    supervisor_gid: int,
) -> SandboxProfile:
    """Decide a shell command's sandbox. Pure. ``view``: the system, read-only;
    ``read_only``/``read_write``: the host paths the caller's fs capabilities cover
    (nothing else of the user's files exists); ``scratch``: its private /tmp; it runs
    as ``run_as`` (the owner of the caller's cwd) with every capability dropped."""
    return _assemble(
        config=config,
        ro=tuple(dict.fromkeys((*view.ro_paths, *read_only))),
        rw=(scratch, *read_write),
        view=view,
        scratch=scratch,
        new_root=new_root,
        cgroup_procs=cgroup_procs,
        seccomp_bpf=seccomp_bpf,
        supervisor_ids=(supervisor_uid, supervisor_gid),
        moved=((scratch, SHELL_TMP),),
        writable=read_write,
        agent_ids=run_as,
        strict=(*read_only, *read_write),
    )


def _assemble(
    *,
    config: SandboxConfig,
    ro: tuple[str, ...],
    rw: tuple[str, ...],
    view: HostView,
    scratch: str,
    new_root: str,
    cgroup_procs: tuple[str, ...],
    seccomp_bpf: bytes,
    supervisor_ids: tuple[int, int],
    moved: tuple[tuple[str, str], ...] = (),
    writable: tuple[str, ...] = (),  # more rw binds Landlock lets it write (shell)
    agent_ids: tuple[int, int] | None = None,  # the uid/gid to run as (default: config)
    strict: tuple[str, ...] = (),  # binds of the user's paths (MountPlan.strict)
) -> SandboxProfile:
    modes: dict[str, str] = {layer: config.layer_mode(layer) for layer in LAYERS}
    userns = config.user_namespace == "always" or (
        config.user_namespace == "auto" and supervisor_ids[0] != 0)
    namespaces: tuple[str, ...] = ("mnt", "pid", "net", "ipc", "uts")
    if userns:
        namespaces = ("user", *namespaces)
    moved_from = {host for host, _ in moved}
    mount = MountPlan(
        new_root=new_root,
        ro_binds=ro,
        rw_binds=tuple(p for p in rw if p not in moved_from),
        dev_nodes=view.dev_nodes,
        symlinks=view.symlinks,
        tmp_dir=dict(moved).get(scratch, scratch),
        moved=moved,
        strict=strict,
    )
    # In a user namespace only the supervisor's own id is mapped (to 0 inside): there is
    # no other uid to become, and root inside is the unprivileged supervisor outside.
    if agent_ids is None and config.agent_uid is not None:
        agent_ids = (config.agent_uid,
                     config.agent_gid if config.agent_gid is not None else config.agent_uid)
    if modes["namespaces"] == "disabled" or userns:
        agent_ids = None
    return SandboxProfile(
        modes=modes,
        cgroup_procs=cgroup_procs if modes["cgroups"] != "disabled" else (),
        namespaces=namespaces if modes["namespaces"] != "disabled" else (),
        mount=mount if modes["namespaces"] != "disabled" else None,
        id_map=supervisor_ids if userns else None,
        agent_ids=agent_ids,
        rlimits={"core": 0, "nofile": config.nofile, "fsize": config.fsize_bytes},
        # The same host paths as the mount tree: Landlock holds even where the mount
        # namespace is optional and missing. (/proc is added by contain.py, which knows
        # whether the pid namespace took.)
        landlock_ro=(*ro, *view.dev_nodes, *(p for p in rw[1:] if p not in writable)),
        landlock_rw=(scratch, "/dev/null", *writable),
        seccomp_bpf=seccomp_bpf if modes["seccomp"] != "disabled" else b"",
        scratch=scratch,
    )
