"""``caps``: what a process holds; ``caps_revoke``: take a capability from it and its
descendants at once."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import InvalidArgument, NotFound, PolicyError
from agentlibos.kernel.caps import CapPattern, parse_cap
from agentlibos.supervisor.control._args import int_field, str_field
from agentlibos.supervisor.control.context import ControlContext
from agentlibos.supervisor.control.server import Responder


def caps(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    ctx.store.get_process(pid)  # NoSuchProcess when there is none
    live = ctx.table.live.get(pid)
    held = [str(c) for c in live.caller.caps] if live else ctx.store.get_caps(pid)
    respond({"ok": True, "pid": pid, "caps": held, "live": live is not None})


def _without(held: list[CapPattern], cut: CapPattern) -> list[CapPattern]:
    """``held`` less everything ``cut`` covers. A held capability broader than ``cut``
    loses the revoked rights altogether (a glob cannot say "all but this"): revocation
    fails safe, towards less authority."""
    kept: list[CapPattern] = []
    for h in held:
        if h.kind != cut.kind or not (h.rights & cut.rights) or not (
                cut.glob.covers(h.glob) or h.glob.covers(cut.glob)):
            kept.append(h)
            continue
        rest = h.rights - cut.rights
        if rest:
            kept.append(h.narrowed(rest))
    return kept


def caps_revoke(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    text = str_field(req, "cap")
    assert text is not None
    rec = ctx.store.get_process(pid)
    try:
        cut = parse_cap(text).resolved(rec.cwd)
    except PolicyError as e:
        raise InvalidArgument(f"caps revoke: {e.message}") from None
    tree = [pid, *_descendants(ctx, pid)]
    changed = []
    with ctx.store.transaction():  # the process and all its descendants, at once
        for p in tree:
            live = ctx.table.live.get(p)
            held = (list(live.caller.caps) if live
                    else [parse_cap(c) for c in ctx.store.get_caps(p)])
            kept = _without(held, cut)
            if len(kept) == len(held) and all(a is b for a, b in zip(kept, held, strict=True)):
                continue
            if live:
                live.caller.caps = kept  # its next call that needed it is refused
                live.caller.approved[:] = _without(live.caller.approved, cut)
            ctx.store.set_caps(p, [str(k) for k in kept])
            ctx.store.append_audit(p, "caps.revoke", str(cut), "info",
                                   {"by": "operator", "held": [str(k) for k in kept]})
            changed.append({"pid": p, "caps": [str(k) for k in kept]})
    if not changed:
        raise NotFound(f"caps revoke: process {pid} and its descendants hold nothing "
                       f"within '{cut}'")
    respond({"ok": True, "pid": pid, "cap": str(cut), "changed": changed})


def _descendants(ctx: ControlContext, pid: int) -> list[int]:
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [r.pid for p in frontier for r in ctx.store.children(p)]
        out += kids
        frontier = kids
    return out
