"""AgentImage loading and validation (kernel/image.py)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from agentlibos.errors import ImageError
from agentlibos.kernel.image import NAME_RE, AgentImage, Limits, ToolSpec, load_image
from agentlibos.store import open_store
from agentlibos.supervisor.images import Images

GOOD = """\
[image]
name = "summarize"
version = "0.1.0"
entry = "agent:main"
description = "Summarise the files it is given"

[tools]
read_file  = "builtin:fs.read"
write_file = "builtin:fs.write"
put_object = "builtin:obj.put"
word_count = "jit:tools/word_count.ts"

[capabilities]
request = ["fs:read:./**", "fs:write:./out/**", "obj:rw:self", "human:ask"]

[limits]
memory = "256MiB"
pids = 64
cpu = 1.5
wall = "10m"
"""

AGENT = "def main(ctx, args):\n    return {}\n"


def make(root: Path, toml: str | None, *, files: dict[str, str] | None = None) -> Path:
    """An image directory with ``image.toml`` (unless None), agent.py and extra files."""
    d = root / "img"
    d.mkdir(parents=True, exist_ok=True)
    if toml is not None:
        (d / "image.toml").write_text(textwrap.dedent(toml))
    (d / "agent.py").write_text(AGENT)
    for rel, text in (files or {}).items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def minimal(**image: str) -> str:
    fields = {"name": "x", "entry": "agent:main", **image}
    return "[image]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())


def refused(d: Path) -> str:
    with pytest.raises(ImageError) as e:
        load_image(d)
    return e.value.message


TS = "export default async function (args, libos) { return 1 }\n"


# ============================================================================ valid


def test_a_valid_image_loads_with_its_tools_requested_caps_and_limits(tmp_path: Path) -> None:
    d = make(tmp_path, GOOD, files={"tools/word_count.ts": TS})
    img = load_image(d)
    assert isinstance(img, AgentImage)
    assert (img.name, img.version, img.description) == (
        "summarize", "0.1.0", "Summarise the files it is given",
    )
    assert (img.entry_module, img.entry_function, img.entry) == ("agent", "main", "agent:main")
    assert img.path == d.resolve()
    assert img.tools == (
        ToolSpec("read_file", "builtin", "fs.read"),
        ToolSpec("write_file", "builtin", "fs.write"),
        ToolSpec("put_object", "builtin", "obj.put"),
        ToolSpec("word_count", "jit", "tools/word_count.ts"),
    )
    assert img.tool("word_count") == ToolSpec("word_count", "jit", "tools/word_count.ts")
    assert img.tool("nope") is None
    # "human:ask" is written without a resource in DESIGN.md's example: any topic. Its
    # own JIT tool's jit:invoke is implied by the listing.
    assert [str(c) for c in img.requested] == [
        "fs:read:./**", "fs:write:./out/**", "obj:rw:self", "human:ask:*",
        "jit:invoke:word_count",
    ]
    assert img.limits == Limits(
        memory_max_bytes=256 << 20, pids_max=64, cpu_max_cores=1.5, wall_limit_s=600.0
    )


def test_requested_capabilities_stay_relative_until_granted(tmp_path: Path) -> None:
    d = make(tmp_path, GOOD, files={"tools/word_count.ts": TS})
    fs_read = load_image(d).requested[0]
    assert fs_read.resource == "./**"
    assert fs_read.relative


def test_a_minimal_image_has_defaults(tmp_path: Path) -> None:
    img = load_image(make(tmp_path, minimal()))
    assert img.version == "0.0.0"
    assert img.description == ""
    assert img.tools == ()
    assert img.requested == ()
    assert img.limits == Limits()
    assert img.limits.to_json() == {
        "memory_max_bytes": None, "pids_max": None, "cpu_max_cores": None, "wall_limit_s": None,
    }


def test_limits_round_trip_through_json() -> None:
    lim = Limits(memory_max_bytes=1 << 20, pids_max=8, cpu_max_cores=0.5, wall_limit_s=3.0)
    assert Limits.from_json(lim.to_json()) == lim


def test_an_entry_may_be_a_package_or_a_dotted_module(tmp_path: Path) -> None:
    d = make(tmp_path, minimal(entry="pkg.sub:run"),
             files={"pkg/__init__.py": "", "pkg/sub.py": "def run(ctx, args): pass\n"})
    img = load_image(d)
    assert (img.entry_module, img.entry_function) == ("pkg.sub", "run")
    d2 = make(tmp_path / "b", minimal(entry="pkg2:run"),
              files={"pkg2/__init__.py": "from pkg2.impl import run\n", "pkg2/impl.py": ""})
    assert load_image(d2).entry_module == "pkg2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("memory = 1048576", 1 << 20), ('memory = "1.5GiB"', 3 << 29), ('memory = "64M"', 64_000_000)],
)
def test_memory_is_parsed_with_units(tmp_path: Path, text: str, expected: int) -> None:
    img = load_image(make(tmp_path, minimal() + f"[limits]\n{text}\n"))
    assert img.limits.memory_max_bytes == expected


@pytest.mark.parametrize(
    ("text", "expected"), [('wall = "500ms"', 0.5), ('wall = "2h"', 7200.0), ("wall = 30", 30.0)]
)
def test_wall_is_parsed_with_units(tmp_path: Path, text: str, expected: float) -> None:
    img = load_image(make(tmp_path, minimal() + f"[limits]\n{text}\n"))
    assert img.limits.wall_limit_s == expected


def test_an_integer_cpu_limit_becomes_a_float(tmp_path: Path) -> None:
    img = load_image(make(tmp_path, minimal() + "[limits]\ncpu = 2\n"))
    assert img.limits.cpu_max_cores == 2.0
    assert isinstance(img.limits.cpu_max_cores, float)


# ========================================================================= malformed


def test_a_directory_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path / "nowhere")
    assert "does not exist" in msg
    assert str(tmp_path / "nowhere") in msg


def test_a_directory_without_image_toml_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, None)
    msg = refused(d)
    assert "has no image.toml" in msg
    assert str(d) in msg


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    d = make(tmp_path, '[image\nname = "x"\n')
    msg = refused(d)
    assert msg.startswith(f"{d / 'image.toml'}: not valid TOML")


def test_an_image_toml_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, None)
    (d / "image.toml").write_bytes(b"[image]\nname = \"\xff\"\n")
    assert "cannot read" in refused(d)


def test_an_oversized_image_toml_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + "#" + "x" * (256 * 1024) + "\n")
    assert "larger than" in refused(d)


def test_a_missing_image_table_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, '[capabilities]\nrequest = []\n')
    assert "missing the [image] table" in refused(d)


def test_an_image_key_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, 'image = "summarize"\n')
    assert "[image] must be a table" in refused(d)


@pytest.mark.parametrize(
    "name", ["Summarize", "-x", ".x", "has space", "a/b", "x" * 65, "", "ünï", "abc\n"]
)
def test_a_bad_image_name_is_refused(tmp_path: Path, name: str) -> None:
    toml = f'[image]\nname = {_toml_str(name)}\nentry = "agent:main"\n'
    msg = refused(make(tmp_path, toml))
    assert "name" in msg
    assert ("must be 1-64" in msg) or ("non-empty string" in msg)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


def test_the_image_name_pattern_rejects_a_trailing_newline() -> None:
    # The supervisor also uses NAME_RE to tell names from paths in proc.spawn.
    assert NAME_RE.match("worker")
    assert not NAME_RE.match("worker\n")


@pytest.mark.parametrize("name", ["a", "summarize", "demo-worker", "v1.2_x", "0abc", "x" * 64])
def test_a_good_image_name_is_accepted(tmp_path: Path, name: str) -> None:
    assert load_image(make(tmp_path, minimal(name=name))).name == name


def test_a_missing_name_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, '[image]\nentry = "agent:main"\n')
    assert "[image] name must be a non-empty string" in refused(d)


def test_a_name_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, '[image]\nname = 7\nentry = "agent:main"\n')
    assert "[image] name must be a non-empty string" in refused(d)


@pytest.mark.parametrize(
    "entry", ["agent", "agent:", ":main", "agent:main:x", "agent:1main", "ag ent:main",
              "agent.:main", "../agent:main", "agent:ma-in"],
)
def test_a_bad_entry_is_refused(tmp_path: Path, entry: str) -> None:
    d = make(tmp_path, minimal(entry=entry))
    assert "must be 'module:function'" in refused(d)


def test_a_missing_entry_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, '[image]\nname = "x"\n')
    assert "[image] entry must be a non-empty string" in refused(d)


def test_an_entry_module_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal(entry="missing:main"))
    msg = refused(d)
    assert "entry module 'missing' not found" in msg
    assert "missing.py" in msg


def test_an_entry_function_the_module_cannot_define_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal(entry="agent:mian"))
    assert "entry 'agent:mian': agent.py defines no function 'mian'" in refused(d)
    # A package's __init__ is what the import system finds before a module of that name.
    d2 = make(tmp_path / "b", minimal(entry="pkg:run"),
              files={"pkg/__init__.py": "", "pkg.py": "def run(ctx, args): pass\n"})
    assert "__init__.py defines no function 'run'" in refused(d2)


@pytest.mark.parametrize("source", [
    "def main(ctx, args): pass\n",
    "async def main(ctx, args): pass\n",
    "from helpers import main\n",
    "from helpers import run as main\n",
    "import main\n",
    "main = lambda ctx, args: None\n",
    "if True:\n    def main(ctx, args): pass\n",
    "try:\n    from fast import main\nexcept ImportError:\n    main = None\n",
    "from helpers import *\n",
    "def __getattr__(name): return lambda ctx, args: None\n",
    "globals()['main'] = print\n",
    "import sys\nsetattr(sys.modules[__name__], 'main', print)\n",
    "def f():\n    global main\n    main = print\nf()\n",
])
def test_an_entry_function_that_may_be_defined_is_accepted(
    tmp_path: Path, source: str
) -> None:
    # Nothing of the agent's runs on the host: what is not certainly missing is let
    # through, to be found (if at all) when the agent starts.
    d = make(tmp_path, minimal(entry="mod:main"), files={"mod.py": source})
    assert load_image(d).entry_function == "main"


@pytest.mark.parametrize("source", ["def main(ctx, args)\n    pass\n", "x = 1\0\n"])
def test_an_entry_module_that_does_not_parse_is_refused(tmp_path: Path, source: str) -> None:
    d = make(tmp_path, minimal(entry="mod:main"), files={"mod.py": source})
    assert "mod.py does not parse" in refused(d)


def test_an_entry_module_that_is_a_directory_without_init_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal(entry="pkg:main"), files={"pkg/other.py": ""})
    assert "entry module 'pkg' not found" in refused(d)


def test_a_requested_capability_that_can_match_nothing_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    d = make(tmp_path, minimal() + '[capabilities]\nrequest = ["obj:rw:Shared/X"]\n')
    msg = refused(d)
    assert "image.toml" in msg and "an object namespace is lower-case" in msg


def test_an_unknown_builtin_tool_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\nrun = "builtin:shell.teleport"\n')
    msg = refused(d)
    assert "tool 'run': unknown builtin 'shell.teleport'" in msg
    assert "fs.read" in msg  # lists the known ones


@pytest.mark.parametrize("target", ["fs.read", "wasm:tools/x.wasm", 3, ""])
def test_a_tool_target_that_is_not_builtin_or_jit_is_refused(
    tmp_path: Path, target: object
) -> None:
    value = f'"{target}"' if isinstance(target, str) else str(target)
    d = make(tmp_path, minimal() + f"[tools]\nt = {value}\n")
    msg = refused(d)
    assert "tool 't'" in msg
    assert ("'builtin:NAME' or 'jit:PATH'" in msg) or ("is not builtin or jit" in msg)


def test_a_bad_tool_name_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\n"bad name" = "builtin:fs.read"\n')
    assert "tool name 'bad name' is not a valid identifier" in refused(d)


def test_a_tool_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\n"read\\n" = "builtin:fs.read"\n')
    assert "is not a valid identifier" in refused(d)


@pytest.mark.parametrize("ref", ["../outside.ts", "/etc/outside.ts", "tools/../../outside.ts"])
def test_a_jit_tool_outside_the_image_is_refused(tmp_path: Path, ref: str) -> None:
    (tmp_path / "outside.ts").write_text(TS)
    d = make(tmp_path, minimal() + f'[tools]\nt = "jit:{ref}"\n')
    assert "must be a .ts file inside the image" in refused(d)


def test_a_jit_tool_symlinked_to_outside_the_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.ts").write_text(TS)
    d = make(tmp_path, minimal() + '[tools]\nt = "jit:tools/t.ts"\n')
    (d / "tools").mkdir()
    os.symlink(tmp_path / "outside.ts", d / "tools" / "t.ts")
    assert "must be a .ts file inside the image" in refused(d)


def test_a_jit_tool_that_is_not_typescript_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\nt = "jit:tools/t.js"\n',
             files={"tools/t.js": TS})
    assert "must be a .ts file inside the image" in refused(d)


def test_a_missing_jit_tool_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\nt = "jit:tools/t.ts"\n')
    assert "'tools/t.ts' does not exist" in refused(d)


def test_a_jit_tool_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[tools]\nt = "jit:tools/t.ts"\n',
             files={"tools/t.ts/inner": ""})
    assert "does not exist" in refused(d)


def test_an_unknown_capability_kind_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[capabilities]\nrequest = ["disk:read:/a"]\n')
    msg = refused(d)
    assert msg.startswith(f"{d / 'image.toml'}: [capabilities] ")
    assert "unknown kind 'disk'" in msg


def test_an_unknown_right_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[capabilities]\nrequest = ["fs:exec:./**"]\n')
    assert "unknown right 'exec'" in refused(d)


def test_a_wildcard_kind_is_not_a_capability_an_image_may_request(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[capabilities]\nrequest = ["*:*:**"]\n')
    assert "only allowed in policy patterns" in refused(d)


def test_a_request_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path, minimal() + '[capabilities]\nrequest = "fs:read:./**"\n')
    assert "request must be a list" in refused(d)


@pytest.mark.parametrize(
    ("limit", "fragment"),
    [
        ('memory = "lots"', "[limits] memory: cannot parse 'lots'"),
        ("memory = -1", "[limits] memory: must not be negative"),
        ("memory = true", "[limits] memory: expected a size"),
        ("pids = 0", "[limits] pids must be a positive integer, got 0"),
        ("pids = -3", "[limits] pids must be a positive integer"),
        ("pids = 1.5", "[limits] pids must be a positive integer"),
        ('pids = "64"', "[limits] pids must be a positive integer"),
        ("pids = true", "[limits] pids must be a positive integer"),
        ("cpu = 0", "[limits] cpu must be from 0.01 to 1e+06 cores"),
        ("cpu = -1.0", "[limits] cpu must be from 0.01 to 1e+06 cores"),
        ("cpu = 0.005", "[limits] cpu must be from 0.01 to 1e+06 cores"),
        ('cpu = "1"', "[limits] cpu must be a number of cores like 0.5 or 2"),
        ('wall = "forever"', "[limits] wall: cannot parse 'forever'"),
        ("wall = -5", "[limits] wall: must not be negative"),
    ],
)
def test_a_bad_limit_is_refused_and_named(tmp_path: Path, limit: str, fragment: str) -> None:
    d = make(tmp_path, minimal() + f"[limits]\n{limit}\n")
    msg = refused(d)
    assert msg.startswith(f"{d / 'image.toml'}: ")
    assert fragment in msg


@pytest.mark.parametrize(
    ("toml", "section", "key"),
    [
        (minimal() + "[extra]\nx = 1\n", "top level", "extra"),
        ('[image]\nname = "x"\nentry = "agent:main"\nentrypoint = "y"\n', "image", "entrypoint"),
        (minimal() + '[capabilities]\nrequests = ["fs:read:./**"]\n', "capabilities", "requests"),
        (minimal() + '[limits]\nmemory_max = "1G"\n', "limits", "memory_max"),
    ],
)
def test_an_unknown_key_is_refused_naming_the_section(
    tmp_path: Path, toml: str, section: str, key: str
) -> None:
    msg = refused(make(tmp_path, toml))
    assert f"unknown key(s) in [{section}]: {key}" in msg


@pytest.mark.parametrize("table", ["tools", "capabilities", "limits"])
def test_a_section_that_is_not_a_table_is_refused(tmp_path: Path, table: str) -> None:
    d = make(tmp_path, f"{table} = 3\n" + minimal())
    assert f"[{table}] must be a table" in refused(d)


def test_an_image_error_names_the_image_toml(tmp_path: Path) -> None:
    d = make(tmp_path, minimal(name="BAD"))
    assert refused(d).startswith(str(d / "image.toml"))


# =========================================================== the supervisor's cache


def test_a_supervisor_keeps_a_loaded_image_until_anything_it_read_changes(
        tmp_path: Path) -> None:
    """supervisor/images.py keeps what load_image returned while the image's fingerprint
    holds; each kind of change below loads it again, with load_image's own errors."""
    d = make(tmp_path, GOOD, files={"tools/word_count.ts": TS, "prompts/a.md": "a"})
    images = Images(open_store(tmp_path / "state.db"))
    first = images.resolve(str(d))
    assert images.resolve(str(d)) is first  # nothing changed: kept

    (d / "image.toml").write_text(textwrap.dedent(GOOD).replace('"human:ask"', '"obj:rw:self"'))
    second = images.resolve(str(d))
    assert second is not first and "human:ask" not in {str(c) for c in second.requested}

    (d / "tools" / "word_count.ts").rename(d / "tools" / "other.ts")  # a rename, deeper
    with pytest.raises(ImageError, match="does not exist"):
        images.resolve(str(d))
    (d / "tools" / "other.ts").rename(d / "tools" / "word_count.ts")
    third = images.resolve(str(d))
    assert third is not second and images.resolve(str(d)) is third

    if os.geteuid() == 0:  # only root checks that the agent's uid can read every file
        (d / "prompts" / "a.md").chmod(0o600)  # a mode, deeper: same size and mtime
        with pytest.raises(ImageError, match=r"prompts/a\.md is not readable"):
            images.resolve(str(d))
