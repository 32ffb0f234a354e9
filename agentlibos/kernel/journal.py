"""The syscall journal's record, the digest that identifies a call, and the kind of
effect each call has. Pure: no I/O.

For each process the broker journals every syscall in order: its sequence number, its
name, a digest of its arguments and its result. Durable execution replays from it: a
resumed process's call at ``seq`` must have the same ``call`` and ``digest`` as the
journaled one, or the process has diverged (docs/durability.md). The store keeps it
(``Store.journal_append`` and friends; see docs/store.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.audit import canonical_json

JournalStatus = Literal["ok", "error", "intent"]
"""``ok``/``error``: the call's reply (settled). ``intent``: an external effect (a file
write, a shell command, a request) recorded *before* it acts, settled to ``ok`` or
``error`` after; one left as ``intent`` after a crash may or may not have happened."""

STATUSES: Final[frozenset[str]] = frozenset(get_args(JournalStatus))
SETTLED: Final[frozenset[str]] = frozenset({"ok", "error"})


@dataclass(frozen=True)
class JournalEntry:
    """One journaled syscall of process ``pid``.

    ``result`` is JSON text: the reply's result for ``ok``, the error as the wire encodes
    it (:func:`agentlibos.errors.to_wire`) for ``error``. For an ``intent`` it is what
    the effect is about to do (shown to the operator if it never settles), or ``None``;
    settling replaces it with the outcome.
    """

    pid: int
    seq: int
    call: str
    digest: str
    status: JournalStatus
    result: str | None

    def __post_init__(self) -> None:
        # A bad entry is a broker bug, not an agent's mistake: fail loudly, before SQL.
        if self.status not in STATUSES:
            raise ValueError(f"journal status must be one of {sorted(STATUSES)}, "
                             f"not {self.status!r}")
        if self.seq < 1:
            raise ValueError(f"journal sequence numbers start at 1, not {self.seq}")
        if self.status in SETTLED and self.result is None:
            raise ValueError(f"a settled ({self.status}) journal entry needs a result")


def args_digest(call: str, args: dict[str, Any], blobs: Sequence[bytes] = ()) -> str:
    """sha256 hex identifying a call: its name, its arguments and its binary payloads.

    Canonical JSON (sorted keys, no spaces) makes it independent of dict order and
    stable across runs and hosts; blobs enter by their own sha256, in order, so a large
    payload is hashed once and the digest never holds its bytes. Arguments must be JSON
    values (they come off the wire).
    """
    doc = {
        "call": call,
        "args": args,
        "blobs": [hashlib.sha256(b).hexdigest() for b in blobs],
    }
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


def result_digest(result: Any) -> tuple[int, str]:
    """(size, sha256 hex) of a reply's result as canonical JSON: how a journal that kept
    an answer by digest (journal_bytes) identifies it, and compares a replayed read's."""
    text = json.dumps(result, sort_keys=True, separators=(",", ":"), default=str)
    return len(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------ effect kinds

EffectKind = Literal["read", "store", "redo", "once"]
"""What a call does to the world, which decides how a crash in the middle is settled.

``read``: nothing (replay hands back the journaled answer). ``store``: an effect in the
store (objects, spawns, events, grants), committed in the same transaction as its journal
entry, so it happened exactly when its entry exists. ``redo``: an external effect that
may safely happen twice (a whole-file write, mkdir, delete, a GET, a model call): a crash
before its entry committed just runs it again. ``once``: an external effect that must not
happen twice (an append, a shell command, a POST, a tool that may do any of these): it
writes an *intent* and commits it before it acts; an intent a crash left unsettled stops
the process in state ``attention`` until the operator resolves it.
"""

# Policy as data. A call not named here is "once": the conservative default.
_KINDS: Final[dict[str, EffectKind]] = {
    "cap.drop": "store", "cap.list": "read",
    "clock.now": "read", "clock.random": "read", "clock.sleep": "read",
    "event.post": "store", "event.wait": "read",
    "fs.delete": "redo", "fs.list": "read", "fs.mkdir": "redo", "fs.read": "read",
    "fs.stat": "read", "fs.write": "redo",
    "human.ask": "store",
    "image.register": "redo", "jit.register": "redo",
    "model.chat": "redo", "net.fetch": "redo",
    "obj.delete": "store", "obj.get": "read", "obj.list": "read", "obj.put": "store",
    "obj.stat": "read",
    "proc.checkpoint": "store", "proc.children": "read", "proc.getpid": "read",
    "proc.journal": "read", "proc.kill": "store", "proc.spawn": "store", "proc.wait": "read",
    "shell.exec": "once", "tool.call": "once",
}
# Reads that, made again, give the same answer unless the world they read changed: past
# a tree's journal_bytes (kernel/budgets.py), their large answers are kept by digest and
# a replay makes them again and compares. Not event.wait or proc.wait (they would wait
# again), not clock.* (another answer each time).
REREADABLE: Final = frozenset({"fs.read", "fs.list", "fs.stat", "obj.get", "obj.list",
                               "obj.stat", "cap.list", "proc.children"})

# Calls that act on nothing and whose answers cannot be made again on a resume: once a
# tree has spent its journal_bytes they are refused rather than kept whole (a loop of
# `clock.random(4096)`, which needs no capability, grew the journal by 45 MB a second).
REFUSED_WHEN_SPENT: Final = frozenset({"clock.random"})

# HTTP methods that are sent again after a crash: the safe ones only. PUT and DELETE are
# idempotent by the RFC, but servers do not all honour it, and a second send is the
# operator's call (`resolve --retry`), not ours.
_REDO_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

# Calls the SDK sends without a sequence number: they are the handshake and the
# goodbye (acting on the live host process, never replayed) or never change.
# proc.journal is how a resumed process fetches the journal it replays.
UNJOURNALED: Final = frozenset({"proc.getpid", "proc.start", "proc.exit", "proc.journal"})

# Calls besides pure reads whose answer may leave before the turn's COMMIT statement
# (Broker.flush_reads): the handshake. Its only write (the process is running, and
# when) changes nothing an agent can see, and the agent can make use of its answer
# only through another call, served after that commit; on a spawn's path this saves
# the child the commit's wait (docs/store.md, "When a reply leaves").
EARLY_ANSWER: Final = frozenset({"proc.start"})

# Calls whose handler needs its own sequence number (``Caller.seq``): a checkpoint marks
# the journal position of the very call that makes it, so a restore replays up to and
# including it and the restored process gets the same answer.
SEQ_AWARE: Final = frozenset({"proc.checkpoint"})


def effect_kind(call: str, args: dict[str, Any]) -> EffectKind:
    kind = _KINDS.get(call, "once")
    if call == "fs.write" and args.get("append"):
        return "once"
    if call == "net.fetch":
        method = args.get("method") or "GET"
        if not isinstance(method, str) or method.upper() not in _REDO_METHODS:
            return "once"
    return kind


# ------------------------------------------------------------------------ intents

def once_intent(request: str | None, approval: int | None = None) -> str:
    """The result text of a ``once`` intent: what the operator is shown if it never settles,
    and the approval it runs under, if any (the audit links an unsettled effect to it)."""
    doc: dict[str, Any] = {"effect": "once", "request": request}
    if approval is not None:
        doc["approval"] = approval
    return json.dumps(doc)


def wait_intent(call: str, args: dict[str, Any], state: dict[str, Any]) -> str:
    """The result text of a *wait* intent: a call suspended on something durable (a sleep,
    an event, a human, a child). It holds the call's arguments and what the wait needs to
    be armed again (a sleep's deadline, an ask's id, an event cursor), so a supervisor
    that restarts, or a process that was evicted, waits on for the same thing."""
    return json.dumps({"effect": "wait", "call": call, "args": args, "state": state})


def parse_intent(result: str | None) -> dict[str, Any]:
    """An intent entry's result as a dict (``{"effect": "once"|"wait", ...}``)."""
    if not result:
        return {"effect": "once", "request": None}
    try:
        doc = json.loads(result)
    except ValueError:
        return {"effect": "once", "request": None}
    return doc if isinstance(doc, dict) else {"effect": "once", "request": None}


def describe_request(call: str, args: dict[str, Any], cwd: str) -> str:
    """What a ``once`` effect was about to do, for `attention`: a capability string
    (``fs:write:/abs/path``, ``shell:exec:git``, ``net:fetch:URL``, ``jit:invoke:NAME``),
    the shape the approval queue shows.

    Not a capability check (the broker's resolved request is decided later, inside the
    handler): what the agent asked for, a relative path resolved against ``cwd``."""
    if call == "shell.exec":
        argv = args.get("argv")
        head = argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) else "?"
        return f"shell:exec:{head}"
    if call == "fs.write":
        path = args.get("path")
        where = os.path.normpath(os.path.join(cwd, path)) if isinstance(path, str) else "?"
        return f"fs:write:{where}"
    if call == "net.fetch":
        return f"net:fetch:{args.get('url')}"
    if call == "tool.call":
        return f"jit:invoke:{args.get('name')}"
    return call


# ------------------------------------------------------------------------ checkpoints

# A checkpoint's name: `agentlibos restore` takes an id (digits) or a name, so a name is
# never all digits; it is printed by `checkpoint` and `audit`, so it is plain text.
_CHECKPOINT_NAME: Final = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def check_checkpoint_name(name: str | None) -> str | None:
    """``name`` if it may name a checkpoint (None: unnamed); else InvalidArgument."""
    if name is None:
        return None
    if not _CHECKPOINT_NAME.match(name) or name.isdigit():
        raise InvalidArgument(
            f"checkpoint name {name!r}: 1 to 128 of letters, digits and _.:@+- , and not "
            "all digits (`restore` takes an id or a name)")
    return name
