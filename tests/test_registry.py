"""The image registry: add, show and rm with real files, real Deno and the real CLI.

What ``image add`` validates (the agent's uid can read every file; every JIT tool of
``[tools]`` passes ``deno check``, confined) and that a tool with a type error is refused
before its first use at run time as well, with the compiler's message.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from agentlibos.errors import Conflict, ImageError, NotFound
from agentlibos.jit import deno
from agentlibos.kernel.image import agent_can_read, load_image
from agentlibos.kernel.process import ProcessRecord
from agentlibos.providers.fs import remove_tree
from agentlibos.registry import agent_ids, check_tools, register_image, remove_image
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import SQLiteStore
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, log_of, run_proc
from tests.test_cli import cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="agents read their image as "
                                "uid 65534 only when the supervisor is root")

HELLO = "def main(ctx, args):\n    return {'hello': args.get('who', 'world')}\n"

GOOD_TS = textwrap.dedent("""
    export default function (args: { text: string }, libos: Libos): number {
      return args.text.length;
    }
""")
BAD_TS = textwrap.dedent("""
    export default function (args: { text: string }, libos: Libos): number {
      return args.text.notAMethod();
    }
""")


def with_tools(img: Path, tools: dict[str, str]) -> Path:
    """Add ``[tools]`` entries (name -> target) to the image in ``img``."""
    toml = img / "image.toml"
    table = "".join(f'{k} = "{v}"\n' for k, v in tools.items())
    toml.write_text(toml.read_text().replace("[capabilities]",
                                             f"[tools]\n{table}\n[capabilities]"))
    return img


def leftovers(images_dir: Path) -> list[str]:
    return sorted(p.name for p in images_dir.iterdir()) if images_dir.exists() else []


# ------------------------------------------------------------ who can read (pure)


@pytest.mark.parametrize(
    ("mode", "owner", "reader", "readable"),
    [
        (0o100644, (0, 0), (65534, 65534), True),
        (0o100600, (0, 0), (65534, 65534), False),
        (0o100640, (0, 0), (65534, 65534), False),
        (0o100640, (0, 65534), (65534, 65534), True),   # the group's bits apply
        (0o100204, (65534, 0), (65534, 65534), False),  # the owner's bits, not the others'
        (0o100400, (65534, 0), (65534, 65534), True),
        (0o040755, (0, 0), (65534, 65534), True),
        (0o040751, (0, 0), (65534, 65534), False),      # traversable, not listable
        (0o040744, (0, 0), (65534, 65534), False),      # listable, not traversable
        (0o100000, (1000, 1000), (0, 0), True),         # root reads anything
    ],
)
def test_who_can_read_follows_the_kernels_owner_group_other_rule(
    mode: int, owner: tuple[int, int], reader: tuple[int, int], readable: bool
) -> None:
    assert agent_can_read(mode, owner, reader) is readable


def test_the_agents_ids_come_from_the_sandbox_config() -> None:
    assert agent_ids(SandboxConfig()) == (65534, 65534)
    assert agent_ids(SandboxConfig(agent_uid=4242, agent_gid=None)) == (4242, 4242)
    assert agent_ids(SandboxConfig(agent_uid=None)) is None
    assert agent_ids(SandboxConfig(user_namespace="always")) is None
    assert agent_ids(SandboxConfig(disabled=frozenset({"namespaces"}))) is None


# ------------------------------------------------------ unreadable files, at load


@needs_root
def test_an_agent_py_the_agent_cannot_read_is_refused_at_load_naming_it_and_the_fix(
    make_image: MakeImage
) -> None:
    img = make_image("private", HELLO)
    os.chmod(img / "agent.py", 0o600)
    with pytest.raises(ImageError) as e:
        load_image(img)
    assert e.value.message == (
        f"agent.py is not readable by the agent's uid 65534 (mode 0600) in image {img}; "
        f"make it readable: chmod -R o+rX {img}")
    load_image(img, agent_ids=None)  # an agent running as the operator could read it


@needs_root
def test_a_directory_the_agent_cannot_traverse_is_refused(make_image: MakeImage) -> None:
    img = make_image("closed", HELLO, files={"lib/helper.py": "X = 1\n"})
    os.chmod(img / "lib", 0o700)
    with pytest.raises(ImageError, match=r"lib/ is not listable and traversable by the "
                                         r"agent's uid 65534 \(mode 0700\)"):
        load_image(img)


@needs_root
def test_a_readable_image_with_a_private_cache_directory_loads(make_image: MakeImage) -> None:
    img = make_image("cached", HELLO, files={"__pycache__/x.pyc": ""})
    os.chmod(img / "__pycache__", 0o700)  # never copied, never read by the agent
    assert load_image(img).name == "cached"


@needs_root
def test_image_add_refuses_an_unreadable_file_and_registers_nothing(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("private", HELLO)
    os.chmod(img / "agent.py", 0o600)
    p = cli(home, "image", "add", str(img))
    assert p.returncode == 2, p.stderr
    assert "agent.py is not readable by the agent's uid 65534 (mode 0600)" in p.stderr
    assert f"chmod -R o+rX {img}" in p.stderr
    assert json.loads(cli(home, "image", "ls", "--json", check=True).stdout) == []
    assert leftovers(home / "images") == []


@needs_root
def test_run_of_a_directory_with_an_unreadable_file_fails_at_load_not_in_the_sandbox(
    home: Path, make_image: MakeImage
) -> None:
    img = make_image("private", HELLO)
    os.chmod(img / "agent.py", 0o600)
    p = cli(home, "run", str(img))
    assert p.returncode == 2, p.stderr
    assert "agent.py is not readable by the agent's uid 65534" in p.stderr
    assert "PermissionError" not in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------------ image rm / show


def test_rm_forgets_the_image_removes_its_copy_and_audits_it(
    store: SQLiteStore, tmp_path: Path, make_image: MakeImage
) -> None:
    images_dir = tmp_path / "registry"
    rec, _ = register_image(store, images_dir, make_image("gone", HELLO))
    assert Path(rec.path).is_dir()
    removed = remove_image(store, images_dir, "gone")
    assert removed.name == "gone"
    assert store.get_image("gone") is None
    assert leftovers(images_dir) == []
    assert [(a.call, a.request) for a in store.audit_records()][-1] == \
        ("image.rm", "image:register:gone")


def test_rm_of_an_unknown_or_malformed_name_changes_nothing(
    store: SQLiteStore, tmp_path: Path, make_image: MakeImage
) -> None:
    images_dir = tmp_path / "registry"
    register_image(store, images_dir, make_image("kept", HELLO))
    before = len(store.audit_records())
    with pytest.raises(NotFound, match="no image named 'nosuch'"):
        remove_image(store, images_dir, "nosuch")
    with pytest.raises(ImageError, match="not a valid image name"):
        remove_image(store, images_dir, "../kept")
    assert store.get_image("kept") is not None
    assert leftovers(images_dir) == ["kept"]
    assert len(store.audit_records()) == before


def test_rm_refuses_an_image_a_live_process_runs(
    store: SQLiteStore, tmp_path: Path, make_image: MakeImage
) -> None:
    images_dir = tmp_path / "registry"
    rec, _ = register_image(store, images_dir, make_image("busy", HELLO))
    proc = store.create_process(ProcessRecord(
        pid=0, ppid=None, root_pid=0, image="busy", image_path=rec.path, state="waiting",
        cwd=str(tmp_path), args={}, limits={}, policy_id=store.policy_id("test", "")))
    with pytest.raises(Conflict, match=rf"in use by process\(es\) {proc.pid}: cannot remove"):
        remove_image(store, images_dir, "busy")
    assert store.get_image("busy") is not None and Path(rec.path).is_dir()
    # Nor replaced: a resumed process would run other code and diverge from its journal.
    newer = make_image("busy", HELLO.replace("return", "x = 1\n    return"))
    with pytest.raises(Conflict, match=rf"in use by process\(es\) {proc.pid}: cannot replace"):
        register_image(store, images_dir, newer)
    assert (Path(rec.path) / "agent.py").read_text() == textwrap.dedent(HELLO)
    assert leftovers(images_dir) == ["busy"]
    store.update_process(proc.pid, state="exited", exit_reason="returned")
    remove_image(store, images_dir, "busy")
    assert store.get_image("busy") is None


def test_rm_removes_a_copy_deeper_than_recursion_allows(
    store: SQLiteStore, tmp_path: Path, make_image: MakeImage
) -> None:
    images_dir = tmp_path / "registry"
    rec, _ = register_image(store, images_dir, make_image("deep", HELLO))
    # Deeper than Python's recursion limit, made by descriptor (paths beyond PATH_MAX).
    fd = os.open(rec.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    try:
        remove_image(store, images_dir, "deep")
        assert leftovers(images_dir) == []
    finally:
        for name in leftovers(images_dir):
            remove_tree(str(images_dir / name))


@needs_root
def test_image_rm_and_show_on_the_command_line(home: Path, make_image: MakeImage) -> None:
    img = make_image("shown", HELLO, caps=["fs:read:./**"], limits={"memory": "64MiB"})
    toml = img / "image.toml"
    toml.write_text(toml.read_text().replace('version = "0.1.0"',
                                             'version = "0.1.0"\ndescription = "says hello"'))
    cli(home, "image", "add", str(img), check=True)
    shown = json.loads(cli(home, "image", "show", "shown", "--json", check=True).stdout)
    assert {k: shown[k] for k in ("name", "version", "description", "entry", "tools",
                                  "requested")} == {
        "name": "shown", "version": "0.1.0", "description": "says hello",
        "entry": "agent:main", "tools": {}, "requested": ["fs:read:./**"]}
    assert shown["limits"]["memory_max_bytes"] == 64 << 20
    text = cli(home, "image", "show", "shown", check=True).stdout
    for needle in ("shown", "0.1.0", "says hello", "agent:main", "fs:read:./**",
                   "mem=64MiB"):
        assert needle in text

    out = json.loads(cli(home, "image", "rm", "shown", "--json", check=True).stdout)
    assert out == {"name": "shown", "version": "0.1.0", "path": str(home / "images/shown"),
                   "removed": True}
    assert not (home / "images/shown").exists()
    assert cli(home, "image", "show", "shown").returncode == 2
    again = cli(home, "image", "rm", "shown")
    assert again.returncode == 2
    assert again.stderr.strip() == \
        "agentlibos: error: no image named 'shown' is registered (`agentlibos image ls`)"
    audit = json.loads(cli(home, "audit", "--json", check=True).stdout)
    assert [a["call"] for a in audit] == ["image.add", "image.rm"]


# ------------------------------------------------------- JIT tools, at image add


@pytest.mark.deno
def test_the_host_check_passes_a_good_tool_and_gives_the_compilers_message_for_a_bad_one(
    tmp_path: Path
) -> None:
    (tmp_path / "good.ts").write_text(GOOD_TS)
    (tmp_path / "bad.ts").write_text(BAD_TS)
    assert deno.check_on_host(tmp_path / "good.ts") == (True, "")
    ok, output = deno.check_on_host(tmp_path / "bad.ts")
    assert not ok
    assert "TS2339" in output and "notAMethod" in output and str(tmp_path / "bad.ts") in output


@pytest.mark.deno
@pytest.mark.parametrize("spec", ["../secret.ts", "/etc/hostname", "../secret.json"])
def test_the_host_check_cannot_read_outside_the_tools_directory(
    tmp_path: Path, spec: str
) -> None:
    # A file whose text the compiler would quote if it could read it.
    (tmp_path / "secret.ts").write_text('export const s: number = "TOPSECRET-7";\n')
    (tmp_path / "secret.json").write_text('{"TOPSECRET-7": true}\n')
    tools = tmp_path / "img" / "tools"
    tools.mkdir(parents=True)
    target = spec if spec.startswith("/") else f"../{spec}"
    with_attr = ' with { type: "json" }' if spec.endswith(".json") else ""
    (tools / "t.ts").write_text(
        f'import * as s from "{target}"{with_attr};\n'
        'export default function (args: unknown, libos: Libos): number {\n'
        '  return Object.keys(s).length;\n}\n')
    ok, output = deno.check_on_host(tools / "t.ts")
    assert not ok
    assert "Permission denied" in output, output
    assert "TOPSECRET" not in output


@pytest.mark.deno
def test_the_host_check_fetches_nothing(tmp_path: Path) -> None:
    (tmp_path / "t.ts").write_text(
        'import { x } from "https://example.invalid/mod.ts";\n'
        'import y from "npm:left-pad";\n'
        'export default function (args: unknown, libos: Libos): number { return 1; }\n')
    ok, output = deno.check_on_host(tmp_path / "t.ts")
    assert not ok
    assert "example.invalid" in output or "npm:" in output, output


@pytest.mark.deno
@pytest.mark.slow
def test_add_refuses_a_tool_with_a_type_error_with_the_compilers_message(
    store: SQLiteStore, tmp_path: Path, make_image: MakeImage
) -> None:
    images_dir = tmp_path / "registry"
    img = with_tools(make_image("typed", HELLO, files={"tools/good.ts": GOOD_TS,
                                                       "tools/bad.ts": BAD_TS}),
                     {"good": "jit:tools/good.ts", "bad": "jit:tools/bad.ts"})
    with pytest.raises(ImageError) as e:
        register_image(store, images_dir, img)
    head, _, output = e.value.message.partition("\n")
    assert head == (f"{img / 'image.toml'}: tool 'bad' (tools/bad.ts) does not pass "
                    "`deno check`:")
    assert "TS2339" in output and "notAMethod" in output
    # The message names the source, not the registry's staging copy.
    assert str(img / "tools/bad.ts") in output and ".typed." not in output
    assert store.get_image("typed") is None and store.audit_records() == []
    assert leftovers(images_dir) == []
    # The same image without the bad tool registers, and its good tool passes again.
    (img / "image.toml").write_text((img / "image.toml").read_text().replace(
        'bad = "jit:tools/bad.ts"\n', ""))
    rec, loaded = register_image(store, images_dir, img)
    check_tools(loaded)
    assert leftovers(images_dir) == ["typed"] and rec.name == "typed"


@pytest.mark.deno
@pytest.mark.slow
def test_image_add_prints_the_compiler_message_and_exits_2(
    home: Path, make_image: MakeImage
) -> None:
    img = with_tools(make_image("typed", HELLO, files={"tools/bad.ts": BAD_TS}),
                     {"bad": "jit:tools/bad.ts"})
    p = cli(home, "image", "add", str(img), timeout=180)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == (f"agentlibos: error: {img / 'image.toml'}: tool 'bad' (tools/bad.ts) "
                        "does not pass `deno check`:")
    assert any("TS2339" in line for line in lines[1:]), p.stderr
    assert all(line.startswith("  ") for line in lines[1:])
    assert json.loads(cli(home, "image", "ls", "--json", check=True).stdout) == []


# ------------------------------------------------- JIT tools, before first use


CALL_TWICE = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for _ in range(2):
        try:
            out.append({"ok": True, "value": ctx.tools.call(args["tool"], {"text": "abcd"})})
        except LibOSError as e:
            out.append({"ok": False, "type": type(e).__name__, "message": e.message})
    return out
"""


