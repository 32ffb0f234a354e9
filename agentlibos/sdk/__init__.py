"""The Agent SDK: what agent code imports inside the sandbox.

Every method is one broker syscall; nothing here carries authority of its own. A refused
call raises the typed error from :mod:`agentlibos.errors`.

    from agentlibos.sdk import Context

    def main(ctx: Context, args: dict) -> dict:
        text = ctx.fs.read_text("notes.txt")
        ...
"""

from __future__ import annotations

import builtins
import codecs
import os
from collections.abc import Mapping
from typing import Any, NoReturn, overload

from agentlibos.errors import InvalidArgument, LibOSError, NotFound
from agentlibos.sdk.client import Client

__all__ = ["Caps", "Clock", "Context", "Events", "Fs", "Human", "Image", "Jit", "Model", "Net",
           "Obj", "Proc", "Shell", "Tools"]


def _listed(call: str, what: str, value: object, of: str) -> list[Any]:
    """``value`` as a list, if it is a list or tuple; else InvalidArgument. ``list(x)``
    would take a string for its characters (caps "fs:read:./**" became the capability
    "f") and a dict for its keys, and the broker's error then named the wrong thing."""
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"{call}: {what} must be a list of {of}, not "
                              f"{type(value).__name__}")
    return list(value)


def _codec(call: str, encoding: object) -> None:
    """Before anything is sent: an encoding Python does not know is the caller's error."""
    try:
        if not isinstance(encoding, str):
            raise LookupError(encoding)
        codecs.lookup(encoding)
    except LookupError:
        raise InvalidArgument(f"{call}: unknown encoding {encoding!r}") from None


class _Family:
    def __init__(self, client: Client) -> None:
        self._c = client

    def _call(self, name: str, args: dict[str, Any] | None = None,
              blobs: list[bytes] | None = None) -> Any:
        return self._c.call(name, args, blobs)[0]


class Fs(_Family):
    """Files, by paths relative to the process's libOS cwd (or absolute)."""

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        args: dict[str, Any] = {"path": path}
        if max_bytes is not None:
            args["max_bytes"] = max_bytes
        _, blobs = self._c.call("fs.read", args)
        return blobs[0] if blobs else b""

    def read_text(self, path: str, encoding: str = "utf-8",
                  max_bytes: int | None = None) -> str:
        _codec("read_text", encoding)
        data = self.read_bytes(path, max_bytes=max_bytes)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            raise InvalidArgument(f"read_text: {path} is not {encoding} text ({e.reason} at "
                                  f"byte {e.start}); read_bytes reads it as it is") from None

    def write_bytes(self, path: str, data: bytes, append: bool = False) -> int:
        # bytes(5) would be five NUL bytes and bytes("x") a TypeError: say what is wrong.
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"write_bytes: data must be bytes, not "
                                  f"{type(data).__name__} (write_text takes a str)")
        return int(self._call("fs.write", {"path": path, "append": append}, [bytes(data)])["size"])

    def write_text(self, path: str, text: str, encoding: str = "utf-8",
                   append: bool = False) -> int:
        if not isinstance(text, str):
            raise InvalidArgument(f"write_text: text must be a str, not {type(text).__name__}"
                                  + (" (write_bytes takes bytes)" if isinstance(
                                      text, bytes | bytearray) else ""))
        _codec("write_text", encoding)
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError as e:
            raise InvalidArgument(f"write_text: the text cannot be written as {encoding} "
                                  f"({e.reason} at character {e.start})") from None
        return self.write_bytes(path, data, append=append)

    def list(self, path: str = ".", limit: int = 10_000) -> list[dict[str, Any]]:
        """The first ``limit`` entries (at most 10,000) in name order."""
        return list(self._call("fs.list", {"path": path, "limit": limit}))

    def stat(self, path: str) -> dict[str, Any]:
        return dict(self._call("fs.stat", {"path": path}))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        self._call("fs.mkdir", {"path": path, "parents": parents, "exist_ok": exist_ok})

    def delete(self, path: str, recursive: bool = False) -> None:
        self._call("fs.delete", {"path": path, "recursive": recursive})


