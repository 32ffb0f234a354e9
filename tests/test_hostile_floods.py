"""Hostile agents against the shared supervisor: connections without end to the broker,
and a JIT tool flooding syscalls it never reads the answers of. Each costs the agent its
own bounds; the supervisor and the other agents go on."""

from __future__ import annotations

import textwrap
import threading
import time

import psutil
import pytest

from agentlibos.sandbox.namespaces import BROKER_INSIDE
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, log_of, run_proc
from tests.test_jit import tool_image

pytestmark = pytest.mark.privileged


def test_an_agent_opening_many_broker_connections_gets_its_few_and_goes_on(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("conns", f"""
        import socket, time
        from agentlibos.protocol import zmtp
        def main(ctx, args):
            socks, closed = [], 0
            for _ in range(20):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect({BROKER_INSIDE!r})
                try:
                    s.sendall(zmtp.GREETING)
                except OSError:  # closed already (EPIPE, ECONNRESET)
                    closed += 1
                    continue
                socks.append(s)
            time.sleep(1)
            for s in socks:
                s.settimeout(2)
                try:
                    closed += s.recv(64) == b""
                except ConnectionResetError:  # closed with its greeting unread
                    closed += 1
                except OSError:
                    pass
            return {{"closed": closed, "pid": ctx.proc.getpid()}}
    """)
    quick = make_image("quick", "def main(ctx, args):\n    return ctx.proc.getpid()\n")
    rec = run_proc(sup, img, timeout_s=60)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    # Four connections per agent (its cgroup), its SDK's among them: the rest are closed
    # at once; its own calls go on over the SDK's.
    assert 16 <= rec.result["closed"] <= 17, rec.result
    assert rec.result["pid"] == rec.pid
    assert run_proc(sup, quick).exit_reason == "returned"  # another agent is served


def test_a_tool_flooding_syscalls_it_never_reads_is_paced_not_served_without_end(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # It writes 1,500 requests for a 1 MB object, then spins: its runner reads none of
    # the answers. Served without pause they would be 1.5 GB in the supervisor's memory.
    img = tool_image(make_image, "flood", textwrap.dedent("""
        export default function (args: { n: number }, libos: Libos): unknown {
          const enc = new TextEncoder();
          for (let i = 0; i < args.n; i++) {
            const msg = { op: "syscall", id: 1000 + i, name: "obj.get",
                          params: { name: "big" } };
            Deno.stdout.writeSync(enc.encode(JSON.stringify(msg) + "\\n"));
          }
          const end = Date.now() + 10000;
          while (Date.now() < end) { /* spin: nothing reads stdin */ }
          return 1;
        }
    """), tool_options=', timeout = "6s"')
    (img / "agent.py").write_text(textwrap.dedent("""
        from agentlibos.errors import LibOSError
        def main(ctx, args):
            ctx.obj.put("big", "x" * 1_000_000)
            try:
                return ctx.tools.call("t", {"n": 1500})
            except LibOSError as e:
                return {"error": type(e).__name__, "message": e.message}
    """))
    me = psutil.Process()
    base, peak = me.memory_info().rss, [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rec = run_proc(sup, img, timeout_s=90)
    finally:
        done.set()
        sampler.join()
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert rec.result.get("error") == "Timeout", rec.result
    # The supervisor is this process: what the flood cost it is a few answers' worth.
    assert peak[0] - base < 100 << 20, (peak[0] - base) >> 20
