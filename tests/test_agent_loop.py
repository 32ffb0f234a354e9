"""The built-in agent loop: real sandboxed agents whose "model" is a script or a real
OpenAI-compatible server on loopback; what the model sends is untrusted input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentlibos.config import Paths
from agentlibos.demo import run_llm_demo
from agentlibos.errors import ImageError
from agentlibos.kernel.image import AGENT_LOOP_ENTRY, load_image
from agentlibos.kernel.image import BUILTIN_TOOLS as IMAGE_BUILTINS
from agentlibos.kernel.policy import parse_policy
from agentlibos.launcher import run_image
from agentlibos.sdk.agent_loop import BUILTIN_TOOLS, tool_table
from agentlibos.store import open_store
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import log_of, run_proc
from tests.openai_server import Answer, FakeOpenAI

TOOLS = {"read_file": "builtin:fs.read", "write_file": "builtin:fs.write",
         "list_dir": "builtin:fs.list"}


def agent_image(root: Path, name: str, *, model: str = "script/any", max_steps: int = 10,
                caps: tuple[str, ...] = ("fs:read:./**", "fs:write:./out/**",
                                         "model:call:*"),
                tools: dict[str, str] | None = None, tokens: int | None = None,
                prompt: str = "You are a careful test agent.") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["[image]", f'name = "{name}"', "", "[agent]", f'model = "{model}"',
             f"prompt = {json.dumps(prompt)}", f"max_steps = {max_steps}", "", "[tools]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (tools or TOOLS).items()]
    lines += ["", "[capabilities]", f"request = {json.dumps(list(caps))}"]
    if tokens is not None:
        lines += ["", "[limits]", f"tokens = {tokens}"]
    (d / "image.toml").write_text("\n".join(lines) + "\n")
    return d


def scripted_sup(paths: Paths, responses: list[dict[str, Any]]) -> Supervisor:
    paths.home.mkdir(parents=True, exist_ok=True)
    script = paths.home / "script.json"
    script.write_text(json.dumps({"responses": responses}))
    (paths.home / "config.toml").write_text(
        f'[models.script]\nkind = "scripted"\nscript = "{script}"\n')
    s = Supervisor(paths, sandbox=default_sandbox())
    s.start()
    return s


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    (p / "out").mkdir(parents=True)
    (p / "notes.txt").write_text("lighthouses guide ships")
    return p


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


# ------------------------------------------------------------------ pure


def test_every_builtin_tool_has_a_valid_schema_and_a_description() -> None:
    for ref in set(IMAGE_BUILTINS.values()):
        tool = BUILTIN_TOOLS[ref]
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert tool.parameters["type"] == "object" and len(tool.description) > 20


def test_the_loop_builtins_take_the_arguments_the_contract_names() -> None:
    want = {"fs.read": ({"path"}, {"path"}), "fs.write": ({"path", "text", "append"},
                                                          {"path", "text"}),
            "fs.list": ({"path"}, set()), "fs.delete": ({"path", "recursive"}, {"path"}),
            "human.ask": ({"question", "choices"}, {"question"}),
            "events.wait": ({"name", "timeout"}, {"name"}),
            "events.post": ({"name", "payload"}, {"name"}),
            "clock.sleep": ({"seconds"}, {"seconds"}),
            "shell.exec": ({"argv", "stdin", "timeout"}, {"argv"}),
            "net.fetch": ({"url", "method", "headers", "body"}, {"url"})}
    for name, (props, required) in want.items():
        params = BUILTIN_TOOLS[IMAGE_BUILTINS[name]].parameters
        assert set(params["properties"]) == props, name
        assert set(params["required"]) == required, name


def test_an_agent_image_without_entry_runs_the_builtin_loop(tmp_path: Path) -> None:
    img = load_image(agent_image(tmp_path, "a", tokens=500), agent_ids=None)
    assert (img.entry_module, img.entry_function) == AGENT_LOOP_ENTRY
    assert img.agent is not None and img.agent.model == "script/any"
    assert img.limits.tokens == 500
    fns = tool_table(img.tools)
    assert set(fns) == {"read_file", "write_file", "list_dir"}


def test_a_bad_agent_table_is_refused_naming_the_key(tmp_path: Path) -> None:
    for body, says in [('model = "gpt"', "provider/model"),
                       ('model = "a/b"\nmax_steps = 0', "max_steps"),
                       ('model = "a/b"\nprompt_file = "../x"', "prompt_file"),
                       ('model = "a/b"\ntemperature = 1', "unknown key")]:
        d = tmp_path / "bad"
        d.mkdir(exist_ok=True)
        (d / "image.toml").write_text(f'[image]\nname = "bad"\n[agent]\n{body}\n')
        with pytest.raises(ImageError, match=says):
            load_image(d, agent_ids=None)


# ------------------------------------------------------------------ scripted, sandboxed


def test_a_scripted_agent_reads_is_refused_a_write_sees_it_and_answers(
        paths: Paths, project: Path, tmp_path: Path) -> None:
    sup = scripted_sup(paths, [
        call("list_dir"),
        call("read_file", path="notes.txt"),
        call("write_file", path="/etc/evil.txt", text="x"),
        call("write_file", path="out/summary.txt", text="ships"),
        {"content": "Done: lighthouses guide ships."},
    ])
    try:
        rec = run_proc(sup, agent_image(tmp_path, "reader"), {"task": "summarise"},
                       cwd=project)
        assert rec.state == "exited", log_of(sup, rec.pid)
        res = rec.result
        assert res["answer"] == "Done: lighthouses guide ships."
        assert res["steps"] == 5 and "stopped" not in res
        assert res["usage"]["total_tokens"] > 0
        assert (project / "out/summary.txt").read_text() == "ships"
        assert not Path("/etc/evil.txt").exists()
        denied = [a for a in sup.store.audit_records(pid=rec.pid) if a.verdict == "deny"]
        assert denied and denied[0].detail.get("tool") == "write_file"
        assert sup.store.verify_audit().ok
    finally:
        sup.stop()


def test_bad_tool_calls_become_tool_results_and_max_steps_ends_the_loop(
        paths: Paths, project: Path, tmp_path: Path) -> None:
    sup = scripted_sup(paths, [
        call("no_such_tool"),
        {"tool_calls": [{"name": "read_file", "arguments": "{not json"}]},
        call("read_file", path=7),
        call("write_file", path="out/x"),
        call("read_file", path="notes.txt"),
    ])
    try:
        rec = run_proc(sup, agent_image(tmp_path, "loopy", max_steps=4), {"task": "t"},
                       cwd=project)
        assert rec.state == "exited", log_of(sup, rec.pid)
        assert rec.result["steps"] == 4 and rec.result["stopped"] == "max_steps"
    finally:
        sup.stop()


# ------------------------------------------------------------------ a real HTTP model


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def http_sup(paths: Paths, server: FakeOpenAI) -> Supervisor:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "config.toml").write_text(
        f'[models.local]\nkind = "openai"\nbase_url = "{server.base_url}"\n')
    s = Supervisor(paths, sandbox=default_sandbox())
    s.start()
    return s


def _tool_results(server: FakeOpenAI, i: int) -> list[str]:
    return [m["content"] for m in server.received[i]["body"]["messages"]
            if m["role"] == "tool"]


def test_the_model_sees_schemas_tool_results_refusals_and_invalid_calls(
        paths: Paths, project: Path, tmp_path: Path, server: FakeOpenAI) -> None:
    server.plan.extend([
        Answer(content=None, tool_calls=[{"name": "read_file",
                                          "arguments": {"path": "notes.txt"}},
                                         {"name": "write_file",
                                          "arguments": {"path": "../outside.txt",
                                                        "text": "x"}}]),
        Answer(content=None, tool_calls=[{"name": "write_file", "arguments": {"path": 3}},
                                         {"name": "rm_rf", "arguments": {}},
                                         {"name": "read_file", "arguments": "{bad"}]),
        Answer(content="finished"),
    ])
    sup = http_sup(paths, server)
    try:
        img = agent_image(tmp_path, "http-agent", model="local/gpt-test")
        rec = run_proc(sup, img, {"task": "read notes"}, cwd=project)
        assert rec.state == "exited", log_of(sup, rec.pid)
        assert rec.result == {"answer": "finished", "steps": 3, "usage": {
            "prompt_tokens": 33, "completion_tokens": 15, "total_tokens": 48}}
        first = server.received[0]["body"]
        assert first["model"] == "gpt-test"
        assert first["messages"][0] == {"role": "system",
                                        "content": "You are a careful test agent."}
        assert first["messages"][1] == {"role": "user", "content": "read notes"}
        names = {t["function"]["name"] for t in first["tools"]}
        assert names == {"read_file", "write_file", "list_dir"}
        ok, refused = _tool_results(server, 1)
        assert ok == "lighthouses guide ships"
        assert refused.startswith("PermissionDenied: fs.write:")
        bad_args, no_tool, bad_json = _tool_results(server, 2)[2:]
        assert bad_args.startswith("InvalidArgument: the arguments of write_file do not "
                                   "match its schema")
        assert "no tool named 'rm_rf'" in no_tool
        assert "not valid JSON" in bad_json
        # Every max_tokens sent is within what the tree could reserve (no budget: none).
        assert all("max_tokens" not in r["body"] for r in server.received)
        assert not (project.parent / "outside.txt").exists()
    finally:
        sup.stop()


def test_the_budget_ends_the_loop_and_no_call_sends_more_than_it_reserved(
        paths: Paths, project: Path, tmp_path: Path, server: FakeOpenAI) -> None:
    server.default = Answer(content=None, tool_calls=[
        {"name": "read_file", "arguments": {"path": "notes.txt"}}],
        usage={"prompt_tokens": 40, "completion_tokens": 10})
    sup = http_sup(paths, server)
    try:
        img = agent_image(tmp_path, "budgeted", model="local/m", tokens=6000, max_steps=50)
        rec = run_proc(sup, img, {"task": "loop"}, cwd=project)
        assert rec.state == "exited", log_of(sup, rec.pid)
        res = rec.result
        assert res["stopped"] == "budget" and "LimitExceeded" in res["error"]
        assert res["steps"] == len(server.received) >= 1
        usage = sup.store.tokens_usage(rec.pid)
        assert usage.used == 50 * res["steps"] and usage.limit == 6000
        for r in server.received:  # sent max_tokens + its prompt never above the budget
            assert 1 <= r["body"]["max_tokens"] <= 6000
    finally:
        sup.stop()


def test_the_llm_demo_reads_is_refused_answers_and_the_audit_verifies(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_llm_demo(as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["refusals"] == 1 and out["audit"]["ok"]
    result = out["agent"]["result"]
    assert result["steps"] == 5 and "refused" in result["answer"]


def test_run_tokens_bounds_the_tree_over_the_images_own_limit(
        paths: Paths, project: Path, tmp_path: Path) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "script.json").write_text(json.dumps({"responses": [
        call("read_file", path="notes.txt"), {"content": "done"}]}))
    (paths.home / "config.toml").write_text(
        f'[models.script]\nkind = "scripted"\nscript = "{paths.home / "script.json"}"\n')
    img = agent_image(tmp_path, "capped", tokens=10**6)
    rec = run_image(paths, str(img), {"task": "t"}, cwd=str(project), tokens=2000).record
    assert rec["exit_reason"] == "returned" and rec["result"]["steps"] >= 1
    store = open_store(paths.db, readonly=True)
    try:
        row = store.get_process(rec["pid"]).table_row()
        assert row["tokens"]["limit"] == 2000 and 0 < row["tokens"]["used"] <= 2000
    finally:
        store.close()


@pytest.mark.privileged
def test_an_llm_agent_runs_a_command_and_fetches_a_url_through_its_tools(
        paths: Paths, project: Path, tmp_path: Path) -> None:
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the loopback"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hi"
    sup = scripted_sup(paths, [
        call("run", argv=["sh", "-c", "echo made > out/made.txt"]),
        call("fetch", url=url),
        call("run", argv=["curl", url]),
        {"content": "done"},
    ])
    (paths.home / "policy.toml").write_text(
        'allow = ["fs:*:./**", "shell:exec:*", "net:fetch:*", "model:call:*"]\n')
    try:
        img = agent_image(tmp_path, "doer", caps=(
            "fs:read:./**", "fs:write:./out/**", "model:call:*", "shell:exec:sh",
            f"net:fetch:http://127.0.0.1:{server.server_address[1]}/**"),
            tools={"run": "builtin:shell.exec", "fetch": "builtin:net.fetch"})
        policy = parse_policy((paths.home / "policy.toml").read_text(), "policy.toml")
        rec = run_proc(sup, img, {"task": "do"}, cwd=project, policy=policy, timeout_s=120)
        assert rec.state == "exited", (rec.error, log_of(sup, rec.pid))
        assert rec.result["answer"] == "done" and rec.result["steps"] == 4
        assert (project / "out/made.txt").read_text() == "made\n"
        calls = [(a.call, a.verdict) for a in sup.store.audit_records(pid=rec.pid)
                 if a.detail.get("tool") in ("run", "fetch")]
        assert ("net.fetch", "allow") in calls
        # curl is not `sh`: refused, and the refusal went back to the model as its result.
        assert ("shell.exec", "deny") in calls
    finally:
        sup.stop()
        server.shutdown()
        server.server_close()


SHOUT_TS = """
export default async function (args: { text: string }, libos: unknown) {
  return args.text.toUpperCase();
}
"""


@pytest.mark.deno
def test_a_model_registers_a_jit_tool_and_calls_it_from_its_next_step(
        paths: Paths, project: Path, tmp_path: Path, server: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}},
              "required": ["text"]}
    server.plan.extend([
        Answer(content=None, tool_calls=[
            {"name": "register", "arguments": {"name": "shout", "source": SHOUT_TS,
                                               "schema": schema}},
            {"name": "register", "arguments": {"name": "broken",
                                               "source": "export default 3 +;"}}]),
        Answer(content=None, tool_calls=[{"name": "shout", "arguments": {"text": "hi"}},
                                         {"name": "shout", "arguments": {"text": 7}}]),
        Answer(content="done"),
    ])
    sup = http_sup(paths, server)
    try:
        img = agent_image(tmp_path, "toolsmith", model="local/gpt-test", caps=(
            "model:call:*", "jit:register:*", "jit:invoke:*"),
            tools={"register": "builtin:jit.register"})
        rec = run_proc(sup, img, {"task": "make a tool"}, cwd=project, timeout_s=120)
        assert rec.state == "exited", (rec.error, log_of(sup, rec.pid))
        assert rec.result["answer"] == "done" and rec.result["steps"] == 3
        offered = [{t["function"]["name"]: t["function"]["parameters"]
                    for t in r["body"]["tools"]} for r in server.received]
        assert set(offered[0]) == {"register"}
        # The one that passed `deno check` is offered from the next step, with its schema.
        assert set(offered[1]) == set(offered[2]) == {"register", "shout"}
        assert offered[1]["shout"] == schema
        registered, broken = _tool_results(server, 1)
        assert "InvalidArgument" not in registered, registered
        assert broken.startswith("InvalidArgument: jit.register: 'broken' does not pass")
        shouted, bad = _tool_results(server, 2)[2:]
        assert shouted == "HI"
        assert bad.startswith("InvalidArgument: the arguments of shout do not match")
    finally:
        sup.stop()


def test_a_jit_tool_cannot_register_tools_but_the_loop_may() -> None:
    from agentlibos.broker.syscalls import lookup  # noqa: PLC0415

    assert lookup("jit.register").tool_ok and not lookup("jit.register").jit_ok
    assert IMAGE_BUILTINS["jit.register"] == "jit.register"
