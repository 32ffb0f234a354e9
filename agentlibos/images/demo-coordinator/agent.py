"""The demo's parent: spawns two workers with attenuated capabilities and collects them."""

from __future__ import annotations

from typing import Any

from agentlibos.sdk import Context


def main(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    inputs = sorted(e["name"] for e in ctx.tools.call("list_dir", {"path": "input"}))
    # The counter may read the input and write only under out/ and one object namespace.
    counter = ctx.proc.spawn(
        "demo-worker",
        args={"task": "count", "files": [f"input/{n}" for n in inputs]},
        caps=["fs:read:./input/**", "fs:write:./out/**", "obj:write:shared/results",
              "jit:invoke:word_count"],
    )
    # The reviewer may only read the input: its attempt to write a report is refused.
    reviewer = ctx.proc.spawn(
        "demo-worker",
        args={"task": "review", "files": [f"input/{n}" for n in inputs]},
        caps=["fs:read:./input/**"],
    )
    results = {"counter": ctx.proc.wait(counter), "reviewer": ctx.proc.wait(reviewer)}
    counts = ctx.obj.get("counts", ns="shared/results")
    summary = {
        "files": inputs,
        "total_words": sum(counts.values()),
        "children": {k: {"pid": v["pid"], "state": v["state"], "exit_reason": v["exit_reason"]}
                     for k, v in results.items()},
        "reviewer_refused": results["reviewer"]["result"]["refused"],
    }
    ctx.fs.write_text("out/summary.txt", "\n".join(f"{k}: {v}" for k, v in counts.items()) + "\n")
    ctx.obj.put("summary", summary, type="DemoSummary")
    return summary
