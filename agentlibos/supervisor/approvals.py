"""The human queue: approvals of `ask` decisions and agents' questions, durable in the store.

An `ask` suspends its call (the process shows ``waiting`` on ``approval:ID``) until the
operator answers through the control channel -- ``agentlibos approve/deny``, the console,
or the prompt of the run that started the tree. Approve once: the call runs again with a
one-shot grant bound to its request and argument digest. ``--always``: the request joins
the process's standing approvals. Deny: ``PermissionDenied`` carrying the reason. No
answer within ``[approvals] timeout``: ``PermissionDenied("approval timed out")``. Every
step is an audit record carrying the approval id.

The queue's changes reach watchers in one place, :meth:`Approvals._changed`: the
``version`` counter the console and a prompting run poll through the control channel,
and the embedder's human channel (``providers/human.py``), which is told of each item
opened and closed and answers through the same methods the control operations call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from agentlibos.broker.syscalls import Caller, Pending
from agentlibos.errors import LibOSError, NotFound, PermissionDenied
from agentlibos.kernel.approvals import (
    AskRecord,
    Grant,
    NeedsApproval,
    check_question,
    summary_of,
)
from agentlibos.kernel.caps import escape, parse_cap
from agentlibos.kernel.journal import args_digest
from agentlibos.kernel.text import storable
from agentlibos.providers.human import HumanChannel
from agentlibos.store import Store
from agentlibos.supervisor.decisions import (
    EXPIRED_REASON,
    expire_asks_of,
    record_answer,
    record_approve,
    record_deny,
    record_expire,
)
from agentlibos.supervisor.loop import Loop, Timer
from agentlibos.supervisor.processes import ProcessTable
from agentlibos.supervisor.waits import Waits

log = logging.getLogger(__name__)


Decided = Callable[[Grant | LibOSError], None]


@dataclass
class _Waiting:
    marker: Pending  # keeps the process `waiting` on this ask while it is open
    decided: Decided | None  # approvals: run the call again, or refuse it
    timer: Timer | None = None


class Approvals:
    def __init__(self, store: Store, table: ProcessTable, waits: Waits, loop: Loop,
                 timeout_s: float | None = None, channel: HumanChannel | None = None
                 ) -> None:
        self._store = store
        self._table = table
        self._waits = waits
        self._loop = loop
        self.timeout_s = timeout_s
        self._open: dict[int, _Waiting] = {}
        # Tells a watcher (the console, a prompting run) that the queue changed.
        self.version = 0
        self._channel = channel
        self._answers = _LoopAnswers(self, loop, type(channel).__name__)

    # ----------------------------------------------------------------- from the broker

    def request(self, caller: Caller, call: str, args: dict[str, Any], blobs: list[bytes],
                need: NeedsApproval, digest: str, decided: Decided) -> int:
        request = str(need.request)
        # The call that asked: a builtin tool's own (shell.exec, not the tool.call that
        # ran it), as its effect's audit record and a missing capability's error name it.
        call = need.call
        rec = self._store.ask_create(AskRecord(
            id=0, kind="approval", pid=caller.pid, root_pid=caller.root_pid,
            image=caller.image.name, call=call, request=request, digest=digest,
            summary=summary_of(call, need.request, args, blobs), created_at=time.time()))
        detail: dict[str, Any] = {"approval": rec.id, "reason": need.decision.reason,
                                  "digest": digest, "summary": rec.summary,
                                  "outcome": "waiting for a human"}
        if need.decision.rule:
            detail["rule"] = need.decision.rule
        if caller.via_tool:
            detail["tool"] = caller.via_tool
        self._store.append_audit(caller.pid, call, request, "ask", detail)
        self._suspend(caller.pid, rec, f"approval:{rec.id}", decided)
        return rec.id

    def regrant(self, pid: int, ask_id: int, digest: str) -> Grant | None:
        """The one-shot grant a call held when it was suspended in a wait, for the same
        call made again (its wait intent names the approval): only an approval of this
        process, for these very arguments, that was given; else None (it asks anew)."""
        try:
            rec = self._store.ask_get(ask_id)
        except NotFound:
            return None
        if (rec.kind, rec.pid, rec.digest, rec.state) != ("approval", pid, digest, "approved"):
            return None
        return Grant(ask_id, rec.request or "", rec.digest)

    def reattach(self, pid: int, ask_id: int, decided: Decided) -> None:
        """A resumed process waits on for the ask its call was suspended in; one answered
        meanwhile (even while no supervisor ran) is honoured at once."""
        rec = self._store.ask_get(ask_id)
        if rec.state == "approved":
            if rec.always:
                self._stand(rec)
            decided(Grant(ask_id, rec.request or "", rec.digest))
        elif rec.state == "pending":
            self._suspend(pid, rec, f"approval:{ask_id}", decided)
        else:
            decided(self._refusal(rec))

    def question(self, caller: Caller, question: str, choices: list[Any] | None,
                 topic: str) -> Pending | dict[str, Any]:
        if caller.resume and "ask" in caller.resume:
            return self._question_again(caller.pid, int(caller.resume["ask"]))
        checked = check_question(question, choices)
        summary = storable(question.splitlines()[0] if question.strip() else question, 200)
        if caller.ask_mode == "deny":
            # No human will answer (CI, batch): refused at once, as an approval would be,
            # rather than a question in a queue nobody reads (docs/approvals.md).
            self._store.append_audit(caller.pid, "human.ask", f"human:ask:{topic}", "ask", {
                "summary": summary,
                "outcome": "refused: this run refuses every ask (--ask deny)"})
            raise PermissionDenied("human.ask: this run refuses every ask (--ask deny), so "
                                   "no one will answer the question", topic=topic)
        rec = self._store.ask_create(AskRecord(
            id=0, kind="question", pid=caller.pid, root_pid=caller.root_pid,
            image=caller.image.name, call="human.ask", question=question, choices=checked,
            topic=topic, digest=args_digest("human.ask", {"question": question,
                                                          "choices": checked,
                                                          "topic": topic}),
            summary=summary,
            created_at=time.time()))
        self._store.append_audit(caller.pid, "human.ask", f"human:ask:{topic}", "ask",
                                 {"question": rec.id, "summary": rec.summary})
        return self._suspend(caller.pid, rec, f"human:{rec.id}", None)

    def _question_again(self, pid: int, ask_id: int) -> Pending | dict[str, Any]:
        rec = self._store.ask_get(ask_id)
        if rec.state == "answered":
            return {"answer": rec.answer, "id": ask_id}
        if rec.state != "pending":
            raise self._refusal(rec)
        return self._suspend(pid, rec, f"human:{ask_id}", None)

    def _refusal(self, rec: AskRecord) -> PermissionDenied:
        """What the asking call raises for an ask denied or expired: the same text
        whether the process heard it live or resumed to find it decided."""
        what = f"{rec.call}: {rec.request or 'the question'}"
        if rec.state == "denied":
            why = f"was denied by the operator{f': {rec.reason}' if rec.reason else ''}"
        elif rec.state == "expired" and rec.reason == EXPIRED_REASON:
            after = f" after {self.timeout_s:g} s" if self.timeout_s is not None else ""
            why = f"was not answered: approval timed out{after}"
        else:
            why = f"was {rec.state}{f': {rec.reason}' if rec.reason else ''}"
        return PermissionDenied(f"{what} {why}", request=rec.request, approval=rec.id)

    def _suspend(self, pid: int, rec: AskRecord, wait: str, decided: Decided | None
                 ) -> Pending:
        marker = Pending(pid)
        entry = _Waiting(marker, decided)
        earlier = self._open.get(rec.id)
        if earlier is not None and earlier.timer is not None:
            earlier.timer.cancel()  # one timeout per ask, whoever waits on it now
        self._open[rec.id] = entry
        self._waits.suspend(pid, marker, wait, durable={"approval" if decided else "ask":
                                                        rec.id})
        if self.timeout_s is not None:
            # From the ask's creation, not from this wait: a resume or a restart goes on
            # with what is left (an ask must not outlive its timeout by being re-waited).
            left = max(0.0, rec.created_at + self.timeout_s - time.time())
            entry.timer = self._loop.call_later(left, lambda: self._expire(rec.id))
        self._changed(rec)
        return marker

    def _changed(self, rec: AskRecord) -> None:
        """The one place the queue's watchers learn of a change (see the module doc)."""
        self.version += 1
        if self._channel is None:
            return
        try:  # the embedder's code: its bug must not fail the agent's call
            if rec.state == "pending":
                self._channel.opened(rec, self._answers)
            else:
                self._channel.closed(rec)
        except Exception:
            log.exception("the human channel failed on %s %d", rec.kind, rec.id)

    # ----------------------------------------------------------------- from the operator

    def approve(self, ask_id: int, *, always: bool = False, by: str | None = None
                ) -> AskRecord:
        rec = record_approve(self._store, ask_id, always=always, by=by)
        if always:
            self._stand(rec)
        self._close(rec, Grant(ask_id, rec.request or "", rec.digest))
        return rec

    def deny(self, ask_id: int, reason: str | None = None, *, by: str | None = None
             ) -> AskRecord:
        rec = record_deny(self._store, ask_id, reason, by=by)
        self._close(rec, self._refusal(rec))
        return rec

    def answer(self, ask_id: int, text: str, *, by: str | None = None) -> AskRecord:
        rec = record_answer(self._store, ask_id, text, by=by)
        entry = self._open.pop(ask_id, None)
        if entry is not None:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.marker.resolve({"answer": text, "id": ask_id})
        self._changed(rec)
        return rec

    def _expire(self, ask_id: int) -> None:
        rec = record_expire(self._store, ask_id, self.timeout_s)
        self._close(rec, self._refusal(rec))

    def _close(self, rec: AskRecord, outcome: Grant | LibOSError) -> None:
        self._changed(rec)
        entry = self._open.pop(rec.id, None)
        if entry is None:
            return  # its process has ended: the decision is recorded, nobody waits
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.decided is None:  # a question that expired
            if isinstance(outcome, LibOSError):
                entry.marker.reject(outcome)
            return
        entry.marker.resolve(None)  # no longer waiting on this ask
        live = self._table.live.get(rec.pid)
        if live is not None and live.evicted:
            # No host process to answer. Its wait ended, so it is resumed, and its call,
            # replayed, finds this ask decided (``reattach``) and runs then -- as after a
            # restart. Running it now, for nobody, would let a call that waits again (a
            # `human.ask` approved, now its question) wait twice: once here, once when
            # the resumed process asks again.
            return
        entry.decided(outcome)

    def _stand(self, rec: AskRecord) -> None:
        """`--always`: the exact request joins the process's standing approvals."""
        kind, right, resource = (rec.request or "").split(":", 2)
        pattern = parse_cap(f"{kind}:{right}:{escape(resource)}")
        live = self._table.live.get(rec.pid)
        if live is None:
            return
        live.caller.approved.append(pattern)
        self._store.update_process(rec.pid,
                                   approved=[str(a) for a in live.caller.approved])

    def process_ended(self, pid: int) -> None:
        """Asks of a process that ended are closed: nobody is there to be answered."""
        for closed in expire_asks_of(self._store, pid):
            entry = self._open.pop(closed.id, None)
            if entry is not None and entry.timer is not None:
                entry.timer.cancel()
            self._changed(closed)


class _LoopAnswers:
    """``HumanAnswers`` for a channel: each answer is applied on the loop thread, in a
    turn (its records join that turn's commit), exactly as a control operation is."""

    def __init__(self, approvals: Approvals, loop: Loop, name: str) -> None:
        self._approvals = approvals
        self._loop = loop
        self._by = f"human channel {name}"

    def _apply(self, act: Callable[[], AskRecord]) -> Future[AskRecord]:
        fut: Future[AskRecord] = Future()

        def run() -> None:
            try:
                fut.set_result(act())
            except LibOSError as e:  # already decided, unknown id, a bad answer
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut

    def approve(self, ask_id: int, *, always: bool = False) -> Future[AskRecord]:
        return self._apply(lambda: self._approvals.approve(ask_id, always=always,
                                                           by=self._by))

    def deny(self, ask_id: int, reason: str | None = None) -> Future[AskRecord]:
        return self._apply(lambda: self._approvals.deny(ask_id, reason, by=self._by))

    def answer(self, ask_id: int, text: str) -> Future[AskRecord]:
        return self._apply(lambda: self._approvals.answer(ask_id, text, by=self._by))
