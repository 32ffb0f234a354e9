"""Text formatting for the command line: the process table."""

from __future__ import annotations

from typing import Any

from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.units import format_duration, format_size


def limits_text(limits: dict[str, Any]) -> str:
    parts = []
    if limits.get("memory_max_bytes"):
        parts.append(f"mem={format_size(int(limits['memory_max_bytes']))}")
    if limits.get("pids_max"):
        parts.append(f"pids={limits['pids_max']}")
    if limits.get("cpu_max_cores"):
        parts.append(f"cpu={limits['cpu_max_cores']:g}")
    if limits.get("wall_limit_s"):
        parts.append(f"wall={format_duration(float(limits['wall_limit_s']))}")
    return ",".join(parts) or "-"


def layers_text(rec: ProcessRecord) -> str:
    text = ",".join(rec.layers) or "none"
    if rec.missing_layers:
        text += " (missing: " + ",".join(rec.missing_layers) + ")"
    return text


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


def format_ps(recs: list[ProcessRecord], *, tree: bool) -> str:
    rows = [("PID", "PPID", "IMAGE", "STATE", "REASON", "LIMITS", "LAYERS")]
    ordered = _tree_order(recs) if tree else [(0, r) for r in recs]
    for depth, r in ordered:
        image = ("  " * depth + ("└ " if depth else "")) + r.image
        rows.append((str(r.pid), "-" if r.ppid is None else str(r.ppid), image, r.state,
                     r.exit_reason or "-", limits_text(r.limits), layers_text(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
