"""How the Deno runner reads its pipe (agentlibos/jit/runner.js, lines()).

Between calls the runner waits in a blocking read (the fastest wake-up); during a call it
reads only while an answer is due, asynchronously, so the tool's own timers and async
work keep running. These tools use exactly that: timers with no syscall pending, an
async digest, a timer racing a syscall, and work left running after a call returns.
"""

from __future__ import annotations

from pathlib import Path

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage
from tests.test_jit import call_tool, tool_image

ASYNC_WORK = """
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let ticks = 0;
    export default async function (args: { mode: string }, libos: Libos): Promise<unknown> {
      if (args.mode === "timer") {
        const t0 = Date.now();
        await sleep(30);
        await sleep(20);
        return Date.now() - t0 >= 45;
      }
      if (args.mode === "digest") {
        const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc"));
        return Array.from(new Uint8Array(d).slice(0, 4));
      }
      if (args.mode === "race") {
        // A timer and a syscall at once: both settle, in a call that waits on both.
        const [slept, st] = await Promise.all([
          sleep(25).then(() => "slept"),
          libos.fs.stat("probe.txt"),
        ]);
        return [slept, (st as { size: number }).size];
      }
      if (args.mode === "background") {
        // Left running when the call returns: a warm process's timers run during its
        // next call, not between calls.
        setInterval(() => ticks++, 5);
        return ticks;
      }
      if (args.mode === "ticks") {
        await sleep(40);
        return ticks > 0;
      }
      throw new Error("unknown mode");
    }
"""


def test_a_tools_timers_and_async_work_run_during_its_call(
        sup: Supervisor, make_image: MakeImage, tmp_path: Path) -> None:
    (tmp_path / "probe.txt").write_text("12345")
    img = tool_image(make_image, "asyncwork", ASYNC_WORK)
    out = call_tool(sup, img, [{"mode": "timer"}, {"mode": "digest"}, {"mode": "race"},
                               {"mode": "background"}, {"mode": "ticks"},
                               {"mode": "timer"}],
                    cwd=tmp_path)
    assert out == [
        {"ok": True, "value": True},
        {"ok": True, "value": [0xBA, 0x78, 0x16, 0xBF]},  # SHA-256("abc")
        {"ok": True, "value": ["slept", 5]},
        {"ok": True, "value": 0},
        {"ok": True, "value": True},
        {"ok": True, "value": True},
    ], out
