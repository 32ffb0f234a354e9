"""``fs.*``: file access, resolved against the caller's libOS cwd, checked on real paths.

The broker writes as the supervisor, so the agent's RLIMIT_FSIZE and cgroup do not bound
what it writes *through* the broker: every byte of ``fs.write`` is charged to the
caller's tree (the ``write_bytes`` quota, kernel/budgets.py) before the file is touched.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable
from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Reply, Result, syscall
from agentlibos.errors import InvalidArgument, LibOSError, NotFound, PermissionDenied
from agentlibos.kernel import budgets
from agentlibos.kernel.budgets import TreeQuota, Usage
from agentlibos.kernel.policy import Request
from agentlibos.kernel.text import storable
from agentlibos.providers.base import FileProvider
from agentlibos.providers.fs import MAX_PATH, Resolved, stat_dict


class TreeBudgets(Protocol):
    """The part of the store fs handlers may touch: charging the caller's tree."""

    def charge_tree(
        self, root_pid: int, charge: Usage, quota: TreeQuota | None = None
    ) -> Usage: ...


class FsServices(Protocol):
    """What fs handlers may use: the authority check, the file-system provider, and the
    per-tree write budget."""

    @property
    def authz(self) -> Authorizer: ...
    @property
    def fs(self) -> FileProvider: ...
    @property
    def budgets(self) -> TreeBudgets: ...
    @property
    def tree_quota(self) -> TreeQuota: ...

    # Run ``work`` off the loop (a large read of ``nbytes``) and answer the call when it
    # is done; a process that moves more than its byte rate waits first.
    def offload(self, pid: int, work: Callable[[], Reply], nbytes: int) -> Result: ...


_PATH = Param(str, max_len=MAX_PATH)
INLINE_READ_BYTES = 256 << 10
MAX_LIST = 10_000  # entries one fs.list returns at most
# A directory whose own size passes this (ext4: some 1,000-3,000 entries) is listed off
# the loop.
INLINE_LIST_BYTES = 64 << 10
MAX_RECURSIVE_DELETE = 100_000


def _check(svc: FsServices, caller: Caller, call: str, right: str, path: str,
           *, follow_last: bool = True) -> Resolved:
    try:
        r = svc.fs.resolve(caller.cwd, path, follow_last=follow_last)
    except LibOSError as e:
        # Refused before any capability is consulted (a name that is not text, a path
        # past the limit or naming the supervisor): audited like any other refusal.
        svc.authz.audit(caller, call, f"fs:{right}:{storable(path, 512)}", "deny",
                   {"reason": storable(e.message, 1024)})
        raise
    svc.authz.authorize(caller, call, Request("fs", right, r.real, r.aliases))
    return r


def _a_file(call: str, path: str) -> str:
    """A path with a trailing slash names a directory (a file's is ENOTDIR in POSIX,
    where realpath would quietly drop it): never what a read or a write takes."""
    if path.endswith("/"):
        raise InvalidArgument(f"{call}: {path!r} ends with '/': it names a directory, "
                              "not a file")
    return path


def _size(svc: FsServices, real: str) -> int:
    """How large ``real`` is, to decide whether it is read or listed off the loop; 0 when
    it cannot be told (the call itself then says what is wrong)."""
    try:
        return int(svc.fs.stat(real)["size"])
    except LibOSError:
        return 0


