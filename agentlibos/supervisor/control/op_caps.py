"""``caps``: what a process holds; ``caps_revoke``: take a capability from it and its
descendants at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentlibos.errors import InvalidArgument, NotFound, PolicyError
from agentlibos.kernel.caps import CapPattern, parse_cap
from agentlibos.store import Store
from agentlibos.supervisor.control._args import int_field, str_field

if TYPE_CHECKING:  # not at run time: `caps revoke` with no supervisor imports this module
    from agentlibos.supervisor.control.context import ControlContext
    from agentlibos.supervisor.control.server import Responder
    from agentlibos.supervisor.processes import LiveProcess


def caps(ctx: ControlContext, req: dict[str, Any], respond: Responder) -> None:
    pid = int_field(req, "pid")
    ctx.store.get_process(pid)  # NoSuchProcess when there is none
    live = ctx.table.live.get(pid)
    view = ({"caps": [str(c) for c in live.caller.caps],
             "approved": [str(a) for a in live.caller.approved]} if live
            else stored_caps(ctx.store, pid))
    respond({"ok": True, "pid": pid, **view, "live": live is not None})


def stored_caps(store: Store, pid: int) -> dict[str, list[str]]:
    """What the store says ``pid`` holds: its capabilities and its `approve --always`
    grants (held for the process's life, DESIGN; kept apart from its capabilities
    because an ask rule no longer stops them, and shown with them by `caps`)."""
    return {"caps": store.get_caps(pid),
            "approved": store.process_resume_info(pid)["approved"]}


def _meets(h: CapPattern, cut: CapPattern) -> bool:
    """Could a request be allowed by both? Exactly for a literal ``cut`` (the common
    case: one path, one host); otherwise conservatively (Glob.may_overlap)."""
    if cut.glob.covers(h.glob) or h.glob.covers(cut.glob):
        return True
    if cut.glob.literal_prefix() == cut.resource:
        return h.glob.match(cut.resource)
    return h.glob.may_overlap(cut.glob)


def _without(held: list[CapPattern], cut: CapPattern) -> list[CapPattern]:
    """``held`` less everything ``cut`` covers. A held capability broader than ``cut``,
    or one that merely overlaps it (``fs:read:./*.txt`` against ``./secret*``), loses
    the revoked rights altogether (a glob cannot say "all but this"): revocation fails
    safe, towards less authority."""
    kept: list[CapPattern] = []
    for h in held:
        if h.kind != cut.kind or not (h.rights & cut.rights) or not _meets(h, cut):
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
    cut, changed = revoke(ctx.store, pid, text, ctx.table.live)
    respond({"ok": True, "pid": pid, "cap": cut, "changed": changed})


def revoke(store: Store, pid: int, text: str, live: Mapping[int, LiveProcess]
           ) -> tuple[str, list[dict[str, Any]]]:
    """Take ``text`` (a capability, resolved against ``pid``'s cwd) and everything it
    covers from ``pid`` and all its descendants, in one transaction: the resolved
    capability and ``[{"pid", "caps"}]`` of those that lost something. ``live``: the
    supervisor's processes, whose callers are narrowed at once; with no supervisor
    running (`agentlibos caps revoke`) it is empty and only the store changes, which
    is what a resume rebuilds a caller from."""
    rec = store.get_process(pid)
    try:
        cut = parse_cap(text).resolved(rec.cwd)
    except PolicyError as e:
        raise InvalidArgument(f"caps revoke: {e.message}") from None
    changed = []
    with store.transaction():  # the process and all its descendants, at once
        for p in [pid, *_descendants(store, pid)]:
            lp = live.get(p)
            held = list(lp.caller.caps) if lp else [parse_cap(c) for c in store.get_caps(p)]
            kept = _without(held, cut)
            if len(kept) == len(held) and all(a is b for a, b in zip(kept, held, strict=True)):
                continue
            approved = (lp.caller.approved if lp else
                        [parse_cap(a) for a in store.process_resume_info(p)["approved"]])
            approved[:] = _without(approved, cut)  # an --always grant within it goes too
            if lp:
                lp.caller.caps = kept  # its next call that needed it is refused
            held_now = [str(k) for k in kept]
            store.set_caps(p, held_now)
            # Its standing approvals too: a resume rebuilds them from the store.
            store.update_process(p, approved=[str(a) for a in approved])
            store.append_audit(p, "caps.revoke", str(cut), "info",
                               {"by": "operator", "held": held_now})
            changed.append({"pid": p, "caps": held_now})
    if not changed:
        raise NotFound(f"caps revoke: process {pid} and its descendants hold nothing "
                       f"within '{cut}'")
    return str(cut), changed


def _descendants(store: Store, pid: int) -> list[int]:
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [r.pid for p in frontier for r in store.children(p)]
        out += kids
        frontier = kids
    return out