class Obj(_Family):
    """Typed, versioned Object Memory. ``ns="self"`` is the process's own namespace."""

    def put(self, name: str, value: Any, type: str = "json", ns: str = "self",
            expect_version: int | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"name": name, "value": value, "type": type, "ns": ns}
        if expect_version is not None:
            args["expect_version"] = expect_version
        return dict(self._call("obj.put", args))

    def get(self, name: str, ns: str = "self") -> Any:
        return self._call("obj.get", {"name": name, "ns": ns})["value"]

    def get_record(self, name: str, ns: str = "self") -> dict[str, Any]:
        """The value with its type, version and times."""
        return dict(self._call("obj.get", {"name": name, "ns": ns}))

    def stat(self, name: str, ns: str = "self") -> dict[str, Any]:
        return dict(self._call("obj.stat", {"name": name, "ns": ns}))

    def list(self, ns: str = "self", prefix: str = "") -> list[dict[str, Any]]:
        return list(self._call("obj.list", {"ns": ns, "prefix": prefix}))

    def delete(self, name: str, ns: str = "self", expect_version: int | None = None) -> None:
        args: dict[str, Any] = {"name": name, "ns": ns}
        if expect_version is not None:
            args["expect_version"] = expect_version
        self._call("obj.delete", args)


class Proc(_Family):
    """Processes: spawn children, wait for them, stop them, end yourself."""

    def __init__(self, client: Client, pid: int, ppid: int | None) -> None:
        super().__init__(client)
        self._pid = pid
        self._ppid = ppid

    def spawn(self, image: str, args: dict[str, Any] | None = None,
              caps: list[str] | None = None, cwd: str | None = None) -> int:
        """Start a child; ``caps`` (default: all yours) must lie within your own."""
        req: dict[str, Any] = {"image": image, "args": args or {}}
        if caps is not None:
            req["caps"] = _listed("proc.spawn", "caps", caps, "capability strings")
        if cwd is not None:
            req["cwd"] = cwd
        return int(self._call("proc.spawn", req)["pid"])

    def wait(self, pid: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until ``pid`` ends; returns {pid, state, exit_reason, result}."""
        args: dict[str, Any] = {"pid": pid}
        if timeout is not None:
            args["timeout"] = timeout
        return dict(self._call("proc.wait", args))

    def kill(self, pid: int) -> None:
        self._call("proc.kill", {"pid": pid})

    def children(self) -> list[dict[str, Any]]:
        return list(self._call("proc.children"))

    def getpid(self) -> int:
        return self._pid

    def getppid(self) -> int | None:
        return self._ppid

    def exit(self, result: Any = None) -> NoReturn:
        """End this process now with ``result`` (what ``wait`` and ``run`` report)."""
        self._call("proc.exit", {"status": "returned", "result": result})
        os._exit(0)


class Caps(_Family):
    def list(self) -> list[str]:
        return [str(c) for c in self._call("cap.list")]

    def drop(self, cap: str) -> builtins.list[str]:
        """Give up ``cap`` (or the rights it names); returns what you still hold."""
        return [str(c) for c in self._call("cap.drop", {"cap": cap})]


class Tools(_Family):
    def __init__(self, client: Client, image_path: str = "",
                 builtin_names: list[str] | None = None) -> None:
        super().__init__(client)
        self._image_path = image_path
        # The image's builtin tools, by name, from proc.start: any other name (a JIT
        # tool) goes straight to the broker, without the loop's module (jsonschema) or
        # the image's reading, which made a JIT tool's first call ~45 ms slower. None:
        # not told (a Context built by hand), so every name is looked up.
        self._builtin_names = None if builtin_names is None else frozenset(builtin_names)
        self._builtins: dict[str, Any] | None = None

    def call(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Call a tool from this image's tool table (builtin or JIT).

        A builtin takes and returns the same shape as in the agent loop: ``fs.read``
        ``{path}`` returns the text, ``fs.write`` takes ``{path, text, append?}``,
        ``net.fetch`` returns the body as ``text`` (docs/models.md); the arguments of
        these are checked against their JSON Schema first (InvalidArgument). Any other
        builtin takes its syscall's own arguments (``obj.put`` with ``ns``...)."""
        args = {} if args is None else args
        builtin = self._builtin(name)
        if builtin is None or not builtin.reshapes:
            # A JIT tool, a builtin whose shape is its syscall's (the broker checks its
            # arguments), or a name the broker will refuse.
            return self._call("tool.call", {"name": name, "args": args})
        # Lazy: the loop's module imports jsonschema and this package (a cycle).
        from agentlibos.sdk import agent_loop  # noqa: PLC0415

        agent_loop.check_arguments(name, builtin.parameters, args)
        return agent_loop.call_tool(self._c.call, name, builtin, args)

    def _builtin(self, name: str) -> Any:
        if self._builtin_names is not None and name not in self._builtin_names:
            return None
        if self._builtins is None:
            self._builtins = {}
            if self._image_path:
                from agentlibos.sdk import agent_loop  # noqa: PLC0415 - as in call()

                # The image directory is readable inside the sandbox, as the loop reads it;
                # the supervisor validated it before the fork.
                try:
                    image = agent_loop.load_image(self._image_path, agent_ids=None)
                except (LibOSError, OSError):
                    return None
                self._builtins = agent_loop.builtin_tools(image)
        return self._builtins.get(name)


class Jit(_Family):
    def register(self, name: str, source: str, schema: dict[str, Any] | None = None, *,
                 caps: list[str] | None = None, timeout: float | None = None) -> str:
        """Register a TypeScript tool at run time (needs ``jit:register:<name>``).

        The source is type-checked offline with ``deno check`` first; code that fails is
        refused with the compiler's message (InvalidArgument). ``caps`` narrows what the
        tool may do to less than this process holds (None: all it holds; []: nothing);
        ``timeout`` bounds each call.
        Returns the registered version (a hash of the source).
        """
        args: dict[str, Any] = {"name": name, "source": source}
        if schema is not None:
            args["schema"] = schema
        if caps is not None:
            args["caps"] = _listed("jit.register", "caps", caps, "capability strings")
        if timeout is not None:
            args["timeout"] = timeout
        return str(self._call("jit.register", args)["version"])


class Human(_Family):
    def ask(self, question: str, choices: builtins.list[str] | None = None,
            topic: str = "*") -> str:
        """Ask the operator and wait for the answer (needs ``human:ask:<topic>``).

        With ``choices`` the answer is one of them. The process waits (``human:ID``)
        until someone answers: ``agentlibos answer ID TEXT``, the console, or the prompt
        of the run that started it."""
        args: dict[str, Any] = {"question": question, "topic": topic}
        if choices is not None:
            args["choices"] = _listed("human.ask", "choices", choices, "strings")
        return str(self._call("human.ask", args)["answer"])


class Events(_Family):
    def wait(self, name: str, timeout: float | None = None) -> Any:
        """The payload of the next post of ``name`` after this call began (needs
        ``event:wait:<name>``); raises Timeout after ``timeout`` seconds if given."""
        args: dict[str, Any] = {"name": name}
        if timeout is not None:
            args["timeout"] = timeout
        return self._call("event.wait", args)["payload"]

    def post(self, name: str, payload: Any = None) -> int:
        """Post ``name``, waking every waiter (needs ``event:post:<name>``); returns how
        many were woken."""
        return int(self._call("event.post", {"name": name, "payload": payload})["woken"])


class Clock(_Family):
    def now(self) -> float:
        """The broker's clock (Unix seconds); journaled, so a resumed agent sees the same."""
        return float(self._call("clock.now")["time"])

    def sleep(self, seconds: float) -> None:
        """Sleep, durably (needs ``clock:sleep:*``): the deadline is the broker's."""
        self._call("clock.sleep", {"seconds": seconds})


class Shell(_Family):
    def run(self, argv: list[str], stdin: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``argv`` (a list, no shell string) in a sandbox of its own, in the
        process's cwd (needs ``shell:exec:<argv[0]>``). Returns ``exit_code``,
        ``stdout``, ``stderr`` (each up to 1 MiB, then truncated and said so),
        ``truncated`` and ``timed_out``; at ``timeout`` seconds everything it started
        is killed. ``env`` adds variables to its PATH, HOME and LANG."""
        args: dict[str, Any] = {"argv": argv, "timeout": timeout}
        if stdin is not None:
            args["stdin"] = stdin
        if env is not None:
            args["env"] = env
        return dict(self._call("shell.exec", args))


class Net(_Family):
    def fetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: bytes | str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Fetch an http(s) URL through the broker (needs ``net:fetch:<url glob>``).

        Returns ``{"status", "headers", "url", "redirects", "body", "text"}``: ``headers``
        a dict with lower-case names, ``url`` the final URL after redirects (each checked
        like the first), ``body`` the bytes, ``text`` the body decoded by its charset
        (UTF-8 if none) or None if it does not decode. Any status is returned, 4xx and
        5xx too; refusals raise PermissionDenied, a slow answer Timeout, a big one
        LimitExceeded."""
        args: dict[str, Any] = {"url": url, "method": method, "timeout": timeout}
        if headers is not None and not isinstance(headers, Mapping):
            # dict("ab") is a ValueError, dict([("a", "b")]) a quiet conversion.
            raise InvalidArgument(f"net.fetch: headers must be a dict of strings, not "
                                  f"{type(headers).__name__}")
        if headers:
            args["headers"] = dict(headers)
        blobs: list[bytes] = []
        if isinstance(body, str):
            blobs.append(body.encode("utf-8"))
        elif isinstance(body, bytes | bytearray | memoryview):
            blobs.append(bytes(body))
        elif body is not None:
            # bytes(5) would send five NUL bytes and bytes([1, 2]) the bytes 1 and 2.
            raise InvalidArgument(f"net.fetch: body must be bytes or str, not "
                                  f"{type(body).__name__}")
        result, got = self._c.call("net.fetch", args, blobs)
        data = got[0] if got else b""
        hdrs = dict(result.get("headers") or {})
        return {"status": int(result["status"]), "headers": hdrs, "url": result.get("url"),
                "redirects": list(result.get("redirects") or []), "body": data,
                "text": _decode(data, hdrs.get("content-type", ""))}


def _decode(data: bytes, content_type: str) -> str | None:
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None


class Model(_Family):
    def chat(self, messages: builtins.list[dict[str, Any]],
             tools: builtins.list[dict[str, Any]] | None = None, model: str | None = None,
             max_tokens: int | None = None) -> dict[str, Any]:
        """One Chat Completions call (needs ``model:call:<provider>/<model>``).

        ``model`` is ``provider/model`` (default: the image's ``[agent] model``); ``tools``
        are function schemas. Returns ``{"message": {...}, "usage": {...}}`` in the Chat
        Completions shape, tool calls included. The call reserves ``max_tokens`` plus the
        prompt's size from the tree's token budget first: LimitExceeded if it cannot."""
        args: dict[str, Any] = {
            "messages": _listed("model.chat", "messages", messages, "message objects")}
        if tools is not None:
            args["tools"] = _listed("model.chat", "tools", tools, "function schemas")
        if model is not None:
            args["model"] = model
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        return dict(self._call("model.chat", args))


class Image(_Family):
    """The registry of images, and the name of this process's own (``ctx.image.name``;
    ``str(ctx.image)`` and ``ctx.image == "name"`` still work as when it was that string)."""

    def __init__(self, client: Client, name: str) -> None:
        super().__init__(client)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return self.name == (other.name if isinstance(other, Image) else other)

    def __hash__(self) -> int:
        return hash(self.name)

    def register(self, path: str, name: str | None = None) -> dict[str, Any]:
        """Register the image directory ``path`` (under the cwd) by name: a validated copy
        in the registry, as ``agentlibos image add`` makes (needs ``fs:read`` on it and
        ``image:register:<name>``; ``name`` defaults to its image.toml's). Grants nothing:
        spawning it still needs ``proc:spawn:<name>``. Returns ``{name, version, path}``;
        Conflict when the name is taken."""
        args: dict[str, Any] = {"path": path}
        if name is not None:
            args["name"] = name
        return dict(self._call("image.register", args))


class Context:
    """Everything an agent can do, each a brokered syscall."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.pid: int = int(info["pid"])
        self.ppid: int | None = info.get("ppid")
        self.fs = Fs(client)
        self.obj = Obj(client)
        self.proc = Proc(client, self.pid, self.ppid)
        self.caps = Caps(client)
        self.image_path: str = str(info.get("image_path", ""))
        builtins_ = info.get("builtin_tools")
        self.tools = Tools(client, self.image_path,
                           builtins_ if isinstance(builtins_, list) else None)
        self.jit = Jit(client)
        self.human = Human(client)
        self.events = Events(client)
        self.clock = Clock(client)
        self.shell = Shell(client)
        self.net = Net(client)
        self.model = Model(client)
        self.image = Image(client, str(info.get("image", "")))

    def checkpoint(self, name: str | None = None) -> dict[str, Any]:
        """Mark this point of the run (its journal position, its own objects, its
        capabilities); `agentlibos restore ID|NAME` starts a new process that replays to
        here, where this call returns the same {"id", "name", "pid", "seq"}, and goes on
        live. ``name``: letters, digits and ``_.:@+-``, not all digits."""
        args = {} if name is None else {"name": name}
        return dict(self.client.call("proc.checkpoint", args)[0])

    @overload
    def random(self) -> float: ...
    @overload
    def random(self, n: int) -> bytes: ...

    def random(self, n: int | None = None) -> float | bytes:
        """Journaled randomness (a resumed agent draws the same again): without ``n`` a
        float in [0, 1), like ``random.random()``; with ``n`` (1..4096) ``n`` random bytes."""
        if n is None:
            return float(self.client.call("clock.random")[0]["random"])
        return bytes.fromhex(self.client.call("clock.random", {"bytes": n})[0]["hex"])

    def syscall(self, name: str, args: dict[str, Any] | None = None,
                blobs: list[bytes] | None = None) -> tuple[Any, list[bytes]]:
        """A raw syscall, for calls the SDK does not wrap yet."""
        return self.client.call(name, args, blobs)
