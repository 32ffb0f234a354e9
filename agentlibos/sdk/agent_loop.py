"""The built-in LLM agent loop: what an image with an ``[agent]`` table and no entry runs.

It runs inside the sandbox like any agent and has no authority of its own: each step is
one ``model.chat`` (the image's ``[tools]`` offered as function schemas), and each tool
call the model makes is one brokered ``tool.call`` with the process's capabilities.
What the model sends is untrusted input: a tool that does not exist, arguments that are
not JSON or fail the tool's JSON Schema (checked with ``jsonschema`` before anything is
sent), and a call the broker refuses (``PermissionDenied: ...``) all become the *tool
result* the model reads next, never a crash.

It ends on an answer without tool calls, at ``max_steps`` model calls, or when the
tree's token budget cannot pay for another call, and returns
``{"answer": ..., "steps": N, "usage": {...}}`` (with ``"stopped"`` saying why when it
did not end on an answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jsonschema

from agentlibos.errors import InvalidArgument, LibOSError, LimitExceeded
from agentlibos.kernel.image import TOOL_NAME_RE, AgentImage, ToolSpec, load_image
from agentlibos.sdk import Context

__all__ = ["BUILTIN_TOOLS", "BuiltinTool", "LoopTool", "builtin_tools", "call_tool",
           "check_arguments", "load_image", "main", "run_loop", "tool_table"]

# What one tool result may put into the conversation; the rest is cut, and said so.
MAX_TOOL_RESULT_CHARS: Final = 32_000
DEFAULT_SYSTEM_PROMPT: Final = (
    "You are an agent running under Agent libOS. Use the tools to do the task; every "
    "tool call is checked against your capabilities and may be refused. When you are "
    "done, answer with a final message and no tool calls."
)

Encode = Callable[[dict[str, Any]], tuple[dict[str, Any], list[bytes]]]
Decode = Callable[[Any, list[bytes]], Any]


def _same(args: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    return args, []


def _result(result: Any, blobs: list[bytes]) -> Any:
    return result


@dataclass(frozen=True)
class BuiltinTool:
    """A builtin tool as a model sees it, and how its arguments map onto the syscall."""

    description: str
    parameters: dict[str, Any]
    encode: Encode = _same
    decode: Decode = _result

    @property
    def reshapes(self) -> bool:
        """Whether its tool shape differs from its syscall's (fs.read returns the text...).
        Code calling one that does not may pass every argument its syscall takes."""
        return self.encode is not _same or self.decode is not _result


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


_PATH: Final = {"type": "string", "description": "a path relative to your working "
                "directory, or absolute", "minLength": 1}


def _read_encode(args: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    return {"path": args["path"]}, []


def _read_decode(result: Any, blobs: list[bytes]) -> Any:
    return (blobs[0] if blobs else b"").decode("utf-8", "replace")


def _write_encode(args: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    return ({"path": args["path"], "append": bool(args.get("append", False))},
            [str(args["text"]).encode("utf-8")])


def _list_encode(args: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    return {"path": args.get("path") or "."}, []


def _list_decode(result: Any, blobs: list[bytes]) -> Any:
    if isinstance(result, list):
        return [{k: e.get(k) for k in ("name", "type", "size")} for e in result
                if isinstance(e, dict)]
    return result


# What of a fetched body a model gets to read (it is tokens, and budgeted).
MAX_FETCH_TEXT: Final = 64 << 10


def _fetch_decode(result: Any, blobs: list[bytes]) -> Any:
    body = blobs[0] if blobs else b""
    out = {k: result.get(k) for k in ("status", "url", "redirects")} \
        if isinstance(result, dict) else {}
    headers = result.get("headers") if isinstance(result, dict) else None
    if isinstance(headers, dict):
        out["content_type"] = headers.get("content-type")
    out["text"] = body[:MAX_FETCH_TEXT].decode("utf-8", "replace")
    if len(body) > MAX_FETCH_TEXT:
        out["truncated"] = f"{len(body) - MAX_FETCH_TEXT} more bytes not shown"
    return out


# Keyed by the syscall a builtin wraps (ToolSpec.ref).
BUILTIN_TOOLS: Final[dict[str, BuiltinTool]] = {
    "fs.read": BuiltinTool(
        "Read a whole text file and return its contents.",
        _obj({"path": _PATH}, ("path",)), _read_encode, _read_decode),
    "fs.write": BuiltinTool(
        "Write text to a file, replacing it (or appending with append=true). Returns the "
        "size written. Refused outside the directories you may write.",
        _obj({"path": _PATH, "text": {"type": "string"},
              "append": {"type": "boolean", "default": False}}, ("path", "text")),
        _write_encode),
    "fs.list": BuiltinTool(
        "List a directory: the name, type and size of each entry.",
        _obj({"path": {**_PATH, "default": "."}}), _list_encode, _list_decode),
    "fs.stat": BuiltinTool(
        "The type, size, modification time and mode of one path.",
        _obj({"path": _PATH}, ("path",))),
    "fs.mkdir": BuiltinTool(
        "Create a directory (parents=true also creates missing parents).",
        _obj({"path": _PATH, "parents": {"type": "boolean"}}, ("path",))),
    "fs.delete": BuiltinTool(
        "Delete a file or an empty directory (recursive=true deletes a whole tree).",
        _obj({"path": _PATH, "recursive": {"type": "boolean", "default": False}},
             ("path",))),
    "obj.put": BuiltinTool(
        "Store a JSON value under a name in your object memory (versioned).",
        _obj({"name": {"type": "string", "minLength": 1}, "value": {},
              "type": {"type": "string", "description": "a type label"}}, ("name", "value"))),
    "obj.get": BuiltinTool(
        "Fetch a value from your object memory by name.",
        _obj({"name": {"type": "string", "minLength": 1}}, ("name",))),
    "obj.stat": BuiltinTool(
        "The type, version and size of a stored object, without its value.",
        _obj({"name": {"type": "string", "minLength": 1}}, ("name",))),
    "obj.list": BuiltinTool(
        "List the objects in your object memory, optionally by name prefix.",
        _obj({"prefix": {"type": "string"}})),
    "obj.delete": BuiltinTool(
        "Delete an object from your object memory.",
        _obj({"name": {"type": "string", "minLength": 1}}, ("name",))),
    "proc.spawn": BuiltinTool(
        "Start a child agent from an image by name, with arguments; returns its pid.",
        _obj({"image": {"type": "string", "minLength": 1}, "args": {"type": "object"}},
             ("image",))),
    "proc.wait": BuiltinTool(
        "Wait for a process you started to end; returns its state and result.",
        _obj({"pid": {"type": "integer"}, "timeout": {"type": "number", "minimum": 0}},
             ("pid",))),
    "proc.kill": BuiltinTool(
        "Stop a process you started, and its descendants.",
        _obj({"pid": {"type": "integer"}}, ("pid",))),
    "proc.children": BuiltinTool("List the processes you started.", _obj({})),
    "proc.getpid": BuiltinTool("Your own process id and your parent's.", _obj({})),
    "cap.list": BuiltinTool("The capabilities you hold, as strings.", _obj({})),
    "human.ask": BuiltinTool(
        "Ask the human operator a question and wait for the answer (optionally one of "
        "the given choices).",
        _obj({"question": {"type": "string", "minLength": 1},
              "choices": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
             ("question",))),
    "event.wait": BuiltinTool(
        "Wait for the next post of a named event and return its payload (timeout in "
        "seconds, optional).",
        _obj({"name": {"type": "string", "minLength": 1},
              "timeout": {"type": "number", "minimum": 0}}, ("name",))),
    "event.post": BuiltinTool(
        "Post a named event with an optional JSON payload, waking every waiter.",
        _obj({"name": {"type": "string", "minLength": 1}, "payload": {}}, ("name",))),
    "clock.sleep": BuiltinTool(
        "Sleep for a number of seconds.",
        _obj({"seconds": {"type": "number", "minimum": 0}}, ("seconds",))),
    "shell.exec": BuiltinTool(
        "Run a program (argv: the program and its arguments, no shell string) in your "
        "working directory, in a sandbox that sees only the files you may use and has no "
        "network. Returns exit_code, stdout, stderr, truncated and timed_out.",
        _obj({"argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
              "stdin": {"type": "string"},
              "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}},
             ("argv",))),
    "net.fetch": BuiltinTool(
        "Fetch an http(s) URL. Returns the status, final URL and the body as text (the "
        "first 64 KiB). Refused for URLs you may not fetch.",
        _obj({"url": {"type": "string", "minLength": 1},
              "method": {"type": "string", "default": "GET"},
              "headers": {"type": "object", "additionalProperties": {"type": "string"}},
              "body": {"type": "string"}}, ("url",)),
        decode=_fetch_decode),
    "image.register": BuiltinTool(
        "Register an image directory under your working directory by its name (or the "
        "given name), so it can be spawned. Registering grants it nothing.",
        _obj({"path": _PATH, "name": {"type": "string", "minLength": 1}}, ("path",))),
    "jit.register": BuiltinTool(
        "Write a new tool in TypeScript and register it under a name; from your next "
        "step on you can call it by that name. The source is a module whose default "
        "export is `async function (args, libos)` returning a JSON value; `libos` offers "
        "fs.readText(path), fs.writeText(path, text), obj.get(name), obj.put(name, "
        "value) and syscall(name, params), each checked against your capabilities. It "
        "is type-checked first (errors come back as the result). Returns its version.",
        _obj({"name": {"type": "string", "pattern": TOOL_NAME_RE.pattern.replace("\\Z", "$")},
              "source": {"type": "string", "minLength": 1},
              "schema": {"type": "object", "description": "the JSON Schema of its "
                         "arguments (default: any object)"}}, ("name", "source"))),
}


@dataclass(frozen=True)
class LoopTool:
    """One tool the loop offers: its name in the image, its function name for the model
    (a-z, 0-9, '_' and '-' only), its schema, and for builtins how it maps."""

    name: str
    function: str
    description: str
    parameters: dict[str, Any]
    builtin: BuiltinTool | None

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.function, "description": self.description,
            "parameters": self.parameters}}


def _function_name(name: str, taken: set[str]) -> str:
    fn = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "tool"
    base, n = fn, 2
    while fn in taken:
        fn = f"{base[:60]}_{n}"
        n += 1
    return fn


def tool_table(tools: tuple[ToolSpec, ...]) -> dict[str, LoopTool]:
    """The image's ``[tools]`` as the loop offers them, keyed by function name."""
    out: dict[str, LoopTool] = {}
    for t in tools:
        fn = _function_name(t.name, set(out))
        if t.kind == "builtin":
            b = BUILTIN_TOOLS.get(t.ref)
            if b is None:  # a builtin the loop cannot describe yet is not offered
                continue
            out[fn] = LoopTool(t.name, fn, b.description, b.parameters, b)
        else:
            params = t.schema or {"type": "object"}
            out[fn] = LoopTool(t.name, fn, f"The {t.name} tool (TypeScript).", params, None)
    return out


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = (text[:MAX_TOOL_RESULT_CHARS]
                + f"\n[... cut: {len(text) - MAX_TOOL_RESULT_CHARS} more characters]")
    return text


