"""The syscall table's machinery: parameter schemas, the registry, deferred replies.

Handlers live one family per module (fs.py, obj.py, proc.py, cap.py, tool.py), each
declaring its parameters beside it. A handler receives its family's services (a Protocol
beside it), the authenticated :class:`Caller` and validated arguments; it returns a JSON
value, a :class:`Reply` with blobs, or a :class:`Pending` to answer later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from agentlibos.errors import InvalidArgument, LibOSError, UnknownSyscall
from agentlibos.kernel.policy import DecisionMemo
from agentlibos.kernel.process import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from agentlibos.kernel.approvals import Grant
    from agentlibos.kernel.caps import CapPattern
    from agentlibos.kernel.image import AgentImage
    from agentlibos.kernel.policy import Decision, Policy, Request


class _Any:
    """Marker type: any JSON value."""


ANY: Final = _Any


@dataclass(frozen=True)
class Param:
    type: type | tuple[type, ...]
    required: bool = True
    default: Any = None
    max_len: int | None = None  # for str, list and dict
    minimum: int | None = None  # for int and float

    def check(self, call: str, name: str, value: Any, present: bool = True) -> Any:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if value is None:
            if self.required and present:  # given, as null (`read_text(None)`)
                want = ("a value, not null" if _Any in types
                        else " or ".join(t.__name__ for t in types) + ", got None")
                raise InvalidArgument(f"{call}: argument {name!r} must be {want}")
            if self.required:
                raise InvalidArgument(f"{call}: missing required argument {name!r}")
            return self.default
        if _Any not in types:
            ok = any(
                isinstance(value, t) and not (t in (int, float) and isinstance(value, bool))
                for t in types
            )
            if float in types and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                want = " or ".join(t.__name__ for t in types)
                raise InvalidArgument(
                    f"{call}: argument {name!r} must be {want}, got {type(value).__name__}"
                )
        if (isinstance(value, int) and not isinstance(value, bool)
                and not INT64_MIN <= value <= INT64_MAX):
            # Larger integers cannot be stored (SQLite raises OverflowError) or mean
            # anything as a pid, size or version: refused for every call, here.
            raise InvalidArgument(f"{call}: argument {name!r} is out of range "
                                  "(a 64-bit integer)")
        if (self.minimum is not None and isinstance(value, int | float)
                and value < self.minimum):
            raise InvalidArgument(f"{call}: argument {name!r} must be at least "
                                  f"{self.minimum}, not {value}")
        if (self.max_len is not None and isinstance(value, str | list | dict)
                and len(value) > self.max_len):
            raise InvalidArgument(f"{call}: argument {name!r} is longer than {self.max_len}")
        return value


@dataclass
class Caller:
    """The authenticated process a syscall comes from, as the handlers see it."""

    pid: int
    ppid: int | None
    root_pid: int
    cwd: str
    image: AgentImage
    # Replaced, never edited in place: the memo of decisions below is kept only while
    # this is the same object (a Sequence, so mypy refuses `caps[:] = ...`).
    caps: Sequence[CapPattern]
    policy: Policy
    # Set when the call arrives through a tool (JIT or builtin); audited with each check.
    via_tool: str | None = None
    # The capabilities that tool declares in image.toml (`caps = [...]`), when it
    # declares any: ``caps`` is then the process's narrowed to them, and a refusal says so.
    tool_caps: tuple[str, ...] | None = None
    # How this process's tree asks a human: "prompt" and "queue" wait in the queue (the
    # CLI of a prompting run answers there), "deny" refuses every ask at once.
    ask_mode: str = "queue"
    # Standing approvals (`approve --always`): requests within these, which an `ask`
    # rule would stop, are allowed for the rest of the process's life.
    approved: list[CapPattern] = field(default_factory=list)
    # A one-shot grant, set only on the re-run of the very call it was approved for.
    grant: Grant | None = None
    # Digest of the current call's arguments (set by the dispatch; binds grants).
    digest: str = ""
    # Set only on a call that a resumed process makes again while it was suspended: what
    # the wait had recorded (a sleep's deadline, an ask's id, an event cursor), so the
    # handler waits on for the same thing instead of starting over (docs/durability.md).
    resume: dict[str, Any] | None = None
    # The call's own journal sequence number, set by the dispatch only for the calls in
    # ``kernel.journal.SEQ_AWARE`` (a checkpoint marks its own position): others pay
    # nothing for it.
    seq: int | None = None
    # Decisions already made for this caps/policy/cwd (kernel.policy.DecisionMemo); not
    # an init field, so a `replace()`d caller (a tool's narrowed copy) starts its own.
    decided: DecisionMemo = field(default_factory=DecisionMemo, init=False, repr=False,
                                  compare=False)


@dataclass
class Reply:
    result: Any
    blobs: list[bytes] = field(default_factory=list)
    # sha256 hex of each blob, when the handler computed it off the loop (a large
    # read): the journal keeps large blobs by digest and need not hash them again.
    digests: list[str] | None = None


class Pending:
    """A reply that will be given later (``proc.wait`` on a live child, say).

    The broker binds it to the request's routing id; :meth:`resolve` or :meth:`reject`
    queue the reply, which is sent after the next group commit.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid  # the caller, so its pending replies can be dropped when it dies
        self._sink: Callable[[Reply | LibOSError], None] | None = None
        self._early: Reply | LibOSError | None = None
        self.done = False
        # Called once when the reply is decided (the supervisor marks the caller
        # running again).
        self.on_done: Callable[[], None] | None = None
        # Set by a handler whose wait is durable: what arms it again after an eviction or
        # a restart (journaled in the call's wait intent). None: not durable (an effect
        # running off the loop, say), so the process is never evicted while it pends.
        self.durable: dict[str, Any] | None = None

    def bind(self, sink: Callable[[Reply | LibOSError], None]) -> None:
        self._sink = sink
        if self._early is not None:
            sink(self._early)

    def resolve(self, result: Any, blobs: list[bytes] | None = None,
                digests: list[str] | None = None) -> None:
        self._finish(Reply(result, blobs or [], digests))

    def reject(self, error: LibOSError) -> None:
        self._finish(error)

    def _finish(self, outcome: Reply | LibOSError) -> None:
        if self.done:
            return
        self.done = True
        if self.on_done is not None:
            self.on_done()
        if self._sink is None:
            self._early = outcome
        else:
            self._sink(outcome)


