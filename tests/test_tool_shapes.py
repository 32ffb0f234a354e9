"""``ctx.tools.call`` gives builtin tools the shape the contract lists (DESIGN.md,
"Shapes the checks rely on"): ``fs.read {path}`` returns the text, ``fs.write {path,
text, append?}`` writes it, ``net.fetch`` returns the body as text -- the same as the
agent loop offers a model. Before, a builtin called from code got the raw syscall's
shape: a read returned ``{size, path}`` and a write could not carry its text at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

# The loopback server's fixture, and a policy that lets a fetch through without a human.
from tests.test_net import ALLOW_NET, _Server, server  # noqa: F401

TOOLS = {"read_file": "builtin:fs.read", "write_file": "builtin:fs.write",
         "ls": "builtin:fs.list", "fetch": "builtin:net.fetch", "put": "builtin:obj.put"}


def test_builtin_tools_called_from_code_take_and_return_their_tool_shape(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path, server: _Server  # noqa: F811
) -> None:
    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("some notes\n")
    img = make_image("shapes", """
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            out = {"read": ctx.tools.call("read_file", {"path": "notes.txt"})}
            out["wrote"] = ctx.tools.call("write_file", {"path": "out.txt", "text": "one\\n"})
            ctx.tools.call("write_file", {"path": "out.txt", "text": "two\\n", "append": True})
            out["back"] = ctx.fs.read_text("out.txt")
            out["ls"] = sorted(e["name"] for e in ctx.tools.call("ls", {}))
            got = ctx.tools.call("fetch", {"url": args["url"]})
            out["fetch"] = [got["status"], got["text"]]
            # A builtin whose shape is its syscall's takes every argument the syscall does.
            out["put"] = ctx.tools.call("put", {"name": "k", "value": 1, "expect_version": 0})
            try:
                ctx.tools.call("write_file", {"path": "x.txt"})
            except InvalidArgument as e:
                out["missing_text"] = e.message
            return out
    """, caps=["fs:rw:./**", f"net:fetch:{server.base}/**"], tools=TOOLS)
    rec = run_proc(sup, img, {"url": f"{server.base}/hello"}, cwd=cwd,
                   policy=ALLOW_NET)
    assert rec.state == "exited", rec.error
    out = rec.result
    assert out["read"] == "some notes\n"
    assert out["back"] == "one\ntwo\n"
    assert out["ls"] == ["notes.txt", "out.txt"]
    assert out["fetch"] == [200, "hello, agent"]
    assert out["put"]["version"] == 1
    assert "text" in out["missing_text"] and "write_file" in out["missing_text"]
    assert not (cwd / "x.txt").exists()
    # Still one brokered tool.call each, audited under the tool's name.
    tools = [a.detail.get("tool") for a in sup.store.audit_records(pid=rec.pid)
             if a.detail.get("tool")]
    assert tools.count("write_file") == 2 and tools.count("read_file") == 1


def test_file_sdk_arguments_of_the_wrong_type_are_invalid_arguments(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Were AttributeError and TypeError, and write_bytes(path, 5) wrote five NUL bytes.
    img = make_image("types", """
        from agentlibos.errors import InvalidArgument
        def main(ctx, args):
            out = []
            for call in (lambda: ctx.fs.write_text("a.txt", b"bytes"),
                         lambda: ctx.fs.write_text("a.txt", None),
                         lambda: ctx.fs.write_bytes("a.txt", "text"),
                         lambda: ctx.fs.write_bytes("a.txt", 5)):
                try:
                    call()
                    out.append("written")
                except InvalidArgument as e:
                    out.append(e.message)
            out.append(ctx.fs.exists("a.txt"))
            return out
    """, caps=["fs:rw:./**"])
    rec = run_proc(sup, img)
    assert rec.state == "exited", rec.error
    *errors, exists = rec.result
    assert errors == [
        "write_text: text must be a str, not bytes (write_bytes takes bytes)",
        "write_text: text must be a str, not NoneType",
        "write_bytes: data must be bytes, not str (write_text takes a str)",
        "write_bytes: data must be bytes, not int (write_text takes a str)"]
    assert exists is False


@pytest.mark.deno
@pytest.mark.privileged
def test_a_jit_tool_call_from_code_does_not_load_the_builtin_shapes(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # The shapes need the agent loop's module (jsonschema) and the image read again: a
    # JIT tool's call took ~45 ms longer when its first call paid for them.
    img = make_image("jitonly", """
        import sys
        def main(ctx, args):
            n = ctx.tools.call("double", {"n": 21})
            before = "agentlibos.sdk.agent_loop" in sys.modules
            ctx.tools.call("put", {"name": "k", "value": n})
            return [n, before, "agentlibos.sdk.agent_loop" in sys.modules]
    """, caps=["obj:rw:self"], tools={"double": "jit:tools/double.ts", "put": "builtin:obj.put"},
        files={"tools/double.ts": "export default function (args: { n: number }): number {\n"
                                  "  return args.n * 2;\n}\n"})
    rec = run_proc(sup, img)
    assert (rec.state, rec.result) == ("exited", [42, False, True]), rec.error
