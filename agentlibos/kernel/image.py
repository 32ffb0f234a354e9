"""AgentImage: an ``image.toml`` plus the agent's code, loaded and validated.

Validation happens here, in the trusted supervisor, before anything is forked: a
malformed image is refused with one message naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from agentlibos.errors import ImageError, InvalidArgument, PolicyError
from agentlibos.kernel.caps import CapPattern, escape, parse_cap
from agentlibos.kernel.entrycheck import entry_problem
from agentlibos.kernel.schema import check_schema
from agentlibos.kernel.units import parse_cores, parse_count, parse_duration, parse_size

# \Z, not $: "$" also matches before a trailing newline, so "x\n" would pass.
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
TOOL_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")
_IDENT_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
MAX_IMAGE_TOML_BYTES: Final = 256 * 1024
# Directories that are not part of an image: never copied into the registry, never
# checked (the agent does not need to read a cache or a VCS directory).
IGNORED_DIRS: Final = frozenset({"__pycache__", ".git", ".venv", "node_modules",
                                 ".mypy_cache"})
# Who reads the image inside the sandbox unless told otherwise: the sandbox config's
# default agent_uid and agent_gid (sandbox/profile.py, SandboxConfig). The registry passes
# the configured ids; a supervisor that is not root runs agents as itself (a user
# namespace maps it), so the check is skipped there.
DEFAULT_AGENT_IDS: Final = (65534, 65534)
# How many entries of an image are checked for readability: the registry's own limit.
MAX_CHECKED_ENTRIES: Final = 10_000

# Builtin tools and the syscall each wraps. The LLM-facing schemas live with the
# syscalls (agentlibos/broker/syscalls); a tool adds no authority of its own.
BUILTIN_TOOLS: Final[dict[str, str]] = {
    "fs.read": "fs.read",
    "fs.write": "fs.write",
    "fs.list": "fs.list",
    "fs.stat": "fs.stat",
    "fs.mkdir": "fs.mkdir",
    "fs.delete": "fs.delete",
    "obj.put": "obj.put",
    "obj.get": "obj.get",
    "obj.stat": "obj.stat",
    "obj.list": "obj.list",
    "obj.delete": "obj.delete",
    "proc.spawn": "proc.spawn",
    "proc.wait": "proc.wait",
    "proc.kill": "proc.kill",
    "proc.children": "proc.children",
    "proc.getpid": "proc.getpid",
    "cap.list": "cap.list",
    # Waiting, for the agent loop (DESIGN.md "Shapes the checks rely on").
    "human.ask": "human.ask",
    "events.wait": "event.wait",
    "events.post": "event.post",
    "clock.sleep": "clock.sleep",
    # Effects outside, each in its own sandbox or performed by the broker.
    "shell.exec": "shell.exec",
    "net.fetch": "net.fetch",
    "image.register": "image.register",
    "jit.register": "jit.register",
}
# The built-in agent loop (agentlibos/sdk/agent_loop.py): what an image with an [agent]
# table and no entry runs.
AGENT_LOOP_ENTRY: Final = ("agentlibos.sdk.agent_loop", "main")
DEFAULT_MAX_STEPS: Final = 30
MAX_AGENT_STEPS: Final = 10_000
MAX_PROMPT_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits; ``None`` means "the operator's default"."""

    memory_max_bytes: int | None = None
    pids_max: int | None = None
    cpu_max_cores: float | None = None
    wall_limit_s: float | None = None
    # Model tokens the whole tree may spend (kernel/tokens.py). Not a sandbox limit: the
    # model service reads it from the root's image; `run --tokens` overrides it.
    tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "memory_max_bytes": self.memory_max_bytes,
            "pids_max": self.pids_max,
            "cpu_max_cores": self.cpu_max_cores,
            "wall_limit_s": self.wall_limit_s,
        }
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> Limits:
        return Limits(
            memory_max_bytes=d.get("memory_max_bytes"),
            pids_max=d.get("pids_max"),
            cpu_max_cores=d.get("cpu_max_cores"),
            wall_limit_s=d.get("wall_limit_s"),
            tokens=d.get("tokens"),
        )


