"""``shell.exec``'s service: decide what a command sees, hand it to the shell provider.

Deciding which host paths the command sees is pure (:func:`shell_paths`, tested on its
own): from the caller's ``fs`` capabilities and the operator's policy, what it may read
is bound read-only, what it may write read-write, nothing else of the user's files. The
service turns an authorized call into a complete :class:`ShellRequest` (argv, cwd,
environment, that mount plan, the uid it runs as), hands it to the shell provider
(``providers/shell.py``; by default ``sandbox_shell.SandboxShell``, each command in a
sandbox of its own), suspends the call (wait ``shell:<argv0>``) and, when the command
has ended, caps its output, audits it and answers the agent. Authority, audit and the
output limit stay here, so an injected provider changes where a command lands, never
what an agent may do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Final

from agentlibos.broker.syscalls import Caller, Pending, Result
from agentlibos.broker.syscalls.shell import SHELL_PATH
from agentlibos.config import Paths
from agentlibos.errors import NotFound, SandboxError
from agentlibos.kernel.caps import CapPattern, escape, parse_cap
from agentlibos.kernel.policy import Policy, Request, authorize
from agentlibos.kernel.text import storable
from agentlibos.providers.shell import MAX_OUTPUT, ShellProvider, ShellRequest, ShellResult
from agentlibos.sandbox.namespaces import open_no_symlinks
from agentlibos.sandbox.profile import SHELL_TMP
from agentlibos.store import Store
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.waits import Waits

__all__ = ["MAX_OUTPUT", "ShellRunner", "cap_root", "output_text", "shell_paths"]

# Never bound into a command's tree, whatever a capability says: the whole host, the
# command's own /proc, /dev and /tmp, and the kernel's files.
_NEVER: Final = ("/", "/proc", "/dev", "/sys", SHELL_TMP)


# ------------------------------------------------------------------ deciding (pure)


def cap_root(resource: str) -> str | None:
    """The host path an absolute path glob lies within: the glob itself when it has no
    wildcard, else the directory holding its first wildcard (``/p/src/**`` ->
    ``/p/src``, ``/p/*.md`` -> ``/p``). None for a relative or anywhere glob. Pure."""
    if not resource.startswith("/"):
        return None
    out: list[str] = []
    i = 0
    while i < len(resource):
        c = resource[i]
        if c == "\\" and i + 1 < len(resource):  # an escaped character is literal
            out.append(resource[i + 1])
            i += 2
            continue
        if c in "*?":
            return os.path.normpath("".join(out).rsplit("/", 1)[0] or "/")
        out.append(c)
        i += 1
    return os.path.normpath("".join(out))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _permitted(policy: Policy, approved: Sequence[CapPattern], right: str, path: str,
               cwd: str) -> bool:
    """Would the operator's policy let the caller ``right`` the whole of ``path`` now?
    An ``ask`` counts only with a standing approval: a mount is not a call to approve."""
    held = [parse_cap(f"fs:{right}:{escape(path)}")]
    d = authorize(held, policy, Request("fs", right, path), cwd)
    if d.verdict == "ask":
        return any(a.allows("fs", right, path) for a in approved)
    return d.verdict == "allow"


def _minimal(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(_inside(p, q) for q in out):
            out.append(p)
    return out


def shell_paths(caps: Sequence[CapPattern], approved: Sequence[CapPattern],
                policy: Policy, cwd: str, hidden: Sequence[str] = (),
                own: str | None = None) -> tuple[list[str], list[str]]:
    """(read-only, read-write) host paths a command of this caller sees. Pure.

    Each absolute ``fs`` capability contributes its :func:`cap_root`: read-write when it
    holds write or delete and the policy allows writing there, read-only when it holds
    read and the policy allows reading. ``hidden`` (the runtime's own state) and the
    paths in ``_NEVER`` are never bound, nor anything that contains them -- except what
    lies inside ``own``, the caller's default working directory (``work/<pid>`` in the
    home), which is the agent's own files. A read-only path inside a read-write one is
    dropped (the outer bind covers it).
    """
    ro: list[str] = []
    rw: list[str] = []
    for c in (*caps, *approved):
        root = cap_root(c.resource) if c.kind == "fs" else None
        if root is None or any(_inside(h, root) for h in (*hidden, *_NEVER)) or any(
                _inside(root, n) for n in ("/proc", "/dev", "/sys")):
            continue
        if any(_inside(root, h) for h in hidden) and not (own and _inside(root, own)):
            continue
        if c.rights & {"write", "delete"} and _permitted(policy, approved, "write", root, cwd):
            rw.append(root)
        elif "read" in c.rights and _permitted(policy, approved, "read", root, cwd):
            ro.append(root)
    rw = _minimal(rw)
    ro = [p for p in _minimal(ro) if not any(_inside(p, w) for w in rw)]
    return ro, rw


def output_text(data: bytes, total: int) -> str:
    """A stream as the agent gets it: UTF-8 (invalid bytes replaced) and, when more
    than it keeps was written, a marker saying so -- all of it within
    :data:`MAX_OUTPUT` bytes ("each output up to 1 MiB, then truncated and said so")."""
    if total <= len(data) <= MAX_OUTPUT:
        return data.decode("utf-8", "replace")

    def marker(kept: int) -> str:
        return f"\n[agentlibos: output truncated: {total} bytes written, the first {kept} kept]"

    # Room for the marker, and for a character cut in two becoming U+FFFD (3 bytes).
    keep = data[:MAX_OUTPUT - len(marker(MAX_OUTPUT).encode()) - 8]
    return keep.decode("utf-8", "replace") + marker(len(keep))


# ----------------------------------------------------------------------- the call


class ShellRunner:
    """The shell service ``shell.exec`` handlers receive (``ShellService``)."""

    def __init__(self, paths: Paths, store: Store, waits: Waits, table: ProcessTable,
                 provider: ShellProvider) -> None:
        self._paths = paths
        self._store = store
        self._waits = waits
        self._table = table
        self.provider = provider
        table.ended.append(provider.end_process)

    def resolve(self, argv0: str, cwd: str) -> str:
        """``argv0`` as the command's sandbox will find it: a path (against ``cwd``), or
        a name looked up on its PATH (read-only system directories)."""
        if "/" in argv0:
            return os.path.normpath(os.path.join(cwd, argv0))
        for folder in SHELL_PATH.split(":"):
            p = os.path.join(folder, argv0)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise NotFound(f"shell.exec: {argv0!r} is not a program on the sandbox's PATH "
                       f"({SHELL_PATH})", program=argv0)

    def plan(self, caller: Caller, argv: list[str], exe: str, stdin: bytes | None,
             timeout_s: float, env: dict[str, str]) -> ShellRequest:
        """The complete request for an authorized call: its view of the user's files
        decided from the caller's capabilities and policy, nothing left to a provider."""
        cwd, home = caller.cwd, str(self._paths.home)
        # A process run without --cwd works in work/<pid> of the home: its own files,
        # bound as any cwd is; the rest of the home (the store, logs, other processes'
        # work) stays out of every command's view.
        own = _own(cwd, str(self._paths.work))
        ro, rw = shell_paths(caller.caps, caller.approved, caller.policy, cwd,
                             hidden=(home,), own=own)
        ro = [p for p in ro if _bindable(p)]
        rw = [p for p in rw if _bindable(p)]
        # A cwd no bind holds (the caller may not read it): the command runs in its own
        # private /tmp, where nothing of the user's files exists, rather than not at all
        # -- `shell:exec` is what a command needs (DESIGN); what it sees is the fs caps'.
        unseen = "" if any(_inside(cwd, p) for p in (*ro, *rw)) else (
            f"{cwd}: " + _why_unseen(caller, home, own))
        # Its owner, as the command's bind will find it: reached without following a
        # link (a link raced into the path would otherwise lend its target's owner).
        try:
            fd = open_no_symlinks(cwd)
        except SandboxError as e:
            raise NotFound(f"shell.exec: the process's cwd {cwd}: "
                           f"{e.message.rpartition(': ')[2]}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return ShellRequest(
            caller.pid, tuple(argv), exe, SHELL_TMP if unseen else cwd, stdin or b"",
            timeout_s, {"PATH": SHELL_PATH, "HOME": SHELL_TMP, "LANG": "C.UTF-8", **env},
            tuple(ro), tuple(rw), (st.st_uid, st.st_gid), unseen)

    def run(self, caller: Caller, argv: list[str], exe: str, stdin: bytes | None,
            timeout_s: float, env: dict[str, str]) -> Result:
        req = self.plan(caller, argv, exe, stdin, timeout_s, env)
        pending = Pending(caller.pid)
        started = time.monotonic()
        early: list[ShellResult] = []
        suspended = False

        wait = f"shell:{storable(argv[0], 80)}"

        def done(result: ShellResult) -> None:
            if suspended:
                self._finish(req, pending, started, result, wait)
            else:  # answered before start returned: no wait to show
                early.append(result)

        self.provider.start(req, done)
        if early:
            self._finish(req, pending, started, early[0], wait)
            return pending
        suspended = True
        return self._waits.suspend(caller.pid, pending, wait)

    def _finish(self, req: ShellRequest, pending: Pending, started: float,
                res: ShellResult, wait: str) -> None:
        if pending.done:
            return  # a provider that answered twice: the first answer stands
        out_total, err_total = res.totals()
        out_sha, err_sha = res.digests()
        truncated = max(out_total, len(res.stdout)) > MAX_OUTPUT or max(
            err_total, len(res.stderr)) > MAX_OUTPUT
        # Its host process was stopped (a daemon's SIGTERM, to be resumed later) or died
        # (a crash): the command was killed with it, it did not end by itself, so its
        # end is no answer. The call stays unsettled: attention (docs/durability.md).
        live = self._table.live.get(req.pid)
        interrupted = live is not None and (live.evicting or live.evicted)
        self._store.append_audit(
            req.pid, "shell.exec", f"shell:exec:{req.argv[0]}",
            "error" if res.error else "info",
            {**res.detail,
             "argv": [storable(a, 1024) for a in req.argv[:64]], "argc": len(req.argv),
             "exe": req.exe, "cwd": req.cwd, "uid": req.run_as[0],
             **({"cwd_unseen": req.unseen} if req.unseen else {}),
             "exit_code": res.exit_code, "timed_out": res.timed_out,
             "duration_s": round(time.monotonic() - started, 3), "truncated": truncated,
             "stdout_bytes": out_total, "stderr_bytes": err_total,
             "stdout_sha256": out_sha, "stderr_sha256": err_sha,
             **({"interrupted": True} if interrupted else {}),
             **({"error": res.error.message} if res.error else {})})
        if interrupted:
            self._waits.cut_off(req.pid, pending, wait)
            return
        if res.error is not None:
            pending.reject(res.error)
            return
        # The limit is the runtime's, whatever the provider kept.
        pending.resolve({
            "exit_code": res.exit_code,
            "stdout": output_text(res.stdout[:MAX_OUTPUT], max(out_total, len(res.stdout))),
            "stderr": output_text(res.stderr[:MAX_OUTPUT], max(err_total, len(res.stderr))),
            "truncated": truncated,
            "timed_out": res.timed_out,
        })


def _own(cwd: str, work: str) -> str | None:
    """The cwd when it is a process's own work/<pid> of the home, else None."""
    return cwd if _inside(cwd, work) and cwd != work else None


def _why_unseen(caller: Caller, home: str, own: str | None) -> str:
    """Why no bind holds the caller's cwd, in the terms the operator can act on."""
    cwd = caller.cwd
    if _inside(cwd, home) and own is None:
        return (f"it lies in the runtime's home {home}, which no command sees (only a "
                "process's own work/PID is bound): run it from another directory")
    if not _bindable(cwd):
        return "it is a symbolic link or does not exist (a command's tree binds real paths)"
    covering = [c for c in (*caller.caps, *caller.approved) if c.kind == "fs"
                and c.rights & {"read", "write", "delete"} and c.allows("fs", "read", cwd)]
    if not covering:
        return "it holds no fs capability that reads it (request fs:read:./** or narrower)"
    roots = {r for c in covering if (r := cap_root(c.resource)) is not None}
    if roots and all(r in _NEVER for r in roots):
        return (f"{covering[0]} would bind {sorted(roots)[0]}, which is never bound into a "
                "command's tree: grant the directory itself")
    return ("the policy does not allow reading it outright (a mount is not a call a human "
            "can approve: `allow` it, e.g. fs:read:./**)")


def _bindable(path: str) -> bool:
    """Exists, and names itself: a symlink as a bind root would show what it points to
    (anywhere on the host) under a name the capability was granted for."""
    try:
        return os.path.lexists(path) and os.path.realpath(path) == path
    except OSError:  # a component changed under realpath (EINVAL): an agent racing it
        return False