def _error(e: LibOSError) -> str:
    return f"{type(e).__name__}: {e.message}"


def run_tool(ctx: Context, table: dict[str, LoopTool], call: dict[str, Any]) -> str:
    """One tool call the model made, as the text of its tool result. Never raises a
    LibOSError: what goes wrong is what the model reads. A tool the model registered
    (jit.register) joins ``table``, to be offered from the next step on."""
    fn = call.get("function") or {}
    name = fn.get("name")
    tool = table.get(name) if isinstance(name, str) else None
    if tool is None:
        return (f"InvalidArgument: there is no tool named {name!r}; the tools are: "
                f"{', '.join(sorted(table)) or 'none'}")
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as e:
        return f"InvalidArgument: the arguments of {name} are not valid JSON ({e})"
    try:
        check_arguments(str(name), tool.parameters, args)
        result = call_tool(ctx.syscall, tool.name, tool.builtin, args)
    except LibOSError as e:
        return _error(e)
    if tool.builtin is BUILTIN_TOOLS["jit.register"]:
        _offer(table, str(args["name"]), args.get("schema"))
    return _text(result)


def check_arguments(name: str, parameters: dict[str, Any], args: Any) -> None:
    """Refuse arguments that are not an object matching the tool's JSON Schema
    (InvalidArgument, saying where), before anything is sent."""
    if not isinstance(args, dict):
        raise InvalidArgument(f"the arguments of {name} must be a JSON object")
    try:
        jsonschema.validate(args, parameters)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(the arguments)"
        raise InvalidArgument(f"the arguments of {name} do not match its schema: "
                              f"{e.message} at {where}") from None
    except jsonschema.SchemaError as e:
        raise InvalidArgument(f"the schema of {name} is not valid: {e.message}") from None