@dataclass(frozen=True)
class AgentSpec:
    """The ``[agent]`` table: the built-in LLM loop's model, prompt and step limit."""

    model: str  # provider/model
    prompt: str
    max_steps: int = DEFAULT_MAX_STEPS


@dataclass(frozen=True)
class ToolSpec:
    name: str
    kind: Literal["builtin", "jit"]
    ref: str  # the syscall name for builtins, the path (relative to the image) for jit
    # JIT tools only (the table form in [tools]): capabilities the tool is narrowed to
    # (None, the key left out: the caller's own; an empty list: none), a JSON schema its
    # args must match, and a time limit.
    caps: tuple[str, ...] | None = None
    schema: dict[str, Any] | None = None
    timeout_s: float | None = None

    @property
    def target(self) -> str:
        return f"{self.kind}:{self.ref}"


DEFAULT_MAX_RESUMES: Final = 3


@dataclass(frozen=True)
class Lifecycle:
    """``[lifecycle]``: what happens when the process dies by accident (docs/durability.md)."""

    on_crash: str = "resume"  # "resume": start again and replay the journal; "fail"
    max_resumes: int = DEFAULT_MAX_RESUMES


@dataclass(frozen=True)
class AgentImage:
    name: str
    version: str
    entry_module: str
    entry_function: str
    description: str
    path: Path  # absolute image directory
    tools: tuple[ToolSpec, ...]
    requested: tuple[CapPattern, ...]  # unresolved: relative paths are still relative
    limits: Limits
    agent: AgentSpec | None = None  # [agent]: the model loop's settings
    lifecycle: Lifecycle = Lifecycle()  # [lifecycle]: resume after a crash, or fail

    @property
    def entry(self) -> str:
        return f"{self.entry_module}:{self.entry_function}"

    def tool(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == name), None)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = data.get(key, {})
    if not isinstance(v, dict):
        raise ImageError(f"{where}: [{key}] must be a table")
    return v


