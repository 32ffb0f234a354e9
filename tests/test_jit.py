"""JIT TypeScript tools with real Deno: the contract, the authority, the holes, failures."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.kernel.image import load_image
from agentlibos.kernel.policy import parse_policy
from agentlibos.sandbox.profile import LAYERS
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.control import op_caps
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, log_of, run_proc

pytestmark = [pytest.mark.deno, pytest.mark.privileged]


# An agent that calls one tool with the args it was given and reports what happened.
CALLER = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for call_args in args["calls"]:
        try:
            out.append({"ok": True, "value": ctx.tools.call(args["tool"], call_args)})
        except LibOSError as e:
            out.append({"ok": False, "type": type(e).__name__, "code": e.code,
                        "message": e.message})
    return out
"""


def tool_image(make_image: MakeImage, name: str, ts: str, *, caps: list[str] | None = None,
               tool_options: str = "", files: dict[str, str] | None = None) -> Path:
    """An image whose tool ``t`` is the TypeScript ``ts``."""
    target = f'{{ target = "jit:tools/t.ts"{tool_options} }}' if tool_options \
        else '"jit:tools/t.ts"'
    img = make_image(name, CALLER, caps=caps if caps is not None else ["jit:*:*", "fs:rw:./**"],
                     files={"tools/t.ts": ts, **(files or {})})
    toml = img / "image.toml"
    toml.write_text(toml.read_text().replace("[capabilities]", f"[tools]\nt = {target}\n\n"
                                                               "[capabilities]"))
    return img


def call_tool(sup: Supervisor, img: Path, calls: list[dict[str, Any]],
              cwd: Path | None = None) -> list[dict[str, Any]]:
    rec = run_proc(sup, img, {"tool": "t", "calls": calls}, cwd=cwd, timeout_s=90)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    result: list[dict[str, Any]] = rec.result
    return result