Syscall = Callable[[str, dict[str, Any], list[bytes]], tuple[Any, list[bytes]]]


def call_tool(syscall: Syscall, name: str, builtin: BuiltinTool | None,
              args: dict[str, Any]) -> Any:
    """One ``tool.call``; a builtin takes and returns its tool shape (``fs.write``
    ``{path, text}``, ``fs.read`` the text), mapped onto the syscall it wraps. The same
    for the loop and for ``ctx.tools.call``."""
    blobs: list[bytes] = []
    if builtin is not None:
        args, blobs = builtin.encode(args)
    result, out_blobs = syscall("tool.call", {"name": name, "args": args}, blobs)
    return result if builtin is None else builtin.decode(result, out_blobs)


def builtin_tools(image: AgentImage) -> dict[str, BuiltinTool]:
    """The image's builtin tools by their ``[tools]`` names, with their tool shape."""
    return {t.name: b for t in image.tools
            if t.kind == "builtin" and (b := BUILTIN_TOOLS.get(t.ref)) is not None}


def _offer(table: dict[str, LoopTool], name: str, schema: Any) -> None:
    """Offer a tool registered at run time (again, if registered anew)."""
    params = schema if isinstance(schema, dict) else {"type": "object"}
    for fn, t in list(table.items()):
        if t.name == name and t.builtin is None:
            table[fn] = LoopTool(name, fn, t.description, params, None)
            return
    fn = _function_name(name, set(table))
    table[fn] = LoopTool(name, fn, f"The {name} tool (TypeScript, registered by you).",
                         params, None)


