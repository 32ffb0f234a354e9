"""The one entry for every syscall, whether an agent sent it or a tool made it.

decode and authenticate happen at the door (``server.py`` for agents, the JIT worker
for tools); from there every call takes the same path::

    validate -> handler in a savepoint (it authorizes through broker.authz, which audits)
             -> a value: reply now        -> journal
             -> a Pending: suspend; reply when it resolves -> journal

Two hooks serve every handler. *Suspend*: a handler that must wait returns a
:class:`Pending` (bound, by the supervisor's waits service, to the wait it stands for:
``proc:7`` now, approvals, events and sleeps later); the reply goes out whenever it
resolves, and nothing else waits meanwhile. *Journal*: each top-level call of a process
carries a per-process sequence number; its name, argument digest and outcome are
journaled in the same store transaction as its audit records (the loop's group commit),
so durable execution can replay it.

This is the only place an exception becomes a reply: typed errors pass as they are;
anything else is a bug, logged, audited and answered as InternalError with the call's
writes rolled back, and the broker goes on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from agentlibos.broker.crashpoints import crash_at
from agentlibos.broker.replay import Answer, Replayer
from agentlibos.broker.syscalls import FAMILY_OF_PREFIX, Caller, Pending, Reply, Result, lookup
from agentlibos.errors import (
    InternalError,
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
)
from agentlibos.kernel.approvals import Grant, NeedsApproval
from agentlibos.kernel.journal import (
    REFUSED_WHEN_SPENT,
    SEQ_AWARE,
    args_digest,
    describe_request,
    effect_kind,
    once_intent,
    result_digest,
    wait_intent,
)

log = logging.getLogger(__name__)

Outcome = Reply | LibOSError
Sink = Callable[[Outcome], None]


class Journal(Protocol):
    def last_seq(self, pid: int) -> int: ...
    def record(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
               blobs: list[bytes], outcome: Outcome) -> None: ...
    def intent(self, pid: int, seq: int, call: str, digest: str, text: str, *,
               durable: bool, hold: bool = False) -> None: ...
    def tool_acts(self) -> None: ...
    def spent(self, root: int) -> int | None: ...


class ApprovalQueue(Protocol):
    """Where an `ask` waits (agentlibos.supervisor.approvals)."""

    def request(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
                need: NeedsApproval, digest: str,
                decided: Callable[[Grant | LibOSError], None]) -> int: ...
    def reattach(self, pid: int, ask_id: int,
                 decided: Callable[[Grant | LibOSError], None]) -> None: ...
    def regrant(self, pid: int, ask_id: int, digest: str) -> Grant | None: ...


class Dispatcher:
    def __init__(
        self,
        savepoint: Callable[[], AbstractContextManager[Any]],
        services: Mapping[str, object] | None = None,
        *,
        journal: Journal | None = None,
        on_internal_error: Callable[[Caller, str, BaseException], None] | None = None,
        on_refused: Callable[[Caller, str, LibOSError], None] | None = None,
    ) -> None:
        self._savepoint = savepoint
        self._services = dict(services or {})
        self.journal = journal
        self._on_internal_error = on_internal_error
        self._on_refused = on_refused
        self.approvals: ApprovalQueue | None = None
        self._next_seq: dict[int, int] = {}
        # Set by the supervisor for durable execution: answers a resumed process's calls
        # from its journal (broker/replay.py).
        self.replay: Replayer | None = None
        # Calls whose intent may commit with the turn instead of at once, when the
        # predicate says so for these arguments (docs/durability.md, "JIT tools").
        self.intent_with_turn: dict[str, Callable[[Caller, dict[str, Any]], bool]] = {}

    def add_services(self, family: str, services: object) -> None:
        """Wire ``family``'s services (a tool family needs the dispatcher itself)."""
        self._services[family] = services

    def services_for(self, call: str) -> object:
        family = FAMILY_OF_PREFIX.get(call.split(".", 1)[0])
        if family is None or family not in self._services:
            lookup(call)  # raises UnknownSyscall for a name that is not in the table
            raise InternalError(f"{call}: no services are wired for its family")
        return self._services[family]

    # ------------------------------------------------------------------- sequence

    def next_seq(self, pid: int, seq: int | None) -> int | None:
        """Check the client's sequence number for ``pid``; the number to journal under.

        The SDK numbers its calls 1, 2, 3...; a number out of order is a replayed or
        forged frame, refused before anything runs. A call without a number (a raw
        client, not the SDK) is served but not journaled: it takes no number, so the
        SDK's numbering stays whole.
        """
        if seq is None:
            return None
        expected = self._next_seq.get(pid)
        if expected is None:
            expected = (self.journal.last_seq(pid) if self.journal else 0) + 1
        if seq != expected and not (
                self.replay is not None and expected < seq <= self.replay.last(pid) + 1):
            # A resumed process's runtime answers replayed calls from the journal it
            # fetched and may skip ahead within it: only its own past answers are skipped.
            raise ProtocolError(f"call out of sequence for pid {pid}: expected {expected}, "
                                f"got {seq}")
        expected = seq
        self._next_seq[pid] = expected + 1
        return expected

    def forget(self, pid: int) -> None:
        self._next_seq.pop(pid, None)
        if self.replay is not None:
            self.replay.forget(pid)

    def begin_replay(self, pid: int) -> int:
        """``pid`` starts again (a resume): its calls number from 1 and replay the journal."""
        self.forget(pid)
        self._next_seq[pid] = 1
        return self.replay.begin(pid) if self.replay is not None else 0

    # ---------------------------------------------------------------------- calls

    def run(self, caller: Caller, call: str, args: dict[str, Any],
            blobs: list[bytes]) -> Result:
        """Validate and run one call inside the current savepoint; raises typed errors.

        Used directly for a call nested in another (a builtin tool): it shares its
        parent's savepoint and journal entry.
        """
        sc = lookup(call)
        services = self.services_for(call)
        return sc.handler(services, caller, sc.validate(args), blobs)

    def submit(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
               sink: Sink, *, seq: int | None = None,
               refused: LibOSError | None = None, audit_refusal: bool = True) -> None:
        """Run one call and hand its outcome -- now, or for a Pending later -- to ``sink``.

        ``seq`` (a top-level call of the process) journals the outcome; a tool's
        syscalls pass None: the tool call that made them is the journaled unit.
        ``refused``: the door already judged an argument invalid; the call is answered
        with that error, audited and journaled like any other refusal, and runs nothing.
        """
        if seq is not None and self.journal is not None:
            if self.replay is not None and refused is None:
                answer = self.replay.check(caller.pid, seq, call, args, blobs)
                if answer.kind in ("journaled", "diverged"):
                    assert answer.outcome is not None
                    sink(answer.outcome)  # already journaled (or never to be)
                    return
                if answer.kind == "recheck":
                    self._recheck(caller, seq, call, args, blobs, sink, answer)
                    return
                if answer.kind == "resume":
                    caller = replace(caller, resume=answer.resume)
            journal = self.journal
            if refused is None and call in REFUSED_WHEN_SPENT:
                quota = journal.spent(caller.root_pid)
                if quota is not None:
                    refused = LimitExceeded(
                        f"{call}: this tree has spent its journal_bytes ({quota} bytes), and "
                        "this answer could not be made again on a resume, so it is not "
                        "given ([limits] journal_bytes)")
            outer = sink
            acts = effect_kind(call, args) in ("redo", "once")

            def sink(outcome: Outcome) -> None:
                if acts:
                    crash_at("after-effect", call)
                journal.record(caller, seq, call, args, blobs, outcome)
                outer(outcome)

        if seq is None and caller.via_tool and self.journal is not None:
            # A JIT tool's syscall (builtin tools' run inside their call, not here): the
            # intent of the call running the tool is on disk before anything it asks acts.
            self.journal.tool_acts()
        if seq is not None and call in SEQ_AWARE:
            caller = replace(caller, seq=seq)
        if refused is not None:
            if self._on_refused is not None and audit_refusal:
                self._on_refused(caller, call, refused)
            sink(refused)
            return
        self._attempt(caller, call, args, blobs, sink, seq)

    def submit_rearmed(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
                       state: dict[str, Any], done: Sink) -> None:
        """Make again, without its process, the call it was suspended in when the last
        supervisor stopped (its wait intent): the outcome settles the intent."""
        assert self.journal is not None
        journal = self.journal
        caller = replace(caller, resume=state)

        def sink(outcome: Outcome) -> None:
            journal.record(caller, seq, call, args, [], outcome)
            done(outcome)

        self._attempt(caller, call, args, [], sink, seq)

    def _recheck(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
                 blobs: list[bytes], sink: Sink, kept: Answer) -> None:
        """Replay a read whose answer the journal kept by digest (its large blobs, or all
        of it: journal_bytes): read again, and the answer must be the same one, or the
        process has diverged."""
        def check(outcome: Outcome) -> None:
            if isinstance(outcome, Reply):
                got = tuple(hashlib.sha256(b).hexdigest() for b in outcome.blobs)
                if got != kept.expected_digests or (
                        kept.expected_result is not None
                        and result_digest(outcome.result)[1] != kept.expected_result):
                    detail = (f"call {seq} ({call}) read another answer than it did the first "
                              "time")
                    if self.replay is not None and self.replay.on_diverged is not None:
                        self.replay.on_diverged(caller.pid, seq, detail)
                    outcome = ProtocolError(f"diverged from the journal: {detail}")
            sink(outcome)

        self._attempt(caller, call, args, blobs, check, None)

    def _attempt(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
                 sink: Sink, seq: int | None = None) -> None:
        if seq is not None and self.journal is not None and caller.resume is not None \
                and "approval" in caller.resume and self.approvals is not None:
            # Resumed while its call waited for a human: wait on for that same ask.
            ask_id = int(caller.resume["approval"])
            self.approvals.reattach(caller.pid, ask_id, self._decided(
                replace(caller, resume=None), call, args, blobs, sink, seq))
            return
        if seq is not None and caller.resume is not None and "approved" in caller.resume \
                and caller.grant is None and self.approvals is not None:
            # Made again after a restart or an eviction while it waited (a question, a
            # sleep) under a one-shot approval it had used: it runs under that approval
            # again, not a new ask, so that it waits on for the same thing.
            grant = self.approvals.regrant(caller.pid, int(caller.resume["approved"]),
                                           _digest(call, args, blobs))
            if grant is not None:
                caller = replace(caller, grant=grant, digest=grant.digest)
        granted = caller.grant.ask_id if caller.grant is not None else None
        with_turn = False
        if seq is not None and self.journal is not None and \
                effect_kind(call, args) == "once":
            # On disk before the effect acts: a crash past here leaves an intent that
            # recovery will not redo blindly (docs/durability.md) -- unless every effect
            # of the call comes back through the broker in a later turn (a JIT tool's):
            # that intent is made once the call is started (the tool at work meanwhile)
            # and held until the tool could act (StoreJournal.tool_acts).
            later = self.intent_with_turn.get(call)
            with_turn = later is not None and later(caller, args)
            if not with_turn:
                self._once_intent(caller, seq, call, args, blobs, granted, durable=True)
        elif seq is not None and effect_kind(call, args) == "redo":
            crash_at("before-effect", call)
        try:
            with self._savepoint():
                result = self.run(caller, call, args, blobs)
        except NeedsApproval as need:
            # Nothing has acted yet (authority comes before effects; the savepoint
            # dropped what the handler wrote): wait for a human, then run it again.
            self._ask(caller, call, args, blobs, need, sink, seq)
            return
        except LibOSError as e:
            sink(e)
            return
        except Exception as e:  # a handler bug must not take the broker down
            log.exception("syscall %s from pid %d failed", call, caller.pid)
            if self._on_internal_error is not None:
                self._on_internal_error(caller, call, e)
            sink(InternalError(f"{call}: internal error ({type(e).__name__}); "
                               "the supervisor log has the details"))
            return
        if with_turn and seq is not None:
            self._once_intent(caller, seq, call, args, blobs, granted, durable=False)
        if isinstance(result, Pending):
            if seq is not None and self.journal is not None and result.durable is not None:
                state = result.durable
                if granted is not None and caller.grant is None:
                    # It used its one-shot approval (authz spent it) and now waits: the
                    # wait's state names the approval, for a restart (above).
                    state = {**state, "approved": granted}
                self.journal.intent(caller.pid, seq, call, _digest(call, args, blobs),
                                    wait_intent(call, args, state), durable=False)
            result.bind(sink)
        elif isinstance(result, Reply):
            sink(result)
        else:
            sink(Reply(result))

    def _once_intent(self, caller: Caller, seq: int, call: str, args: dict[str, Any],
                     blobs: list[bytes], approval: int | None, *, durable: bool) -> None:
        assert self.journal is not None
        self.journal.intent(caller.pid, seq, call, _digest(call, args, blobs),
                            once_intent(describe_request(call, args, caller.cwd), approval),
                            durable=durable, hold=not durable)
        crash_at("before-effect", call)

    def _ask(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
             need: NeedsApproval, sink: Sink, seq: int | None = None) -> None:
        """Suspend the call on a new approval; on approval run it again holding a
        one-shot grant bound to this request and these arguments, else refuse it."""
        if self.approvals is None:
            sink(PermissionDenied(f"{call}: {need.request} needs a human's approval "
                                  f"({need.decision.reason}), but no human channel is "
                                  "available", request=str(need.request)))
            return
        try:
            digest = args_digest(call, args, blobs)
        except (ValueError, TypeError, RecursionError):
            sink(InvalidArgument(f"{call}: arguments that cannot be shown to a human"))
            return

        try:
            ask_id = self.approvals.request(caller, call, args, blobs, need, digest,
                                            self._decided(caller, call, args, blobs, sink, seq))
        except LibOSError as e:
            sink(e)
            return
        if seq is not None and self.journal is not None:
            self.journal.intent(caller.pid, seq, call, digest,
                                wait_intent(call, args, {"approval": ask_id}), durable=False)

    def _decided(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
                 sink: Sink, seq: int | None) -> Callable[[Grant | LibOSError], None]:
        """What an answered ask does: run the call again holding the grant, or refuse."""
        def decided(outcome: Grant | LibOSError) -> None:
            if isinstance(outcome, LibOSError):
                sink(outcome)
            else:
                self._attempt(replace(caller, grant=outcome, digest=outcome.digest), call,
                              args, blobs, sink, seq)

        return decided


def _digest(call: str, args: dict[str, Any], blobs: list[bytes]) -> str:
    try:
        return args_digest(call, args, blobs)
    except (ValueError, TypeError, RecursionError):
        return args_digest(call, {"unencodable": True})