def test_a_pure_tool_returns_its_value_and_runs_in_every_layer(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = tool_image(make_image, "pure", """
        export default function (args: { text: string }, libos: Libos): unknown {
          return { words: args.text.split(/\\s+/).filter((w) => w).length, pid: Deno.pid };
        }
    """)
    out = call_tool(sup, img, [{"text": "one two three"}, {"text": "x"}])
    assert out == [{"ok": True, "value": {"words": 3, "pid": 1}},
                   {"ok": True, "value": {"words": 1, "pid": 1}}]
    audit = sup.store.audit_records()
    assert len([a for a in audit if a.call == "jit.start"]) == 1  # one warm process
    # served both calls, after one sandboxed `deno check` before the first: both in
    # every layer.
    contain = [a for a in audit if a.call == "jit.contain"]
    assert len(contain) == 2
    assert all(set(c.detail["layers"]) == set(LAYERS) for c in contain)


def test_a_tool_reads_an_allowed_file_through_libos_audited_with_its_name(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("alpha beta gamma")
    img = tool_image(make_image, "reader", """
        export default async function (args: { path: string }, libos: Libos): Promise<unknown> {
          const text = await libos.fs.readText(args.path);
          await libos.obj.put("seen", text.length, { type: "int" });
          return { text, seen: await libos.obj.get("seen") };
        }
    """)
    out = call_tool(sup, img, [{"path": "notes.txt"}], cwd=proj)
    assert out == [{"ok": True, "value": {"text": "alpha beta gamma", "seen": 16}}]
    via_tool = [a for a in sup.store.audit_records() if a.detail.get("tool") == "t"
                and a.call in ("fs.read", "obj.put", "obj.get")]
    assert [a.call for a in via_tool] == ["fs.read", "obj.put", "obj.get"]
    assert via_tool[0].request == f"fs:read:{proj}/notes.txt"


def test_a_refused_read_is_permission_denied_in_the_tool_and_in_the_agent(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    img = tool_image(make_image, "refused", """
        export default async function (args: { path: string; catch: boolean },
                                       libos: Libos): Promise<unknown> {
          if (!args.catch) return await libos.fs.readText(args.path);
          try {
            return await libos.fs.readText(args.path);
          } catch (e) {
            const err = e as { name: string; code: string };
            return { caught: err.name, code: err.code };
          }
        }
    """)
    out = call_tool(sup, img, [{"path": str(secret), "catch": True},
                               {"path": str(secret), "catch": False}])
    assert out[0] == {"ok": True, "value": {"caught": "PermissionDenied", "code": "EPERM"}}
    assert out[1]["ok"] is False
    assert (out[1]["type"], out[1]["code"]) == ("PermissionDenied", "EPERM")
    assert str(secret) in out[1]["message"]
    assert "do not read" not in json.dumps(out)


def test_a_tool_is_narrowed_to_the_capabilities_it_declares(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    (proj / "pub").mkdir(parents=True)
    (proj / "pub/a.txt").write_text("public")
    (proj / "private.txt").write_text("private")
    img = tool_image(make_image, "narrow", """
        export default async function (args: { path: string }, libos: Libos): Promise<string> {
          return await libos.fs.readText(args.path);
        }
    """, tool_options=', caps = ["fs:read:./pub/**"]')
    out = call_tool(sup, img, [{"path": "pub/a.txt"}, {"path": "private.txt"}], cwd=proj)
    assert out[0] == {"ok": True, "value": "public"}
    assert (out[1]["ok"], out[1]["code"]) == (False, "EPERM")


READS_AND_LISTS = """
    export default async function (args: { path: string }, libos: Libos): Promise<unknown> {
      const held = await libos.syscall("cap.list", {});
      try {
        return { held, text: await libos.fs.readText(args.path) };
      } catch (e) {
        return { held, refused: String(e) };
      }
    }
"""


def test_a_tool_declared_with_an_empty_caps_list_holds_nothing(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # `caps = []` is the least-privilege spelling: it was taken as "not narrowed", and the
    # tool held everything its caller did (audit 4-a, M1). Leaving the key out keeps that.
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "a.txt").write_text("secret")
    none = tool_image(make_image, "nocaps", READS_AND_LISTS, tool_options=", caps = []")
    (out,) = call_tool(sup, none, [{"path": "a.txt"}], cwd=proj)
    assert out["ok"] and out["value"]["held"] == [], out
    assert "PermissionDenied" in out["value"]["refused"] and "secret" not in str(out)
    # Whose capability was missing: the tool's declared set, not the process's.
    assert "does not hold through tool t, which acts only with the caps its [tools] entry " \
        "declares (none)" in out["value"]["refused"], out
    inherit = tool_image(make_image, "inherits", READS_AND_LISTS, tool_options=", timeout = 20")
    (out,) = call_tool(sup, inherit, [{"path": "a.txt"}], cwd=proj)
    assert out["value"]["text"] == "secret" and "fs:rw:" + str(proj) + "/**" in out["value"]["held"]


REGISTERS_WITH_CAPS = """
def main(ctx, args):
    ctx.jit.register("r", args["source"], caps=args["caps"])
    return ctx.tools.call("r", {"path": "a.txt"})
"""


@pytest.mark.parametrize(("caps", "reads"), [([], False), (None, True)])
def test_a_tool_registered_with_an_empty_caps_list_holds_nothing(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path, caps: list[str] | None,
    reads: bool,
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "a.txt").write_text("secret")
    img = make_image("regcaps", REGISTERS_WITH_CAPS, caps=["jit:*:*", "fs:rw:./**"])
    rec = run_proc(sup, img, {"source": textwrap.dedent(READS_AND_LISTS), "caps": caps},
                   cwd=proj, timeout_s=90)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert (rec.result.get("text") == "secret") is reads, rec.result
    assert (rec.result["held"] == []) is not reads, rec.result
    reg = next(a for a in sup.store.audit_records(pid=rec.pid)
               if a.call == "jit.register" and a.verdict == "info")
    assert reg.detail["caps"] == caps


def test_args_are_checked_against_the_schema_before_the_call(
    sup: Supervisor, make_image: MakeImage
) -> None:
    schema = json.dumps({"type": "object", "required": ["n"],
                         "properties": {"n": {"type": "integer", "minimum": 0}},
                         "additionalProperties": False})
    img = tool_image(make_image, "schemed", """
        export default function (args: { n: number }, libos: Libos): number { return args.n * 2; }
    """, tool_options=', schema = "tools/t.schema.json"', files={"tools/t.schema.json": schema})
    out = call_tool(sup, img, [{"n": 21}, {"n": -1}, {"m": 1}, {"n": "x"}])
    assert out[0] == {"ok": True, "value": 42}
    for bad in out[1:]:
        assert (bad["ok"], bad["code"]) == (False, "EINVAL"), bad


# ------------------------------------------------------------- no permissions, no holes


@pytest.fixture
def host_listener() -> Iterator[dict[str, Any]]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                seen.append("connected")
                c.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield {"port": srv.getsockname()[1], "seen": seen}
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_deno_apis_are_all_refused(
    sup: Supervisor, make_image: MakeImage, host_listener: dict[str, Any], tmp_path: Path
) -> None:
    secret = tmp_path / "host.json"
    secret.write_text('{"token": "hunter2"}')
    secret.chmod(0o644)
    img = tool_image(make_image, "apis", """
        async function attempt(f: () => unknown): Promise<string> {
          try { await f(); return "ALLOWED"; } catch (e) { return (e as Error).name; }
        }
        export default async function (args: { port: number; secret: string },
                                       libos: Libos): Promise<unknown> {
          return {
            readTextFile: await attempt(() => Deno.readTextFile(args.secret)),
            readDir: await attempt(() => Array.from(Deno.readDirSync("/"))),
            writeTextFile: await attempt(() => Deno.writeTextFile("/tmp/x", "x")),
            fetch: await attempt(() => fetch(`http://127.0.0.1:${args.port}/`)),
            connect: await attempt(() => Deno.connect({ hostname: "127.0.0.1", port: args.port })),
            command: await attempt(() => new Deno.Command("/bin/sh", { args: ["-c", "true"] })
              .outputSync()),
            env: await attempt(() => Deno.env.get("HOME")),
            envAll: await attempt(() => Deno.env.toObject()),
            ffi: await attempt(() => Deno.dlopen("/lib/x86_64-linux-gnu/libc.so.6", {})),
            dynamicImport: await attempt(() => import(args.secret, { with: { type: "json" } })),
          };
        }
    """)
    out = call_tool(sup, img, [{"port": host_listener["port"], "secret": str(secret)}])
    assert out[0]["ok"] is True, out
    for api, outcome in out[0]["value"].items():
        assert outcome != "ALLOWED", api
        assert outcome in ("NotCapable", "PermissionDenied", "TypeError"), (api, outcome)
    assert host_listener["seen"] == []
    assert "hunter2" not in json.dumps(out)


def test_a_literal_json_import_of_a_host_file_does_not_read_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # Deno loads literal imports while building the module graph, without asking for
    # read permission (even --deny-read does not stop it): the OS sandbox must.
    secret = tmp_path / "host-secret.json"
    secret.write_text('{"token": "hunter2"}')
    secret.chmod(0o644)
    img = tool_image(make_image, "jsonimport", f"""
        import data from "{secret.as_uri()}" with {{ type: "json" }};
        export default function (args: Record<string, never>, libos: Libos): unknown {{
          return data;
        }}
    """)
    out = call_tool(sup, img, [{}])
    # The type check before its first use, sandboxed like the run, cannot read it either.
    assert (out[0]["ok"], out[0]["type"]) == (False, "InvalidArgument")
    assert "does not pass `deno check`" in out[0]["message"]
    assert f"Cannot find module '{secret.as_uri()}'" in out[0]["message"]
    assert "hunter2" not in json.dumps(out)


def test_import_of_etc_passwd_leaks_no_line_of_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Unsandboxed, this fails with a SyntaxError that quotes the file's first line.
    img = tool_image(make_image, "passwd", """
        export default async function (args: Record<string, never>, libos: Libos):
            Promise<unknown> {
          try {
            return await import("/etc/passwd");
          } catch (e) {
            return String(e);
          }
        }
    """)
    out = call_tool(sup, img, [{}])
    assert out == [{"ok": True, "value": 'TypeError: Module not found "file:///etc/passwd".'}]
    log = "".join(p.read_text() for p in sup.paths.logs.glob("*.t.log"))
    assert "root:" not in log


def test_npm_imports_download_nothing(sup: Supervisor, make_image: MakeImage) -> None:
    img = tool_image(make_image, "npm", """
        export default async function (args: Record<string, never>, libos: Libos):
            Promise<unknown> {
          try {
            await import("npm:is-number@7.0.0");
            return "LOADED";
          } catch (e) {
            return (e as Error).message;
          }
        }
    """)
    out = call_tool(sup, img, [{}])
    assert out == [{"ok": True,
                    "value": "npm specifiers were requested; but --no-npm is specified"}]


# ------------------------------------------------------------------------- failures


def deno_processes(sup: Supervisor | None = None) -> list[psutil.Process]:
    """Live Deno processes, less ``sup``'s pooled workers (started ahead, no tool yet)."""
    pooled = {w.host_pid for w in sup.jit.pool} if sup is not None else set()
    return [p for p in psutil.process_iter(["name", "status"])
            if p.info["name"] == "deno" and p.info["status"] != "zombie"
            and p.pid not in pooled]


@pytest.mark.slow
def test_an_endless_loop_is_killed_at_its_timeout_and_nothing_keeps_running(
    sup: Supervisor, make_image: MakeImage
) -> None:
    before = {p.pid for p in deno_processes()}
    img = tool_image(make_image, "spin", """
        export default function (args: { spin: boolean }, libos: Libos): string {
          while (args.spin) { /* forever */ }
          return "done";
        }
    """, tool_options=', timeout = "1s"')
    out = call_tool(sup, img, [{"spin": True}, {"spin": False}])
    assert (out[0]["ok"], out[0]["type"]) == (False, "Timeout")
    assert "did not return within 1 s" in out[0]["message"]
    assert out[1] == {"ok": True, "value": "done"}  # a fresh process took over
    assert sup.run_until(lambda: {p.pid for p in deno_processes(sup)} <= before, 10)


def test_an_exception_and_malformed_output_are_typed_errors(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = tool_image(make_image, "bad", """
        export default function (args: { how: string }, libos: Libos): unknown {
          if (args.how === "throw") throw new RangeError("out of range: 7");
          if (args.how === "stdout") {
            Deno.stdout.writeSync(new TextEncoder().encode("not json at all\\n"));
            return 1;
          }
          if (args.how === "bigint") return { n: 10n };
          if (args.how === "function") return () => 1;
          return "fine";
        }
    """)
    out = call_tool(sup, img, [{"how": "throw"}, {"how": "stdout"}, {"how": "bigint"},
                               {"how": "function"}, {"how": "ok"}])
    assert (out[0]["type"], out[0]["code"]) == ("ToolError", "ETOOL")
    assert "RangeError: out of range: 7" in out[0]["message"]
    assert out[1]["type"] == "ToolError" and "not the protocol" in out[1]["message"]
    assert out[2]["type"] == "ToolError"
    # Not "wrote something that is not the protocol": it wrote nothing.
    assert out[3]["type"] == "ToolError" and "returned a function, which is not a JSON " \
        "value" in out[3]["message"], out[3]
    assert out[4] == {"ok": True, "value": "fine"}


def test_a_memory_blow_up_is_limit_exceeded(sup: Supervisor, make_image: MakeImage) -> None:
    img = tool_image(make_image, "hog", """
        export default function (args: Record<string, never>, libos: Libos): number {
          const keep: Uint8Array[] = [];
          for (;;) keep.push(new Uint8Array(64 << 20).fill(1));
        }
    """)
    out = call_tool(sup, img, [{}])
    # ArrayBuffers live outside V8's heap: the cgroup's OOM killer is what stops this.
    assert (out[0]["ok"], out[0]["type"], out[0]["code"]) == (False, "LimitExceeded", "ELIMIT")
    assert "ran out of memory" in out[0]["message"]


def test_a_heap_blow_up_is_limit_exceeded_not_a_crash(sup: Supervisor,
                                                      make_image: MakeImage) -> None:
    img = tool_image(make_image, "heaphog", """
        export default function (args: Record<string, never>, libos: Libos): number {
          const keep: string[] = [];
          for (;;) keep.push("y".repeat(1e6) + keep.length);
        }
    """)
    out = call_tool(sup, img, [{}])
    # Strings live in V8's heap: V8 stops at --max-old-space-size (a trap, with a C stack
    # trace in the log), before the cgroup's limit; the caller hears the same limit.
    assert (out[0]["ok"], out[0]["type"], out[0]["code"]) == (False, "LimitExceeded", "ELIMIT")
    assert "ran out of memory (its JavaScript heap reached V8's limit" in out[0]["message"]
    assert "stack trace" not in out[0]["message"]


def test_tools_die_with_their_process_and_are_not_shared_between_processes(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = tool_image(make_image, "pidtool", """
        let calls = 0;
        export default function (args: Record<string, never>, libos: Libos): number {
          return ++calls;  // state lives as long as this warm process
        }
    """)
    first = call_tool(sup, img, [{}, {}, {}])
    second = call_tool(sup, img, [{}])
    assert [o["value"] for o in first] == [1, 2, 3]
    assert second == [{"ok": True, "value": 1}]  # a new process, a new Deno
    assert sup.run_until(lambda: set(sup.jit.by_wid.values()) <= set(sup.jit.pool), 10)
    assert not any(p for p in deno_processes(sup) if p.ppid() == sup.zygote.pid)


# ------------------------------------------------------------------- registration


REGISTER = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = {}
    try:
        ctx.jit.register(args["name"], args["source"], schema=args.get("schema"))
        out["registered"] = True
        out["call"] = ctx.tools.call(args["name"], args.get("args", {}))
    except LibOSError as e:
        out["error"] = {"type": type(e).__name__, "code": e.code, "message": e.message}
    return out
"""

GOOD = textwrap.dedent("""
    export default function (args: { a: number; b: number }, libos: Libos): number {
      return args.a + args.b;
    }
""")


def test_a_tool_registered_at_run_time_is_checked_then_callable(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("registrar", REGISTER, caps=["jit:register:adder", "jit:invoke:adder"])
    rec = run_proc(sup, img, {"name": "adder", "source": GOOD, "args": {"a": 2, "b": 40}},
                   timeout_s=90)
    assert rec.result == {"registered": True, "call": 42}, (rec.error, rec.result)
    reg = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "jit.register"]
    assert [a.verdict for a in reg] == ["allow", "info"]


def test_a_tool_that_fails_the_type_check_is_refused_with_the_compiler_message(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("badtypes", REGISTER, caps=["jit:*:*"])
    source = 'export default function (args: { a: number }, libos: Libos): number {\n' \
             '  return args.a.toUpperCase();\n}\n'
    rec = run_proc(sup, img, {"name": "broken", "source": source}, timeout_s=90)
    err = rec.result["error"]
    assert (err["type"], err["code"]) == ("InvalidArgument", "EINVAL")
    assert "does not pass `deno check`" in err["message"]
    assert "toUpperCase" in err["message"] and "TS2339" in err["message"]


def test_a_tool_written_as_design_shows_it_with_untyped_parameters_passes_the_check(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # DESIGN.md: "a TypeScript module whose default export is `async function (args,
    # libos)`" -- no types. Strict otherwise: the test above still fails its check.
    img = make_image("untyped", REGISTER, caps=["jit:*:*"])
    # The idioms of untyped code pass too: a `let` initialised to null and assigned a
    # string later, a caught error's `.message`.
    source = ("export default async function (args, libos) {\n"
              "  const me = await libos.syscall('proc.getpid', {});\n"
              "  let err = null;\n"
              "  try { JSON.parse('{'); } catch (e) { err = String(e.message).length > 0; }\n"
              "  return { doubled: args.x * 2, me, err };\n}\n")
    rec = run_proc(sup, img, {"name": "untyped", "source": source, "args": {"x": 21}},
                   timeout_s=90)
    me = {"pid": rec.pid, "ppid": None}
    assert rec.result == {"registered": True, "call": {"doubled": 42, "me": me, "err": True}}, \
        (rec.error, rec.result)


def test_registering_without_jit_register_is_refused(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("noreg", REGISTER, caps=["jit:invoke:*"])
    rec = run_proc(sup, img, {"name": "adder", "source": GOOD})
    assert rec.result["error"]["code"] == "EPERM"
    assert "jit:register:adder" in rec.result["error"]["message"]


def test_a_policy_can_make_registration_ask_a_human(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("askreg", REGISTER, caps=["jit:*:*"])
    policy = parse_policy('ask = ["jit:register:*"]\nallow = ["jit:*:*"]\n', "p")
    pid = sup.submit_run(str(img), {"name": "adder", "source": GOOD}, policy=policy)
    assert sup.run_until(lambda: bool(sup.store.ask_list()), 30)
    ask = sup.store.ask_list()[0]
    assert ask.request == "jit:register:adder"
    sup.approvals.deny(ask.id, reason="not today")
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert rec.result["error"]["code"] == "EPERM"
    assert "denied by the operator: not today" in rec.result["error"]["message"]


def test_listing_a_tool_requests_its_jit_invoke_and_the_launcher_can_still_withhold_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # DESIGN's image lists word_count in [tools] and requests no jit:invoke: the listing
    # is the request. The grant still cuts it: a policy that denies it is obeyed.
    img = tool_image(make_image, "noinvoke", GOOD, caps=["fs:rw:./**"])
    assert call_tool(sup, img, [{"a": 1, "b": 2}]) == [{"ok": True, "value": 3}]
    assert "jit:invoke:t" in [str(c) for c in load_image(img).requested]
    rec = run_proc(sup, img, {"tool": "t", "calls": [{"a": 1, "b": 2}]}, timeout_s=90,
                   policy=parse_policy('deny = ["jit:invoke:*"]\ndefault = "allow"\n', "p"))
    [out] = rec.result
    assert (out["ok"], out["code"]) == (False, "EPERM"), out
    assert "jit:invoke:t" in out["message"]


DROPPER_CALLER = """
def main(ctx, args):
    before = ctx.caps.list()
    dropped = ctx.tools.call("t", {})
    return {"before": before, "tool_held": dropped, "after": ctx.caps.list(),
            "read": ctx.fs.read_text("private.txt")}
"""


def test_a_tool_that_drops_capabilities_drops_only_its_own(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # Before: a tool declared with fs:read:./pub/** called cap.drop and its caller lost
    # every capability. A tool acts on its own narrowed set, never on its caller's.
    proj = tmp_path / "proj"
    (proj / "pub").mkdir(parents=True)
    (proj / "private.txt").write_text("private")
    img = make_image("dropcaller", DROPPER_CALLER, caps=["jit:*:*", "fs:rw:./**"], files={
        "tools/t.ts": """
            export default async function (args: Record<string, never>, libos: Libos):
                Promise<unknown> {
              return await libos.syscall("cap.drop", { cap: "fs:read:./pub/**" });
            }
        """})
    toml = img / "image.toml"
    toml.write_text(toml.read_text().replace(
        "[capabilities]",
        '[tools]\nt = { target = "jit:tools/t.ts", caps = ["fs:read:./pub/**"] }\n\n'
        "[capabilities]"))
    rec = run_proc(sup, img, cwd=proj, timeout_s=90)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    out = rec.result
    assert out["tool_held"] == []  # the tool gave up the only thing it held
    assert out["after"] == out["before"]
    assert out["read"] == "private"
    assert sup.store.get_caps(rec.pid) == out["before"]


def test_a_tree_holds_at_most_its_bound_of_tool_processes(
    paths: Paths, make_image: MakeImage
) -> None:
    # Before: jit.register made the number of Deno processes per agent unbounded.
    tools = {f"t{i}": f"jit:tools/t{i}.ts" for i in range(3)}
    files = {f"tools/t{i}.ts": f"""
        export default function (args: Record<string, never>, libos: Libos): number {{
          return {i};
        }}
    """ for i in range(3)}
    img = make_image("three", """
        def main(ctx, args):
            return [ctx.tools.call(n, {}) for n in ("t0", "t1", "t2", "t0")]
    """, caps=["jit:invoke:*"], tools=tools, files=files)
    with Supervisor(paths, SupervisorConfig(max_helpers_per_tree=2),
                    sandbox=default_sandbox()) as s:
        rec = run_proc(s, img, timeout_s=120)
        assert rec.result == [0, 1, 2, 0], (rec.error, log_of(s, rec.pid))
        starts = [r.detail["tool"] for r in s.store.audit_records() if r.call == "jit.start"]
        # t0 was stopped to make room for t2 (two at a time), so its second call starts
        # a fresh process.
        assert starts == ["t0", "t1", "t2", "t0"]


def test_a_capability_revoked_while_a_tool_runs_is_gone_from_its_next_syscall(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # The tool's caller was its process narrowed when the call was queued: a revoke
    # mid-call left the tool reading for as long as it ran (up to an hour).
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "secret.txt").write_text("SECRET")
    img = tool_image(make_image, "looper", """
        export default async function (_a: unknown, libos: Libos): Promise<unknown> {
          let reads = 0;
          for (let i = 0; i < 600; i++) {
            try {
              await libos.fs.readText("secret.txt");
              reads++;
            } catch (e) {
              return { reads, refused: (e as { name: string }).name };
            }
            await new Promise((r) => setTimeout(r, 50));
          }
          return { reads, refused: null };
        }
    """, caps=["jit:*:*", "fs:read:./**"])
    pid = sup.submit_run(str(img), {"tool": "t", "calls": [{}]}, cwd=str(proj))

    def tool_reads() -> int:
        return sum(1 for a in sup.store.audit_records()
                   if a.call == "fs.read" and a.detail.get("tool") == "t")

    assert sup.run_until(lambda: tool_reads() >= 2, 60), log_of(sup, pid)
    replies: list[dict[str, Any]] = []
    op_caps.caps_revoke(sup.control_ctx, {"op": "caps_revoke", "pid": pid,
                                          "cap": "fs:read:./**"}, replies.append)
    assert replies and replies[0]["ok"], replies
    after = tool_reads()
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, pid))
    [out] = rec.result
    assert out["ok"] and out["value"]["refused"] == "PermissionDenied", out
    # At most the read already on its way when the revoke came.
    assert out["value"]["reads"] <= after + 1, (out, after)
