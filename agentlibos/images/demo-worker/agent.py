"""The demo's worker: counts words, or reviews files and tries to write a report."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import PermissionDenied
from agentlibos.sdk import Context


def main(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    files: list[str] = args["files"]
    if args["task"] == "count":
        # Counted by the image's JIT tool: TypeScript in a permission-stripped Deno that
        # reads each file back through the broker, with this process's capabilities.
        counts = {f: ctx.tools.call("word_count", {"path": f}) for f in files}
        ctx.fs.mkdir("out", exist_ok=True)
        ctx.fs.write_text("out/counts.txt", "".join(f"{f} {n}\n" for f, n in counts.items()))
        ctx.obj.put("counts", counts, type="WordCounts", ns="shared/results")
        ctx.obj.put("done", True, type="bool")  # its own namespace needs no capability
        return {"counted": len(counts)}
    longest = max(files, key=lambda f: len(ctx.fs.read_text(f)))
    refused = []
    # This worker was handed fs:read only: both writes come back as typed errors.
    for attempt in ("out/review.txt", "../outside.txt"):
        try:
            ctx.fs.write_text(attempt, f"longest file: {longest}\n")
        except PermissionDenied as e:
            refused.append({"path": attempt, "error": e.code})
    return {"longest": longest, "refused": refused}
