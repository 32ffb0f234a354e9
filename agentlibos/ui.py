"""Text for the operator's terminal: escaping what agents control, and the process table.

Everything an agent chooses (its result, its error, the paths it names, its log lines,
the image names it registers) can reach the operator's terminal. :func:`printable` is
the one function that makes such text safe to print: no escape sequence reaches the
terminal, no carriage return rewrites a line, no newline forges a record, no bidi
override reorders what is shown. JSON output needs none of this (``json.dumps`` escapes
control characters itself); every text output goes through :func:`printable`.
"""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any, Final

from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.units import format_duration, format_size

_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode categories never printed as themselves: controls (C0, DEL, C1), format
# characters (bidi overrides and isolates, zero-width joiners, BOM), lone surrogates
# (which would also fail to encode), private use, and line/paragraph separators.
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text with every control, format and bidi character escaped.

    The result is always one line unless ``keep_newlines`` (for multi-line text such as
    a log, where ``\\n`` separates lines and is itself harmless); a tab is kept then too.
    Backslashes are left alone: an agent that writes the four characters ``\\x1b``
    shows them, which is harmless, and paths stay readable.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text  # the common case, fast
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif ch in _SHORT or unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON for a person: letters of any script as themselves (``"Zürich"``,
    not ``"Z\\u00fcrich"``), and every character :func:`printable` escapes as a JSON
    escape, so it is still valid JSON and safe on a terminal."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    if text.isascii():
        return text
    # A raw newline is the indent's (json escapes those inside strings).
    return "".join(_json_escape(ch) if ch != "\n"
                   and unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def _json_escape(ch: str) -> str:
    # Structural JSON is ASCII, so such a character is inside a string: \u form is exact.
    return json.dumps(ch)[1:-1]


def limits_text(limits: dict[str, Any]) -> str:
    parts = []
    if limits.get("memory_max_bytes"):
        parts.append(f"mem={format_size(int(limits['memory_max_bytes']))}")
    if limits.get("pids_max"):
        parts.append(f"pids={limits['pids_max']}")
    if limits.get("cpu_max_cores"):
        parts.append(f"cpu={limits['cpu_max_cores']:g}")
    if limits.get("wall_limit_s"):
        # A child's wall limit is what was left of its parent's (3599.993...): shown to
        # the second, as a root's is (1h), or to the millisecond below one second.
        wall = float(limits["wall_limit_s"])
        parts.append(f"wall={format_duration(round(wall) if wall >= 1 else round(wall, 3))}")
    if limits.get("log_max_bytes"):  # `logs PID` keeps this much (DESIGN: "the cap in ps")
        parts.append(f"log={format_size(int(limits['log_max_bytes']))}")
    return ",".join(parts) or "-"


def joined_limits(*texts: str) -> str:
    """Limit texts for one column (``limits_text``, a token limit): those that say
    something, joined; ``-`` if none does."""
    return ",".join(t for t in texts if t != "-") or "-"


def layers_text(rec: ProcessRecord) -> str:
    text = ",".join(rec.layers) or "none"
    if rec.missing_layers:
        text += " (missing: " + ",".join(rec.missing_layers) + ")"
    return text


def age_text(since: float | None, now: float | None = None) -> str:
    """How long ago ``since`` was, compactly (``4s``, ``12m``, ``3h``, ``2d``); ``-`` if never."""
    if since is None:
        return "-"
    s = max(0.0, (time.time() if now is None else now) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def wait_of(rec: ProcessRecord) -> str | None:
    """What a waiting process waits on (``proc:7``, ``approval:12``), where the record says."""
    value = getattr(rec, "wait", None)
    return None if value is None else str(value)


def ps_row(rec: ProcessRecord) -> dict[str, Any]:
    """One ``ps --json`` row: the record's table row plus the contract's ``wait``/``evicted``."""
    row = rec.table_row()
    row.setdefault("wait", wait_of(rec))
    row.setdefault("evicted", bool(getattr(rec, "evicted", False)))
    return row


def _tree_order(recs: list[ProcessRecord]) -> list[tuple[int, ProcessRecord]]:
    by_parent: dict[int | None, list[ProcessRecord]] = {}
    pids = {r.pid for r in recs}
    for r in recs:
        parent = r.ppid if r.ppid in pids else None
        by_parent.setdefault(parent, []).append(r)
    out: list[tuple[int, ProcessRecord]] = []

    def walk(parent: int | None, depth: int) -> None:
        for r in by_parent.get(parent, []):
            out.append((depth, r))
            walk(r.pid, depth + 1)

    walk(None, 0)
    return out


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, two spaces apart; cells are escaped here, once."""
    safe = [tuple(printable(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in safe) for i in range(len(safe[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in safe
    )


def format_ps(recs: list[ProcessRecord], *, tree: bool, now: float | None = None) -> str:
    rows: list[tuple[str, ...]] = [
        ("PID", "PPID", "IMAGE", "STATE", "REASON", "WAIT", "AGE", "LIMITS", "LAYERS")]
    ordered = _tree_order(recs) if tree else [(0, r) for r in recs]
    for depth, r in ordered:
        image = ("  " * depth + ("└ " if depth else "")) + printable(r.image)
        rows.append((str(r.pid), "-" if r.ppid is None else str(r.ppid), image, state_text(r),
                     r.exit_reason or "-", wait_of(r) or attention_text(r) or "-",
                     age_text(r.started_at or r.created_at, now),
                     joined_limits(limits_text(r.limits), tokens_text(r.tokens)),
                     layers_text(r)))
    return format_table(rows)


def state_text(rec: ProcessRecord) -> str:
    """The STATE column: ``waiting,evicted`` for a process whose host process was stopped
    while it waits (or that a stopped supervisor left), to be resumed by replay."""
    if getattr(rec, "evicted", False) and rec.live and rec.state != "attention":
        return f"{rec.state},evicted"
    return rec.state


def attention_text(rec: ProcessRecord) -> str | None:
    """The WAIT column of a process in ``attention``: the effect a crash left unsettled."""
    att = getattr(rec, "attention", None)
    if rec.state != "attention" or not att:
        return None
    return f"{att.get('call')} {att.get('request') or ''}".strip()


def tokens_text(tokens: dict[str, Any] | None) -> str:
    """A tree root's model tokens for the LIMITS column: ``tokens=USED/LIMIT``."""
    if not tokens:
        return "-"
    limit = tokens.get("limit")
    return f"tokens={tokens.get('used', 0)}/{'-' if limit is None else limit}"
