"""The warm pool's template: the part of an agent's sandbox every agent shares.

Pure, run in the supervisor before any fork. A pooled process (docs/sandbox.md, "The
warm pool") applies the template before it knows which agent it will be
(:func:`agentlibos.sandbox.contain.pre_contain`): its namespaces, the mount tree of the
host view (not pivoted into), a top-level cgroup of its own (no limits yet), rlimits,
no_new_privs and the pool seccomp filter. What is an agent's own -- its image and
scratch binds, its cgroup's limits (or a cgroup inside its parent's), Landlock rules,
uid, the agent filter on top -- comes with its assignment.

:func:`fits` says whether a prepared profile may be finished from the template: the
same namespaces and rlimits, the template's binds a subset of the profile's, the layers
it pre-applies on. Anything else (a user namespace, a layer disabled or missing) takes
the cold path, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentlibos.sandbox.namespaces import SCRATCH_INSIDE, MountPlan, compile_mounts
from agentlibos.sandbox.profile import HostView, SandboxConfig

# The layers a pooled process has before its assignment; the pool is not used unless
# the profile applies both (a pooled process cannot run without them).
PRE_APPLIED = ("namespaces", "seccomp")
# The most binds of its own an agent may have and still be pooled: each comes with its
# assignment as a descriptor, and with a nested agent's cgroups (one per hierarchy, four
# at most) they must fit the 16 an assignment carries (child.MAX_ASSIGN_FDS).
MAX_AGENT_BINDS = 12


def pool_base(*, config: SandboxConfig, view: HostView, new_root: str,
              pool_bpf: bytes, cgroup: dict[str, Any] | None = None,
              broker_socket: str | None = None) -> dict[str, Any]:
    """The template (JSON) for this operator config and host; raises SandboxError if a
    bind source is missing (compile_mounts).

    The broker socket is not in it: the zygote (and so the pool) starts before the broker
    binds its socket, and a bind is of an inode -- a socket file made later would not be
    the one bound. It is bound on assignment, with the agent's scratch and image.

    ``cgroup`` (CgroupManager.pool_recipe, when the cgroups layer is on): each pooled
    process makes a top-level cgroup of its own and joins it before its assignment;
    a top-level agent it serves keeps that cgroup (the supervisor writes its limits
    into it), a nested one moves into one inside its parent's.

    ``broker_socket``: the broker's socket on the host, which a pooled process connects
    to (by that path, before it pivots) while it waits, so that its agent's first call
    needs no connection of its own. The supervisor sends the template once the broker
    has bound it; the connection carries no authority (every call has its token)."""
    plan = compile_mounts(MountPlan(
        new_root=new_root, ro_binds=view.ro_paths, rw_binds=(), dev_nodes=view.dev_nodes,
        symlinks=view.symlinks, tmp_dir=SCRATCH_INSIDE))
    base: dict[str, Any] = {
        # The zygote's fork makes the pid namespace; the child unshares the rest.
        "namespaces": ["mnt", "pid", "net", "ipc", "uts"],
        "mount": plan.to_json(),
        "rlimits": {"core": 0, "nofile": config.nofile, "fsize": config.fsize_bytes},
        "seccomp_bpf": pool_bpf.hex(),
    }
    if cgroup is not None:
        base["cgroup"] = cgroup
    if broker_socket is not None:
        base["broker"] = broker_socket
    return {"key": pool_key(base), "base": base}


def pool_key(base: dict[str, Any]) -> str:
    """Names one template: a spawn prepared against another is never pooled."""
    return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:24]


def fits(profile: dict[str, Any], base: dict[str, Any]) -> bool:
    """May a pooled process built from ``base`` finish ``profile`` (JSON)? Pure."""
    modes, skipped = profile.get("modes", {}), profile.get("skipped", {})
    if any(modes.get(layer) == "disabled" or layer in skipped for layer in PRE_APPLIED):
        return False
    mount, done = profile.get("mount"), base["mount"]
    if (not profile.get("seccomp_bpf") or profile.get("id_map") is not None or mount is None
            or sorted(profile.get("namespaces", ())) != sorted(base["namespaces"])
            or profile.get("rlimits") != base["rlimits"]):
        return False
    if (mount["new_root"] != done["new_root"] or mount["hostname"] != done["hostname"]
            or mount["dev_nodes"] != done["dev_nodes"] or mount["symlinks"] != done["symlinks"]
            or mount["tmp_dir"] != done["tmp_dir"] or mount.get("ops") is None):
        return False
    ops, done_ops = mount["ops"], done["ops"]
    if not all({tuple(x) if isinstance(x, list) else x for x in done_ops[k]}
               <= {tuple(x) if isinstance(x, list) else x for x in ops[k]}
               for k in ("dirs", "files", "binds")):
        return False
    # The agent's own binds go on after the template's: one above a template bind would
    # cover it, where the cold path (binds sorted by depth) puts it underneath.
    old_targets = [str(b[1]).rstrip("/") + "/" for b in done_ops["binds"]]
    new_targets = {str(b[1]).rstrip("/") + "/" for b in ops["binds"]} - set(old_targets)
    if len(ops["binds"]) - len(done_ops["binds"]) > MAX_AGENT_BINDS:
        return False
    return not any(o.startswith(n) for n in new_targets for o in old_targets)
