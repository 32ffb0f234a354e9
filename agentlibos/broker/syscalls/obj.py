"""``obj.*``: typed, versioned, namespace-local Object Memory.

``self`` is the caller's own namespace ``proc/<pid>``, always usable (like its own
memory); every other namespace needs an ``obj`` capability. Values are JSON; each object
carries a type tag that every later put must repeat (change it by deleting first), and
a version that ``expect_version`` compares-and-sets (``0`` means "must not exist yet").

Two quotas bound a put: the namespace's (:class:`ObjectQuota`), and the caller's whole
tree's (:class:`TreeQuota`, kernel/budgets.py), which holds however many namespaces the
tree writes to. The store checks both and charges the tree in the put's own
transaction; a refused put changes nothing, and a delete gives the bytes back.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Protocol

from agentlibos.broker.syscalls.base import ANY, Authorizer, Caller, Param, syscall
from agentlibos.errors import InvalidArgument, LimitExceeded, NoSuchProcess
from agentlibos.kernel.budgets import TreeQuota
from agentlibos.kernel.policy import Request
from agentlibos.kernel.text import is_text
from agentlibos.store import ObjectQuota, ObjectStore


class ObjServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def objects(self) -> ObjectStore: ...
    @property
    def object_quota(self) -> ObjectQuota: ...
    @property
    def tree_quota(self) -> TreeQuota: ...
    def tree_of(self, pid: int) -> int | None:
        """The root pid of process ``pid``'s tree; None if there is no such process."""
        ...


NS_RE: Final = re.compile(r"^[a-z0-9_][a-z0-9_.-]*(/[a-z0-9_][a-z0-9_.-]*)*$")
TYPE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_NAME: Final = 256
MAX_VALUE_BYTES: Final = 1 << 20

# Builtin type tags check the JSON value's shape; any other tag is the agent's own
# name for a structure and only has to stay the same across puts.
_PRIMITIVE: Final[dict[str, tuple[type, ...]]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "null": (type(None),),
}


def _own_ns(caller: Caller) -> str:
    return f"proc/{caller.pid}"


def _ns(svc: ObjServices, caller: Caller, call: str, ns: str, right: str) -> str:
    """Resolve ``ns`` and check the caller may use it; return the real namespace."""
    if ns == "self" or ns == _own_ns(caller):
        real = _own_ns(caller)
        svc.authz.audit(caller, call, f"obj:{right}:{real}", "allow",
                   {"reason": "a process's own namespace"})
        return real
    if len(ns) > 128 or not NS_RE.match(ns) or ".." in ns.split("/"):
        raise InvalidArgument(
            f"{call}: namespace {ns!r} must be 'self' or lower-case path segments like "
            "'shared/plans'"
        )
    head, _, rest = ns.partition("/")
    if head == "self":
        raise InvalidArgument(f"{call}: 'self' is a whole namespace; it has no parts ({ns!r})")
    if head == "proc":
        # A process's namespace is its memory: reachable from its own tree only, as the
        # process itself is (other trees are invisible, not even their pids leak); and
        # only once the process exists, so no one fills a future pid's memory ahead.
        pid = rest.partition("/")[0]
        if not pid.isdigit() or len(pid) > 18:
            raise InvalidArgument(f"{call}: namespace {ns!r}: 'proc/' is followed by a pid")
        if svc.tree_of(int(pid)) != caller.root_pid:
            raise NoSuchProcess(f"{call}: namespace {ns!r}: no process {pid} in this "
                                "process tree")
    svc.authz.authorize(caller, call, Request("obj", right, ns))
    return ns


def _name(call: str, name: str) -> str:
    if not name or len(name) > MAX_NAME or "\x00" in name or not is_text(name):
        raise InvalidArgument(
            f"{call}: object name must be 1-{MAX_NAME} characters of valid text, no NUL")
    return name


@syscall(
    "obj.put",
    name=Param(str),
    value=Param(ANY, required=False),
    type=Param(str, required=False, default="json"),
    ns=Param(str, required=False, default="self"),
    expect_version=Param(int, required=False, minimum=0),
)
def obj_put(svc: ObjServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Store a JSON value under a name; returns its stat (type, version, size)."""
    name = _name("obj.put", args["name"])
    type_ = args["type"]
    if not TYPE_RE.match(type_):
        raise InvalidArgument(f"obj.put: type tag {type_!r} must be an identifier")
    value = args["value"]
    want = _PRIMITIVE.get(type_)
    if want is not None and (
        not isinstance(value, want) or (type_ in ("int", "float") and isinstance(value, bool))
    ):
        raise InvalidArgument(
            f"obj.put: value for {name!r} is a {type(value).__name__}, not a {type_}"
        )
    # Its size is its UTF-8 size, as stored (not 6 bytes for each CJK character).
    value_json = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    size = len(value_json.encode())
    if size > MAX_VALUE_BYTES:
        raise LimitExceeded(f"obj.put: value of {size} bytes exceeds {MAX_VALUE_BYTES}")
    ns = _ns(svc, caller, "obj.put", args["ns"], "write")
    # Charged to the caller's tree, whichever namespace it writes: the per-namespace
    # quota alone let one tree spread without bound over namespaces it may write.
    rec = svc.objects.put_object(ns, name, type_, value_json, caller.pid,
                                 args["expect_version"], svc.object_quota,
                                 root_pid=caller.root_pid, tree_quota=svc.tree_quota)
    return rec.stat()


@syscall("obj.get", name=Param(str), ns=Param(str, required=False, default="self"))
def obj_get(svc: ObjServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Fetch an object: its value, type and version."""
    name = _name("obj.get", args["name"])
    ns = _ns(svc, caller, "obj.get", args["ns"], "read")
    rec = svc.objects.get_object(ns, name)
    return {**rec.stat(), "value": rec.value}


@syscall("obj.stat", name=Param(str), ns=Param(str, required=False, default="self"))
def obj_stat(svc: ObjServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Type, version, size and times of an object, without its value."""
    name = _name("obj.stat", args["name"])
    ns = _ns(svc, caller, "obj.stat", args["ns"], "read")
    return svc.objects.get_object(ns, name).stat()


@syscall(
    "obj.list",
    ns=Param(str, required=False, default="self"),
    prefix=Param(str, required=False, default="", max_len=MAX_NAME),
    limit=Param(int, required=False, default=1000),
)
def obj_list(svc: ObjServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Stats of the objects in a namespace whose names start with ``prefix``."""
    ns = _ns(svc, caller, "obj.list", args["ns"], "read")
    limit = max(1, min(args["limit"], 10_000))
    return [r.stat() for r in svc.objects.list_objects(ns, args["prefix"], limit)]


@syscall(
    "obj.delete",
    name=Param(str),
    ns=Param(str, required=False, default="self"),
    expect_version=Param(int, required=False, minimum=0),
)
def obj_delete(svc: ObjServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]) -> Any:
    """Delete an object (optionally only if it is still at ``expect_version``)."""
    name = _name("obj.delete", args["name"])
    ns = _ns(svc, caller, "obj.delete", args["ns"], "write")
    svc.objects.delete_object(ns, name, args["expect_version"])
    return {"deleted": name, "ns": ns}