@pytest.mark.deno
@pytest.mark.privileged
@pytest.mark.slow
def test_an_image_tool_is_type_checked_before_its_first_use_in_a_run(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = with_tools(make_image("checked", CALL_TWICE, caps=["jit:*:*"],
                                files={"tools/good.ts": GOOD_TS, "tools/bad.ts": BAD_TS}),
                     {"good": "jit:tools/good.ts", "bad": "jit:tools/bad.ts"})

    bad = run_proc(sup, img, {"tool": "bad"}, timeout_s=120)
    assert bad.exit_reason == "returned", (bad.error, log_of(sup, bad.pid))
    for out in bad.result:  # it never ran (it used to, and returned null)
        assert (out["ok"], out["type"]) == (False, "InvalidArgument")
        assert out["message"].startswith("tool.call: 'bad' does not pass `deno check`:\n")
        assert "TS2339" in out["message"] and "notAMethod" in out["message"]

    rec = run_proc(sup, img, {"tool": "good"}, timeout_s=120)
    assert rec.result == [{"ok": True, "value": 4}, {"ok": True, "value": 4}]
    # Checked once for the life of the supervisor, by content: a second process
    # calling the same tool is not checked again.
    rec2 = run_proc(sup, img, {"tool": "good"}, timeout_s=120)
    assert rec2.result == rec.result
    checks = [(a.pid, a.verdict, a.request) for a in sup.store.audit_records()
              if a.call == "jit.check"]
    # A failure is not remembered (it may have been the checker's): checked per call.
    assert checks == [(bad.pid, "deny", "jit:invoke:bad"), (bad.pid, "deny", "jit:invoke:bad"),
                      (rec.pid, "info", "jit:invoke:good")]


@pytest.mark.deno
@pytest.mark.privileged
@pytest.mark.slow
def test_a_changed_image_tool_is_checked_again(sup: Supervisor, make_image: MakeImage) -> None:
    img = with_tools(make_image("edited", CALL_TWICE, caps=["jit:*:*"],
                                files={"tools/t.ts": GOOD_TS}), {"t": "jit:tools/t.ts"})
    assert run_proc(sup, img, {"tool": "t"}, timeout_s=120).result[0] == \
        {"ok": True, "value": 4}
    (img / "tools/t.ts").write_text(BAD_TS)
    out = run_proc(sup, img, {"tool": "t"}, timeout_s=120).result[0]
    assert (out["ok"], out["type"]) == (False, "InvalidArgument"), out


@pytest.mark.deno
@pytest.mark.privileged
def test_the_check_is_not_charged_to_a_small_agent(sup: Supervisor,
                                                   make_image: MakeImage) -> None:
    # `deno check` needs ~150 MiB: inside a 96 MiB agent's cgroup it was OOM-killed.
    img = with_tools(make_image("small", CALL_TWICE, caps=["jit:*:*"],
                                limits={"memory": "96MiB"}, files={"tools/t.ts": GOOD_TS}),
                     {"t": "jit:tools/t.ts"})
    rec = run_proc(sup, img, {"tool": "t"}, timeout_s=120)
    assert rec.result == [{"ok": True, "value": 4}, {"ok": True, "value": 4}], \
        log_of(sup, rec.pid)