Result = Any  # a JSON value, a Reply or a Pending


class Authorizer(Protocol):
    """The authority check every family uses (agentlibos.broker.authz.Authz)."""

    def decide(self, caller: Caller, request: Request) -> Decision: ...
    def authorize(self, caller: Caller, call: str, request: Request) -> None: ...
    def audit(
        self, caller: Caller, call: str, request: str, verdict: str, detail: dict[str, Any]
    ) -> None: ...


# A handler gets its family's services (a small Protocol declared beside the family,
# e.g. fs.FsServices), never the supervisor: an obj handler cannot spawn.
Handler = Callable[[Any, Caller, dict[str, Any], list[bytes]], Result]


@dataclass(frozen=True)
class Syscall:
    name: str
    params: dict[str, Param]
    handler: Handler
    doc: str
    tool_ok: bool  # may be wrapped as a builtin tool
    # May a JIT tool's code make it (libos.syscall)? Unless said otherwise, when it may
    # be a builtin tool.
    jit_ok: bool = True

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        unknown = set(args) - set(self.params)
        if unknown:
            raise InvalidArgument(
                f"{self.name}: unknown argument(s) {', '.join(sorted(unknown))} "
                f"(takes {', '.join(self.params) or 'none'})"
            )
        return {k: p.check(self.name, k, args.get(k), k in args)
                for k, p in self.params.items()}


REGISTRY: dict[str, Syscall] = {}


def syscall(
    name: str, /, *, tool_ok: bool = True, jit_ok: bool | None = None, **params: Param
) -> Callable[[Handler], Handler]:
    """Register a handler under ``name`` with its parameter schema."""

    def register(fn: Handler) -> Handler:
        if name in REGISTRY:
            raise RuntimeError(f"syscall {name} registered twice")
        REGISTRY[name] = Syscall(name, dict(params), fn, (fn.__doc__ or "").strip(), tool_ok,
                                 tool_ok if jit_ok is None else jit_ok)
        return fn

    return register


def lookup(name: str) -> Syscall:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownSyscall(f"no syscall named {name!r}") from None