def _add(usage: dict[str, int], more: Any) -> None:
    if isinstance(more, dict):
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v = more.get(k)
            if isinstance(v, int):
                usage[k] += v


def run_loop(ctx: Context, image: AgentImage, task: str) -> dict[str, Any]:
    assert image.agent is not None
    spec = image.agent
    table = tool_table(image.tools)
    schemas = [t.schema() for t in table.values()] or None
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": spec.prompt or DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": task},
    ]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    steps = 0
    last = ""
    while steps < spec.max_steps:
        try:
            reply = ctx.model.chat(messages, tools=schemas, model=spec.model)
        except LimitExceeded as e:
            return {"answer": last, "steps": steps, "usage": usage, "stopped": "budget",
                    "error": _error(e)}
        steps += 1
        _add(usage, reply.get("usage"))
        msg = reply.get("message") or {}
        content = msg.get("content")
        if isinstance(content, str) and content:
            last = content
        calls = [c for c in msg.get("tool_calls") or [] if isinstance(c, dict)]
        entry: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            entry["tool_calls"] = calls
        messages.append(entry)
        if not calls:
            return {"answer": content or "", "steps": steps, "usage": usage}
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": str(call.get("id", "")),
                             "content": run_tool(ctx, table, call)})
        schemas = [t.schema() for t in table.values()] or None  # with any registered
    return {"answer": last, "steps": steps, "usage": usage, "stopped": "max_steps"}


def main(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The entry of every ``[agent]`` image without one of its own."""
    # The image directory is readable inside the sandbox; the supervisor validated it
    # before the fork, so this load only re-reads what was checked.
    image = load_image(ctx.image_path, agent_ids=None)
    task = args.get("task")
    if task is None:
        rest = {k: v for k, v in args.items() if k != "task"}
        task = json.dumps(rest) if rest else "Do the task your instructions describe."
    elif not isinstance(task, str):
        task = json.dumps(task)
    return run_loop(ctx, image, task)