def _str(table: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    v = table.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise ImageError(f"{where}: [image] {key} must be a non-empty string")
    return v


def _check_keys(table: dict[str, Any], allowed: set[str], section: str, where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ImageError(
            f"{where}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(allowed))})"
        )


def load_image(directory: str | Path, *,
               agent_ids: tuple[int, int] | None = DEFAULT_AGENT_IDS) -> AgentImage:
    """Load and validate the image in ``directory``; raise :class:`ImageError` if malformed.

    ``agent_ids`` (uid, gid) is who must be able to read every file of the image (None:
    nobody else, the agent runs as the operator); checked only when this process is root,
    the only case in which agents run as another uid.
    """
    root = Path(directory).resolve()
    toml_path = root / "image.toml"
    where = str(toml_path)
    if not root.is_dir():
        if root.exists():
            raise ImageError(f"{str(root)!r} is not a directory: an image is a directory "
                             "holding image.toml and the agent's code")
        raise ImageError(f"image directory {str(root)!r} does not exist")
    try:
        if toml_path.stat().st_size > MAX_IMAGE_TOML_BYTES:
            raise ImageError(f"{where}: larger than {MAX_IMAGE_TOML_BYTES} bytes")
        text = toml_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageError(f"{str(root)!r} is not an image: it has no image.toml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImageError(f"{where}: cannot read: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ImageError(f"{where}: not valid TOML: {e}") from None

    _check_keys(data, {"image", "tools", "capabilities", "limits", "agent", "lifecycle"},
                "top level", where)
    img = _table(data, "image", where)
    if not img:
        raise ImageError(f"{where}: missing the [image] table")
    _check_keys(img, {"name", "version", "entry", "description"}, "image", where)
    name = _str(img, "name", where)
    if not NAME_RE.match(name):
        raise ImageError(
            f"{where}: image name {name!r} must be 1-64 of a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit"
        )
    version = _str(img, "version", where, required=False) or "0.0.0"
    description = _str(img, "description", where, required=False)
    agent = _agent_spec(root, _table(data, "agent", where), where) if "agent" in data else None
    if agent is not None and "entry" not in img:
        module, func = AGENT_LOOP_ENTRY
    else:
        module, func = _entry(root, _str(img, "entry", where), where)

    tools: list[ToolSpec] = []
    for tname, entry in _table(data, "tools", where).items():
        if not TOOL_NAME_RE.match(tname):
            raise ImageError(f"{where}: tool name {tname!r} is not a valid identifier")
        options: dict[str, Any] = {}
        target = entry
        if isinstance(entry, dict):
            # name = { target = "jit:tools/x.ts", caps = [...], schema = {...}, timeout = "5s" }
            _check_keys(entry, {"target", "caps", "schema", "timeout"}, f"tools.{tname}", where)
            target = entry.get("target")
            options = entry
        if not isinstance(target, str) or ":" not in target:
            raise ImageError(
                f"{where}: tool {tname!r} must be 'builtin:NAME' or 'jit:PATH', got {target!r}"
            )
        kind, _, ref = target.partition(":")
        if kind == "builtin":
            if ref not in BUILTIN_TOOLS:
                raise ImageError(
                    f"{where}: tool {tname!r}: unknown builtin {ref!r} "
                    f"(known: {', '.join(sorted(BUILTIN_TOOLS))})"
                )
            if options.keys() - {"target"}:
                raise ImageError(f"{where}: tool {tname!r}: caps, schema and timeout are "
                                 "for JIT tools (a builtin tool has its caller's authority)")
            tools.append(ToolSpec(tname, "builtin", BUILTIN_TOOLS[ref]))
        elif kind == "jit":
            tool_path = (root / ref).resolve()
            if not tool_path.is_relative_to(root) or tool_path.suffix != ".ts":
                raise ImageError(
                    f"{where}: tool {tname!r}: {ref!r} must be a .ts file inside the image"
                )
            if not tool_path.is_file():
                raise ImageError(f"{where}: tool {tname!r}: {ref!r} does not exist")
            tools.append(ToolSpec(tname, "jit", str(tool_path.relative_to(root)),
                                  **_jit_options(root, tname, options, where)))
        else:
            raise ImageError(f"{where}: tool {tname!r}: kind {kind!r} is not builtin or jit")

    caps_table = _table(data, "capabilities", where)
    _check_keys(caps_table, {"request"}, "capabilities", where)
    raw_caps = caps_table.get("request", [])
    if not isinstance(raw_caps, list):
        raise ImageError(f"{where}: [capabilities] request must be a list of strings")
    requested: list[CapPattern] = []
    for c in raw_caps:
        try:
            requested.append(parse_cap(c))
        except PolicyError as e:
            raise ImageError(f"{where}: [capabilities] {e.message}") from None
    # A JIT tool in the image's own table is part of what it asks for: its
    # `jit:invoke:<name>` is implied, so listing a tool is enough to call it -- then cut
    # down by the launcher's grant (policy, a parent's caps=) like every request.
    for t in tools:
        if t.kind == "jit" and not any(c.allows("jit", "invoke", t.name) for c in requested):
            requested.append(parse_cap(f"jit:invoke:{escape(t.name)}"))

    lim = _table(data, "limits", where)
    _check_keys(lim, {"memory", "pids", "cpu", "wall", "tokens"}, "limits", where)
    try:
        limits = Limits(
            memory_max_bytes=_positive(
                parse_size(lim["memory"], what="[limits] memory") if "memory" in lim else None,
                "[limits] memory",
            ),
            pids_max=parse_count(lim["pids"], what="[limits] pids") if "pids" in lim
            else None,
            cpu_max_cores=parse_cores(lim["cpu"], what="[limits] cpu") if "cpu" in lim
            else None,
            wall_limit_s=_positive(
                parse_duration(lim["wall"], what="[limits] wall") if "wall" in lim else None,
                "[limits] wall",
            ),
            tokens=parse_count(lim["tokens"], what="[limits] tokens") if "tokens" in lim
            else None,
        )
    except InvalidArgument as e:
        raise ImageError(f"{where}: {e.message}") from None

    lifecycle = _lifecycle(_table(data, "lifecycle", where), where)
    if agent_ids is not None and os.geteuid() == 0:
        _check_agent_can_read(root, agent_ids)
    return AgentImage(
        name=name,
        version=version,
        entry_module=module,
        entry_function=func,
        description=description,
        path=root,
        tools=tuple(tools),
        requested=tuple(requested),
        limits=limits,
        agent=agent,
        lifecycle=lifecycle,
    )


def _lifecycle(table: dict[str, Any], where: str) -> Lifecycle:
    """``[lifecycle]``: on_crash = "resume" (default) | "fail"; max_resumes = 3."""
    _check_keys(table, {"on_crash", "max_resumes"}, "lifecycle", where)
    on_crash = table.get("on_crash", "resume")
    if on_crash not in ("resume", "fail"):
        raise ImageError(f"{where}: [lifecycle] on_crash must be \"resume\" or \"fail\", "
                         f"not {on_crash!r}")
    n = table.get("max_resumes", DEFAULT_MAX_RESUMES)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1000:
        raise ImageError(f"{where}: [lifecycle] max_resumes must be a whole number 0-1000")
    return Lifecycle(on_crash=on_crash, max_resumes=n)


def _entry(root: Path, entry: str, where: str) -> tuple[str, str]:
    module, sep, func = entry.partition(":")
    if not sep or not _IDENT_RE.match(module) or not func.isidentifier():
        raise ImageError(f"{where}: entry {entry!r} must be 'module:function'")
    mod_path = root.joinpath(*module.split("."))
    # A package wins over a module of the same name, as in the import system.
    for source in (mod_path / "__init__.py", mod_path.with_suffix(".py")):
        if source.is_file():
            break
    else:
        raise ImageError(
            f"{where}: entry module {module!r} not found (looked for "
            f"{mod_path.with_suffix('.py').name} in {root})"
        )
    problem = entry_problem(source, func)
    if problem is not None:
        raise ImageError(f"{where}: entry {entry!r}: {problem}")
    return module, func


def _agent_spec(root: Path, t: dict[str, Any], where: str) -> AgentSpec:
    """``[agent]``: model = "provider/model", prompt or prompt_file, max_steps."""
    _check_keys(t, {"model", "prompt", "prompt_file", "max_steps"}, "agent", where)
    model = t.get("model")
    if not isinstance(model, str) or "/" not in model.strip("/"):
        raise ImageError(f"{where}: [agent] model must be 'provider/model' "
                         f"(e.g. 'openai/gpt-4.1-mini'), not {model!r}")
    if "prompt" in t and "prompt_file" in t:
        raise ImageError(f"{where}: [agent] takes prompt or prompt_file, not both")
    prompt = t.get("prompt", "")
    if "prompt_file" in t:
        ref = t["prompt_file"]
        ppath = (root / ref).resolve() if isinstance(ref, str) else None
        if ppath is None or not ppath.is_relative_to(root) or not ppath.is_file():
            raise ImageError(f"{where}: [agent] prompt_file {ref!r} is not a file in the image")
        try:
            prompt = ppath.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ImageError(f"{where}: [agent] prompt_file {ref!r}: {e}") from None
    if not isinstance(prompt, str) or len(prompt.encode("utf-8", "replace")) > MAX_PROMPT_BYTES:
        raise ImageError(f"{where}: [agent] prompt must be text of at most "
                         f"{MAX_PROMPT_BYTES} bytes")
    steps = t.get("max_steps", DEFAULT_MAX_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_AGENT_STEPS:
        raise ImageError(f"{where}: [agent] max_steps must be a whole number 1-{MAX_AGENT_STEPS}")
    return AgentSpec(model=model, prompt=prompt, max_steps=steps)


def agent_can_read(mode: int, owner: tuple[int, int], reader: tuple[int, int]) -> bool:
    """Whether ``reader`` (uid, gid) may read a file -- list and traverse a directory --
    of ``mode`` owned by ``owner`` (uid, gid). The kernel's rule: the owner's bits when
    the uid matches, else the group's when the gid does, else the others'; root passes.
    Pure: the caller stats."""
    uid, gid = reader
    if uid == 0:
        return True
    need = 0o5 if stat.S_ISDIR(mode) else 0o4
    if owner[0] == uid:
        bits = mode >> 6
    elif owner[1] == gid:
        bits = mode >> 3
    else:
        bits = mode
    return bits & need == need


def image_stamp(directory: str | Path) -> tuple[tuple[object, ...], ...] | None:
    """A cheap fingerprint of what :func:`load_image` reads and checks in ``directory``:
    name, inode, mode, owner, size and times of the directory and of every entry the
    readability walk visits, in its order. Equal fingerprints: load_image would return
    an equal image (a supervisor keeps the image it loaded, images.py). None: more
    entries than the walk checks, so no fingerprint covers them."""
    root = os.path.realpath(directory)
    out: list[tuple[object, ...]] = []

    def add(rel: str) -> None:
        st = os.lstat(os.path.join(root, rel))
        out.append((rel, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size,
                    st.st_mtime_ns, st.st_ctime_ns))

    add(".")
    seen = 0
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        for n in [*dirs, *sorted(names)]:
            seen += 1
            if seen > MAX_CHECKED_ENTRIES:
                return None
            add(os.path.relpath(os.path.join(top, n), root))
    return tuple(out)


def _check_agent_can_read(root: Path, reader: tuple[int, int]) -> None:
    """Refuse an image with a file the agent could not read: otherwise it loads here and
    dies inside the sandbox with a bare PermissionError (symbolic links are the
    registry's business; they are not followed)."""
    _check_entry(root, root, reader)
    seen = 0
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        here = Path(top)
        for n in [*dirs, *sorted(names)]:
            seen += 1
            if seen > MAX_CHECKED_ENTRIES:
                return
            _check_entry(root, here / n, reader)


def _check_entry(root: Path, p: Path, reader: tuple[int, int]) -> None:
    try:
        st = p.lstat()
    except OSError as e:
        raise ImageError(f"{p}: cannot stat: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or agent_can_read(st.st_mode, (st.st_uid, st.st_gid), reader):
        return
    rel = "." if p == root else str(p.relative_to(root))
    what = "readable"
    if stat.S_ISDIR(st.st_mode):
        rel += "/"
        what = "listable and traversable"
    raise ImageError(
        f"{rel} is not {what} by the agent's uid {reader[0]} (mode "
        f"{stat.S_IMODE(st.st_mode):04o}) in image {root}; make it readable: "
        f"chmod -R o+rX {root}", path=str(p), mode=stat.S_IMODE(st.st_mode), uid=reader[0])


_N = TypeVar("_N", int, float)


def _positive(v: _N | None, what: str) -> _N | None:
    """A zero limit would kill the process at once: refuse it rather than run it."""
    if v is not None and v <= 0:
        raise InvalidArgument(f"{what} must be greater than zero")
    return v


def _jit_options(root: Path, name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """caps, schema and timeout of a JIT tool's table form, validated."""
    out: dict[str, Any] = {}
    caps = options.get("caps")  # TOML has no null: None is the key left out
    if caps is not None and not isinstance(caps, list):
        raise ImageError(f"{where}: tool {name!r}: caps must be a list of capabilities")
    for c in caps or []:
        try:
            parse_cap(c)
        except PolicyError as e:
            raise ImageError(f"{where}: tool {name!r}: {e.message}") from None
    out["caps"] = None if caps is None else tuple(caps)
    schema = options.get("schema")
    if isinstance(schema, str):  # a JSON file inside the image
        spath = (root / schema).resolve()
        if not spath.is_relative_to(root) or not spath.is_file():
            raise ImageError(f"{where}: tool {name!r}: schema file {schema!r} is not in the image")
        try:
            schema = json.loads(spath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ImageError(f"{where}: tool {name!r}: schema {schema!r}: {e}") from None
    if schema is not None:
        try:
            check_schema(schema, f"tool {name!r} schema")
        except InvalidArgument as e:
            raise ImageError(f"{where}: {e.message}") from None
        out["schema"] = schema
    if "timeout" in options:
        try:
            out["timeout_s"] = _positive(parse_duration(options["timeout"], what="timeout"),
                                         "timeout")
        except InvalidArgument as e:
            raise ImageError(f"{where}: tool {name!r}: {e.message}") from None
    return out
