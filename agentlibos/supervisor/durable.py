"""Durable execution's lifecycle: resume after an accident, eviction, restore, recovery.

The journal (broker/journal.py) and replay (broker/replay.py) make a process's calls
repeatable; this module decides *when* a process starts again (docs/durability.md):

- **accident**: its host process died and nobody asked for it (a crash, the zygote lost):
  resumed at once by replay, if its image says ``on_crash = "resume"`` and it has resumed
  fewer than ``max_resumes`` times;
- **eviction**: it has waited longer than ``[durable] evict_after`` on waits that survive
  without it: its host process is stopped; the wait lives on in the table and the
  journal; when it ends, the process is resumed and replays up to the answer;
- **restart**: a supervisor that starts finds processes the last one left (``recover``):
  an unsettled ``once`` intent puts a process in ``attention``; a wait intent is armed
  again with the process evicted; the rest resume (``serve``), or wait for
  ``agentlibos resume`` (an embedded supervisor runs only what it was asked to);
- **restore**: a checkpoint becomes a new process that replays to it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import time
from typing import Any

from agentlibos.broker.dispatch import Dispatcher, Outcome
from agentlibos.broker.journal import StoreJournal
from agentlibos.broker.replay import Replayer
from agentlibos.broker.syscalls import Caller
from agentlibos.errors import Conflict, InvalidArgument, LibOSError, LimitExceeded, PolicyError
from agentlibos.kernel.budgets import TreeQuota, Usage
from agentlibos.kernel.caps import CapPattern, parse_cap, within
from agentlibos.kernel.image import AgentImage, Limits, load_image
from agentlibos.kernel.journal import JournalEntry, parse_intent
from agentlibos.kernel.policy import parse_policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.store import CheckpointRecord, Store
from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.processes import LiveProcess, ProcessTable
from agentlibos.supervisor.waits import Waits

log = logging.getLogger(__name__)

CHECKPOINT_BYTES = 256  # what a checkpoint's row costs beyond its objects and caps

MAX_STARTING = 64  # resumed processes starting at once (see resume)


class Durable:
    def __init__(self, table: ProcessTable, store: Store, loop: Loop, dispatcher: Dispatcher,
                 journal: StoreJournal, waits: Waits, *, evict_after_s: float | None,
                 tree_quota: TreeQuota | None = None) -> None:
        self._table = table
        self._tree_quota = tree_quota or TreeQuota()
        self._store = store
        self._loop = loop
        self._dispatcher = dispatcher
        self._journal = journal
        self.evict_after_s = evict_after_s
        self._starting: set[int] = set()  # resumed, not yet answered their first call
        self._queue: collections.deque[tuple[int, str]] = collections.deque()
        self._pumping = False
        table.on_accident = self._on_accident
        waits.all_durable = self.waiting
        waits.ended_evicted = self.wait_ended
        waits.effect_cut_off = self._cut_off
        self._stopping = False  # stop_all(keep=True): the next supervisor settles
        # Processes in attention (to_attention): only `resolve` takes one out and starts
        # it again (launcher: Embedded.stuck asks whether any is held up by them).
        self.attention: set[int] = set()
        table.ended.append(self.attention.discard)
        # Crashed with a call in flight: resumed when it settles (wait_ended), and that
        # resume counts against max_resumes as the crash's own.
        self._crashed: set[int] = set()
        table.ended.append(self._crashed.discard)
        dispatcher.replay = Replayer(store)
        dispatcher.replay.on_diverged = self._diverged
        store.on_journal_conflict = self._journal_conflict

    # ------------------------------------------------------------------ resuming

    def _hosts_children(self, pid: int) -> bool:
        """Whether a child of ``pid`` runs in a host process: its cgroup nests inside
        ``pid``'s, which an eviction or a resume would take down with it."""
        return any(not self._table.live[c].evicted for c in self._table.live_children(pid))

    def _on_accident(self, pid: int, live: LiveProcess, error: str | None) -> bool:
        lc = live.caller.image.lifecycle
        resumes = self._store.get_process(pid).resumes
        if lc.on_crash != "resume" or resumes >= lc.max_resumes:
            return False
        # Children running (their cgroups nest in its own) die with its cgroup when it
        # is released (_host_gone): an accident of theirs too, each resumed by its own
        # image's lifecycle; its proc.wait, replayed or in flight, hears their real end.
        self._store.append_audit(pid, "proc.crash", f"proc:{pid}", "info",
                                 {"error": error, "resumes": resumes,
                                  "outcome": "resuming by replay"})
        # After finalize has put it back in the table as evicted. A call still in flight
        # (a shell command, a request: it outlives the host process) settles first;
        # its end resumes the process (wait_ended), which replays up to its answer.
        if not live.waits:
            self._loop.call_later(0, lambda: self.resume(pid, why="crash"))
        else:
            self._crashed.add(pid)
        return True

    def _cut_off(self, pid: int) -> None:
        """A ``once`` effect in flight (a shell command) was killed with the host
        process of ``pid``, after an accident: the process stops in ``attention`` now,
        as a restart would put it there, rather than wait on a command that no longer
        runs. At a daemon's stop the next supervisor does that (recover)."""
        live = self._table.live.get(pid)
        if self._stopping or live is None or not live.evicted:
            return
        entry = next((e for e in self._store.journal_intents()
                      if e.pid == pid and parse_intent(e.result).get("effect") == "once"),
                     None)
        if entry is not None:
            self.to_attention(pid, entry)
        elif not live.waits:  # unjournaled (a raw client): nothing to settle; it resumes
            self._resume_soon(pid, "crash")

    def resume(self, pid: int, *, why: str) -> None:
        """Start ``pid``'s host process again; its calls replay the journal.

        Not all at once: one post that wakes 10,000 evicted waiters must not start
        10,000 sandboxes together (each would miss its start timeout on a small host),
        nor more than the supervisor's file descriptors allow. Past MAX_STARTING
        processes still starting, resumes wait in a queue, in order."""
        live = self._table.live.get(pid)
        if live is None or not live.evicted:
            return
        if pid in self.attention:
            return  # only `resolve` starts it again (it takes it out first)
        if self._queue or not self._may_start():
            self._queue.append((pid, why))
            self._arm_pump()
            return
        self._start(pid, live, why)

    def _may_start(self) -> bool:
        live = self._table.live
        self._starting = {p for p in self._starting
                          if p in live and not live[p].ready and not live[p].evicted}
        return len(self._starting) < MAX_STARTING and self._table.has_host_slot()

    def _arm_pump(self) -> None:
        if not self._pumping:
            self._pumping = True
            self._loop.call_later(0.02, self._pump)

    def _pump(self) -> None:
        self._pumping = False
        while self._queue and self._may_start():
            pid, why = self._queue.popleft()
            live = self._table.live.get(pid)
            if live is not None and live.evicted:
                self._start(pid, live, why)
        if self._queue:
            self._arm_pump()

    def _start(self, pid: int, live: LiveProcess, why: str) -> None:
        image_dir = live.caller.image.path
        if not image_dir.is_dir():
            # Removed while it waited: nothing to start again; its waiters are told.
            self._table.terminate(pid, "start-failed", f"cannot start it again: its image "
                                  f"directory {image_dir} no longer exists", grace_s=0)
            return
        if pid in self._crashed:
            self._crashed.discard(pid)
            why = "crash"
        self._starting.add(pid)
        self._table.set_evicted(live, False)
        replayed = self._dispatcher.begin_replay(pid)
        rec = self._store.get_process(pid)
        fields: dict[str, Any] = {"evicted": 0, "resumes": rec.resumes + (why == "crash")}
        if not live.waits:
            fields.update(state="running", wait=None)
        self._store.update_process(pid, **fields)
        self._store.append_audit(pid, "proc.resume", f"proc:{pid}", "info",
                                 {"why": why, "replay": replayed})
        self._table.launch(pid, live, Limits.from_json(live.limits))

    def _resume_soon(self, pid: int, why: str) -> None:
        self._loop.call_later(0, lambda: self.resume(pid, why=why))

    def wait_ended(self, pid: int) -> None:
        """Its last wait ended: an evicted process comes back for the answer."""
        live = self._table.live.get(pid)
        if live is not None and live.evicted:
            self._loop.call_later(0, lambda: self.resume(pid, why="wait ended"))

    def _diverged(self, pid: int, seq: int, detail: str) -> None:
        self._store.append_audit(pid, "proc.diverged", f"proc:{pid}", "error",
                                 {"seq": seq, "detail": detail})
        self._table.terminate(pid, "diverged", f"diverged from its journal: {detail}",
                              grace_s=0)

    def _journal_conflict(self, conflicts: list[tuple[JournalEntry, str]]) -> None:
        """A turn's journal entries whose place was already taken (a supervisor bug, or
        the database edited under it): the rest of the turn was written; each such
        process ends ``diverged`` -- it could not be replayed -- on the next turn, out
        of the store's commit. Every other process goes on."""
        first: dict[int, tuple[JournalEntry, str]] = {}
        for e, held in conflicts:
            first.setdefault(e.pid, (e, held))
        for pid, (e, held) in first.items():
            detail = (f"its journal already holds entry {e.seq} ({held}); "
                      f"{e.call} could not be recorded there")
            self._loop.call_later(0, functools.partial(self._diverged, pid, e.seq, detail))

    # ------------------------------------------------------------------ eviction

    def waiting(self, pid: int) -> None:
        """Every wait of ``pid`` is durable now: evict it if that lasts ``evict_after``."""
        if self.evict_after_s is None:
            return
        live = self._table.live.get(pid)
        if live is None:
            return
        since = live.waiting_since

        def check() -> None:
            lv = self._table.live.get(pid)
            if (lv is not None and lv.waits and lv.durable_waits == len(lv.waits)
                    and lv.waiting_since == since and not lv.evicted and not lv.evicting
                    and lv.ready and lv.host_pid is not None):
                if self._hosts_children(pid):
                    # Their cgroups nest in its own: stopping it would kill them as well
                    # (an accident each). Try again once they have been evicted or ended.
                    self._loop.call_later(self.evict_after_s or 0, check)
                else:
                    self.evict(pid)

        self._loop.call_later(self.evict_after_s, check)

    def evict(self, pid: int) -> None:
        """Stop ``pid``'s host process; it stays in the table, waiting. Children first:
        a parent is evicted once none of its children runs (see waiting())."""
        live = self._table.live[pid]
        live.evicting = True
        self._store.append_audit(pid, "proc.evict", f"proc:{pid}", "info",
                                 {"wait": live.waits[0] if live.waits else None,
                                  "after_s": self.evict_after_s})
        self._table.kill_host(live)

    def stop_all(self, keep: bool) -> None:
        """At the supervisor's stop: ``keep`` stops every host process as an eviction
        (each process stays as it is, to be resumed by the next supervisor); otherwise
        every process is killed."""
        self._stopping = keep
        for pid, live in list(self._table.live.items()):
            if not keep:
                self._table.terminate(pid, "killed", "the supervisor is stopping", grace_s=0)
            elif not live.evicted:
                live.evicting = True
                self._table.kill_host(live)

    # ------------------------------------------------------------------ rebuilding

    def rebuild(self, rec: ProcessRecord, image: AgentImage | None = None) -> LiveProcess:
        """A table entry for a process the store knows and no host process runs (after
        a restart, or to restore): evicted, with its caller rebuilt from the store."""
        info = self._store.process_resume_info(rec.pid)
        image = image or load_image(rec.image_path)
        caller = Caller(
            pid=rec.pid, ppid=rec.ppid, root_pid=rec.root_pid, cwd=rec.cwd, image=image,
            caps=[parse_cap(c) for c in self._store.get_caps(rec.pid)],
            policy=parse_policy(info["policy_text"], info["policy_source"]),
            ask_mode=info["ask_mode"], approved=[parse_cap(a) for a in info["approved"]])
        live = LiveProcess(caller=caller, token=b"", scratch=self._table.paths.scratch
                           / str(rec.pid), log_path=self._table.paths.logs / f"{rec.pid}.log",
                           limits=rec.limits)
        live.wall_used, live.started = info["wall_used"], rec.started_at is not None
        self._table.live[rec.pid] = live
        self._table.set_evicted(live, True)
        return live

    def rearm(self, live: LiveProcess, entry: JournalEntry) -> None:
        """Make again the call a process was suspended in (its wait intent), without its
        host process: the wait goes on; when it ends the process is resumed."""
        intent = parse_intent(entry.result)
        args = intent.get("args") if isinstance(intent.get("args"), dict) else {}
        state = intent.get("state") if isinstance(intent.get("state"), dict) else {}
        pid = live.caller.pid

        def done(outcome: Outcome) -> None:
            # Recorded by the dispatch's journal hook; no host process to answer.
            lv = self._table.live.get(pid)
            if lv is not None and lv.evicted and not lv.waits:
                self.wait_ended(pid)

        self._dispatcher.submit_rearmed(live.caller, entry.seq, entry.call, args or {},
                                        state or {}, done)

    # ------------------------------------------------------------------ restart

    def recover(self, everything: bool, tree: int | None = None) -> dict[str, list[int]]:
        """Settle what the last supervisor left (its host processes are gone).

        Which processes this supervisor runs again now: ``everything`` (a daemon), or
        only the tree rooted at ``tree`` (`agentlibos resume`), or none (an embedded run).
        The others stay in the store, evicted, for whoever resumes them."""

        def resume(rec: ProcessRecord) -> bool:
            return everything or rec.root_pid == tree

        out: dict[str, list[int]] = {"resumed": [], "waiting": [], "attention": [],
                                     "failed": [], "left": []}
        intents: dict[int, JournalEntry] = {}
        for e in self._store.journal_intents():
            intents.setdefault(e.pid, e)
            self._journal.intents.add((e.pid, e.seq))
        now = time.time()
        images: dict[str, AgentImage] = {}
        rearm: list[tuple[LiveProcess, JournalEntry]] = []
        for rec in self._store.list_processes(live_only=True):
            pid = rec.pid
            intent = intents.get(pid)
            kind = parse_intent(intent.result)["effect"] if intent is not None else None
            if rec.state == "attention" or kind == "once":
                if rec.state != "attention":
                    assert intent is not None
                    self.to_attention(pid, intent)
                self.attention.add(pid)
                out["attention"].append(pid)
                if resume(rec):  # in the table (no host process), so a parent's
                    with contextlib.suppress(LibOSError):  # proc.wait waits for it
                        self.rebuild(self._store.get_process(pid))
                continue
            try:
                image = images.get(rec.image_path) or load_image(rec.image_path)
                images[rec.image_path] = image
            except LibOSError as e:
                self._fail(pid, now, f"cannot load its image again: {e.message}")
                out["failed"].append(pid)
                continue
            if image.lifecycle.on_crash != "resume":
                self._fail(pid, now, "the supervisor stopped while this process was live "
                           "(its image says on_crash = \"fail\")")
                out["failed"].append(pid)
                continue
            if not resume(rec):
                self._store.update_process(pid, host_pid=None, evicted=1)
                out["left"].append(pid)
                continue
            live = self.rebuild(rec, image)
            self._store.update_process(pid, host_pid=None, evicted=1)
            if kind == "wait" and "approval" not in (parse_intent(intent.result if intent
                                                                    else None).get("state")
                                                       or {}):
                assert intent is not None
                rearm.append((live, intent))
                out["waiting"].append(pid)
            else:
                self._resume_soon(pid, "restart")
                out["resumed"].append(pid)
        # Once every process is back in the table: a proc.wait armed again must find its
        # child live (in pid order a parent comes first), or it would be answered with the
        # child's record as it stands, and that answer journaled for good.
        for live, intent in rearm:
            self.rearm(live, intent)
        return out

    def _fail(self, pid: int, now: float, error: str) -> None:
        self._store.update_process(pid, state="failed", exit_reason="supervisor-lost",
                                   ended_at=now, error=error, wait=None)
        self._store.append_audit(pid, "proc.exit", f"proc:{pid}", "info",
                                 {"reason": "supervisor-lost", "error": error})
        for ask in self._store.asks_of(pid):
            if ask.state == "pending":
                self._store.ask_decide(ask.id, "expired", reason="the supervisor was lost")

    def to_attention(self, pid: int, entry: JournalEntry) -> None:
        intent = parse_intent(entry.result)
        att = {"seq": entry.seq, "call": entry.call, "request": intent.get("request")}
        self.attention.add(pid)
        self._store.update_process(pid, state="attention", attention=att, host_pid=None,
                                   evicted=1, wait=None)
        # The record of an effect a crash cut off (its own record was in the lost turn),
        # linked to the approval it ran under, as the effect's record would have been.
        linked = {"approval": intent["approval"]} if "approval" in intent else {}
        self._store.append_audit(pid, "proc.attention", f"proc:{pid}", "info",
                                 {**att, **linked, "reason": "a crash left this effect "
                                  "unsettled: it may or may not have happened, and it is "
                                  "not one that may be done twice"})

    # ------------------------------------------------------------------ operator

    def resolve(self, pid: int, action: str) -> ProcessRecord:
        """`agentlibos resolve PID --retry|--skip|--fail` for a process in ``attention``."""
        if action not in ("retry", "skip", "fail"):
            raise InvalidArgument(f"resolve: --retry, --skip or --fail, not {action!r}")
        rec = self._store.get_process(pid)
        if rec.state != "attention" or rec.attention is None:
            raise Conflict(f"process {pid} is {rec.state}, not waiting for attention")
        seq = int(rec.attention["seq"])
        self._store.append_audit(pid, "proc.resolve", f"proc:{pid}", "info",
                                 {**rec.attention, "action": action})
        self.attention.discard(pid)
        if action == "fail":
            self._journal.intents.discard((pid, seq))
            self._store.update_process(pid, attention=None, evicted=0)
            if pid not in self._table.live:
                self.rebuild(rec)
            # Ended through the table, so whoever waits for it (its parent) is told.
            att = rec.attention
            self._table.terminate(pid, "resolved-fail", (
                f"the operator failed it at call {seq} ({att.get('call')}, "
                f"{att.get('request')}), which a crash left unsettled"), grace_s=0)
            return self._store.get_process(pid)
        if action == "retry":
            self._store.journal_drop_intent(pid, seq)
            self._journal.intents.discard((pid, seq))
        else:  # skip: the call returns as if refused, never done again by us
            self._journal.intents.discard((pid, seq))
            self._store.journal_settle(pid, seq, "error", json.dumps({
                "type": "Unavailable", "code": "unavailable",
                "message": f"{rec.attention.get('call')}: skipped by the operator after a "
                           "crash (it may or may not have happened)"}))
        self._store.update_process(pid, state="running", attention=None)
        if pid not in self._table.live:
            self.rebuild(self._store.get_process(pid))
        self.resume(pid, why=f"resolve --{action}")
        return self._store.get_process(pid)

    def checkpoint(self, pid: int, name: str | None, seq: int | None = None) -> CheckpointRecord:
        """Mark ``pid``'s journal position (its last settled call, or ``seq``), its own
        objects and its capabilities."""
        rec = self._store.get_process(pid)
        at = self._store.journal_settled_seq(pid) if seq is None else seq
        caps, objects = self._store.get_caps(pid), self._store.objects_of_ns(f"proc/{pid}")
        # A copy of its objects, kept as long as the tree: charged to the tree as objects
        # are (one object, their bytes), so checkpoints cannot grow the store without end.
        size = CHECKPOINT_BYTES + sum(len(c) for c in caps) + sum(
            len(o["name"]) + len(o["value"].encode()) for o in objects)
        with self._store.transaction():
            try:
                self._store.charge_tree(rec.root_pid, Usage(object_bytes=size, objects=1),
                                        self._tree_quota)
            except LimitExceeded as e:
                raise LimitExceeded(f"proc.checkpoint: a checkpoint of {size} bytes (a copy "
                                    f"of its objects) does not fit: {e.message}",
                                    **e.details) from None
            cp = self._store.checkpoint_create(name, pid, at, caps, objects)
        self._store.append_audit(pid, "proc.checkpoint", f"proc:{pid}", "info",
                                 {**cp.public(), "image": rec.image})
        return cp

    def restore(self, ref: str) -> int:
        """A new process (same parent, image, args, cwd, policy) that replays the source's
        journal to the checkpoint, then runs live; never holding a capability the source
        has lost since."""
        cp = self._store.checkpoint_get(ref)
        src = self._store.get_process(cp.pid)
        now_caps = [_cap(c) for c in self._store.get_caps(cp.pid)]
        kept = [k for k in (_still_held(_cap(x), now_caps) for x in cp.caps) if k is not None]
        parent = self._table.live.get(src.ppid) if src.ppid is not None else None
        image = load_image(src.image_path)
        info = self._store.process_resume_info(cp.pid)
        policy = parse_policy(info["policy_text"], info["policy_source"])
        pid = self._table.create(image, src.args, parent=parent.caller if parent else None,
                                 policy=policy, cwd=src.cwd, held=lambda _c: kept,
                                 ask_mode=info["ask_mode"], before_launch=lambda p: (
                                     self._seed(p, cp)))
        self._store.append_audit(pid, "proc.restore", f"proc:{pid}", "info",
                                 {**cp.public(), "caps": [str(c) for c in kept]})
        return pid

    def _seed(self, pid: int, cp: CheckpointRecord) -> None:
        """Before the restored process starts: its journal prefix and its objects."""
        self._store.journal_copy(cp.pid, pid, cp.seq)
        for o in cp.objects:
            self._store.restore_object(f"proc/{pid}", o["name"], o["type"], o["value"], pid)
        self._dispatcher.begin_replay(pid)


def _still_held(cap: CapPattern, held: list[CapPattern]) -> CapPattern | None:
    """``cap`` narrowed to the rights of it still held (a revoked write keeps the read)."""
    if within(cap, held):
        return cap
    rights = {r for r in cap.rights if within(cap.narrowed(frozenset({r})), held)}
    return cap.narrowed(frozenset(rights)) if rights else None


def _cap(text: str) -> CapPattern:
    try:
        return parse_cap(text)
    except PolicyError as e:
        raise InvalidArgument(e.message) from None


__all__ = ["Durable"]