@syscall("fs.read", path=_PATH, max_bytes=Param(int, required=False, minimum=0))
def fs_read(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Result:
    """Read a whole file; the bytes come back as a blob. Needs fs:read."""
    r = _check(svc, caller, "fs.read", "read", _a_file("fs.read", args["path"]))
    real, limit = r.real, args["max_bytes"]

    def read() -> Reply:
        data = svc.fs.read(real, limit)
        big = len(data) > INLINE_READ_BYTES
        return Reply({"size": len(data), "path": real}, [data],
                     [hashlib.sha256(data).hexdigest()] if big else None)

    size = _size(svc, real)
    # A large file is read (and hashed, for the journal) off the loop: one agent's 16 MiB
    # reads must not hold every other agent's calls for the time they take.
    return svc.offload(caller.pid, read, size) if size > INLINE_READ_BYTES else read()


@syscall("fs.write", path=_PATH, append=Param(bool, required=False, default=False))
def fs_write(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Write (atomically replace) or append to a file from the first blob. Needs fs:write."""
    if len(blobs) != 1:
        raise InvalidArgument("fs.write: needs exactly one data blob")
    r = _check(svc, caller, "fs.write", "write", _a_file("fs.write", args["path"]))
    # Charged before the effect: a write that would break the tree's quota is refused
    # with the file untouched. A write that fails after the charge gives it back (the
    # provider writes nothing, or replaces atomically, when it raises a typed error).
    charge = budgets.write_charge(len(blobs[0]))
    svc.budgets.charge_tree(caller.root_pid, charge, svc.tree_quota)
    try:
        try:
            n = svc.fs.write(r.real, blobs[0], append=args["append"])
        except NotFound:
            # Its directory does not exist yet (`out/summary.txt` before `out/`): made as
            # `fs.mkdir(path, parents=True)` makes a path's parents, on the same check
            # (fs:write of the path itself), then the write.
            svc.fs.mkdir(posixpath.dirname(r.real), parents=True, exist_ok=True)
            n = svc.fs.write(r.real, blobs[0], append=args["append"])
    except LibOSError:
        svc.budgets.charge_tree(caller.root_pid, -charge)
        raise
    return {"size": n, "path": r.real}


@syscall("fs.list", path=Param(str, required=False, default=".", max_len=MAX_PATH),
         limit=Param(int, required=False, default=MAX_LIST))
def fs_list(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """List a directory: name, type, size, mtime, mode of each entry, the first ``limit``
    (at most 10,000) in name order. Needs fs:read."""
    limit = args["limit"]
    if not 1 <= limit <= MAX_LIST:
        # Not clamped: a caller comparing len() with the limit it gave would take a
        # clamped list for the whole directory.
        raise InvalidArgument(f"fs.list: limit must be from 1 to {MAX_LIST}, not {limit}")
    r = _check(svc, caller, "fs.list", "read", args["path"])
    real = r.real
    size = _size(svc, real)
    if size <= INLINE_LIST_BYTES:
        return svc.fs.listdir(real, limit)
    # A large directory is listed off the loop (a stat of each entry: 10,000 took
    # 0.2 s here, which every other agent's calls waited for), drawing on the byte rate.
    return svc.offload(caller.pid, lambda: Reply(svc.fs.listdir(real, limit)), size)


@syscall("fs.stat", path=_PATH)
def fs_stat(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Type, size, mtime and mode of one path (symlinks are not followed). Needs fs:read."""
    r = _check(svc, caller, "fs.stat", "read", args["path"], follow_last=False)
    if r.st is not None:  # taken by the provider from the very object it resolved
        return stat_dict(r.real.rsplit("/", 1)[-1] or "/", r.st)
    return svc.fs.stat(r.real)


@syscall("fs.mkdir", path=_PATH, parents=Param(bool, required=False, default=False),
         exist_ok=Param(bool, required=False, default=False))
def fs_mkdir(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Create a directory. Needs fs:write."""
    r = _check(svc, caller, "fs.mkdir", "write", args["path"])
    svc.fs.mkdir(r.real, parents=args["parents"], exist_ok=args["exist_ok"])
    return {"path": r.real}


@syscall("fs.delete", path=_PATH, recursive=Param(bool, required=False, default=False))
def fs_delete(svc: FsServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Delete a file, an empty directory, or (recursive) a tree. Needs fs:delete."""
    # A symlink is deleted itself, never its target: check and act on the link's path.
    r = _check(svc, caller, "fs.delete", "delete", args["path"], follow_last=False)
    if args["recursive"]:
        # The root being deletable says nothing about what lies below it (a policy may
        # deny **/.env, a capability may cover only *.txt): check every entry first.
        try:
            below = svc.fs.walk(r.real, limit=MAX_RECURSIVE_DELETE)
        except PermissionDenied as e:  # it holds what no call may delete (StateGuard)
            svc.authz.audit(caller, "fs.delete", f"fs:delete:{storable(r.real, 512)}",
                            "deny", {"reason": storable(e.message, 1024)})
            raise
        for path in below:
            d = svc.authz.decide(caller, Request("fs", "delete", path))
            if not d.allowed:
                svc.authz.authorize(caller, "fs.delete", Request("fs", "delete", path))
    svc.fs.delete(r.real, recursive=args["recursive"])
    return {"path": r.real}
