"""``agentlibos audit``: show, filter, follow and verify the audit log."""

from __future__ import annotations

import argparse
import fnmatch
import time
from collections.abc import Iterable
from typing import Final

from agentlibos.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    paths_of,
    positive_id,
    print_json,
    readonly_store,
)
from agentlibos.errors import NoSuchProcess
from agentlibos.kernel.audit import AuditRecord, VerifyResult
from agentlibos.launcher import Interrupt, signals
from agentlibos.store import Store
from agentlibos.ui import printable

# Every verdict a record can carry: a decision, an answer in the approval queue
# (docs/approvals.md), lifecycle information, a runtime error.
VERDICTS: Final = ("allow", "deny", "ask", "approved", "denied", "expired", "answered",
                   "info", "error")
FOLLOW_POLL_S: Final = 0.2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = add_command(sub, "audit", help="show, follow or verify the audit log", func=cmd_audit,
                    example="""
        agentlibos audit --pid 7 --verdict deny
        agentlibos audit --call 'fs.*' --follow
        agentlibos audit --verify --json     # {"ok", "count", ..., "head": {"seq", "hash"}}
    """)
    a.add_argument("--pid", type=positive_id, help="only records of this process")
    a.add_argument("--verdict", choices=VERDICTS, help="only records with this verdict")
    a.add_argument("--call", metavar="CALL", help="only this call (a glob: 'fs.*')")
    a.add_argument("--limit", type=_count, help="only the last N records")
    a.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new records as they are appended (Ctrl-C ends)")
    a.add_argument("--verify", action="store_true", help="check the hash chain")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return n


def format_record(r: AuditRecord) -> str:
    """One record, one line: every field an agent can influence is escaped."""
    when = time.strftime("%H:%M:%S", time.localtime(r.ts)) + f".{int(r.ts % 1 * 1000):03d}"
    pid = "-" if r.pid is None else str(r.pid)
    why = r.detail.get("reason") or r.detail.get("exit_reason") or ""
    tool = f" [tool {printable(r.detail['tool'])}]" if r.detail.get("tool") else ""
    return (f"{r.seq:>6} {when} pid={pid:<4} {printable(r.verdict):<5} "
            f"{printable(r.call):<12} {printable(r.request)}{tool}"
            + (f"  -- {printable(why)}" if why else ""))


def _matches(ns: argparse.Namespace, r: AuditRecord) -> bool:
    return ((ns.verdict is None or r.verdict == ns.verdict)
            and (ns.call is None or fnmatch.fnmatchcase(r.call, ns.call)))


def _emit(ns: argparse.Namespace, recs: Iterable[AuditRecord]) -> None:
    for r in recs:
        if ns.json and ns.follow:
            print_json(r.public())  # one object per line while following
        else:
            print(format_record(r), flush=True)


def _verify(ns: argparse.Namespace, store: Store) -> int:
    res = store.verify_audit()
    head = None
    if res.ok and res.count:
        # A sound chain numbers its records 1..count, so the head is record `count`.
        last = store.audit_records(since_seq=res.count - 1, limit=1)
        head = {"seq": last[0].seq, "hash": last[0].hash} if last else None
    if ns.json:
        print_json(res.__dict__ | {"head": head})
    elif res.ok:
        print(f"audit chain OK: {res.count} records verified"
              + (f"; head {head['seq']} {head['hash']}" if head else ""))
    else:
        print(printable(f"audit chain BROKEN at record {res.first_bad_seq}: {res.problem}"))
    return EXIT_OK if res.ok else EXIT_FAILED


def _nothing_yet(ns: argparse.Namespace) -> int:
    """A home where nothing has run has an empty log, which is a sound chain."""
    if ns.verify:
        if ns.json:
            print_json(VerifyResult(ok=True, count=0).__dict__ | {"head": None})
        else:
            print("audit chain OK: 0 records verified")
    elif ns.json and not ns.follow:
        print_json([])
    return EXIT_OK


def cmd_audit(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    store = readonly_store(paths)
    if store is None and ns.pid is not None:
        raise NoSuchProcess(f"no process {ns.pid}: nothing has run in {paths.home}")
    if store is None and ns.follow and not ns.verify:
        interrupt = Interrupt()
        with signals(interrupt):  # nothing has run yet: follow from the first record
            while store is None and not interrupt:
                time.sleep(FOLLOW_POLL_S)
                store = readonly_store(paths)
        if store is None:
            return EXIT_INTERRUPTED
    if store is None:
        return _nothing_yet(ns)
    try:
        if ns.pid is not None:
            store.get_process(ns.pid)  # NoSuchProcess (exit 2) for a pid never run here
        if ns.verify:
            return _verify(ns, store)
        every = store.audit_records(pid=ns.pid)
        seen = every[-1].seq if every else 0
        recs = [r for r in every if _matches(ns, r)]
        if ns.limit is not None:
            recs = recs[-ns.limit:] if ns.limit > 0 else []
        if not ns.follow:
            if ns.json:
                print_json([r.public() for r in recs])
            else:
                _emit(ns, recs)
            return EXIT_OK
        _emit(ns, recs)
        interrupt = Interrupt()
        with signals(interrupt):
            while not interrupt:
                new = store.audit_records(pid=ns.pid, since_seq=seen)
                if new:
                    seen = new[-1].seq
                    _emit(ns, [r for r in new if _matches(ns, r)])
                else:
                    time.sleep(FOLLOW_POLL_S)
        return EXIT_INTERRUPTED
    finally:
        store.close()
