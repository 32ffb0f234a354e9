"""``ctx.image.register``: real agents register images from their cwd; registering
grants nothing, and every bad input is a typed error with nothing registered."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agentlibos.kernel.policy import parse_policy
from agentlibos.registry import Staged, stage_image
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc, write_image

POLICY = parse_policy('allow = ["fs:*:**", "obj:*:*", "proc:*:*", "image:*:*"]\n', "test")

# A parent that registers what args name and reports what happened, typed.
REGISTRAR = """
    from agentlibos.errors import LibOSError
    def main(ctx, args):
        out = []
        for path, name in args["calls"]:
            try:
                out.append(["ok", ctx.image.register(path, name)])
            except LibOSError as e:
                out.append([type(e).__name__, e.message])
        return out
"""


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    write_image(proj, "helper", """
        def main(ctx, args):
            return {"hello": args.get("who", "world")}
    """, caps=["fs:read:./**"])
    return proj


def _leftovers(sup: Supervisor) -> list[str]:
    d = sup.paths.images
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_an_agent_registers_an_image_from_its_cwd_as_a_validated_copy(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    img = make_image("registrar", REGISTRAR,
                     caps=["fs:read:./**", "image:register:helper", "image:register:alias"])
    rec = run_proc(sup, img, {"calls": [["helper", None], ["./helper", "alias"]]},
                   cwd=proj, policy=POLICY)
    assert rec.exit_reason == "returned", rec.error
    (s1, r1), (s2, r2) = rec.result
    assert (s1, s2) == ("ok", "ok"), rec.result
    assert r1 == {"name": "helper", "version": "0.1.0", "path": str(sup.paths.images / "helper")}
    assert r2["name"] == "alias" and r2["path"] == str(sup.paths.images / "alias")
    assert [i.name for i in sup.store.list_images()] == ["alias", "helper"]
    # A copy: editing the source afterwards changes nothing that runs under the name.
    (proj / "helper/agent.py").write_text("def main(ctx, args):\n    return 'edited'\n")
    assert "edited" not in (sup.paths.images / "helper/agent.py").read_text()
    audits = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "image.register"]
    assert [(a.request, a.verdict) for a in audits if a.request.startswith("image:register")
            and a.detail.get("path")] == [("image:register:helper", "info"),
                                          ("image:register:alias", "info")]
    assert _leftovers(sup) == ["alias", "helper"]  # no staging copy left behind


def test_registering_grants_nothing_and_spawning_it_attenuates(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    # The image asks for everything; registering it must not make that a grant.
    write_image(proj, "greedy", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            out = {"caps": ctx.caps.list()}
            try:
                ctx.fs.write_text(args["outside"], "owned")
                out["write"] = "done"
            except PermissionDenied as e:
                out["write"] = e.code
            return out
    """, caps=["fs:rw:/**"])
    parent = make_image("parent", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            reg = ctx.image.register("greedy")
            kid = ctx.proc.spawn("greedy", args={"outside": args["outside"]})
            return {"reg": reg, "child": ctx.proc.wait(kid)}
    """, caps=["fs:read:./**", "image:register:greedy", "proc:spawn:greedy"])
    rec = run_proc(sup, parent, {"outside": str(outside)}, cwd=proj, policy=POLICY)
    assert rec.exit_reason == "returned", rec.error
    child = rec.result["child"]
    assert child["exit_reason"] == "returned", child
    # Everything the parent held, cut to the child's request: read in the project only.
    assert child["result"]["caps"] == [f"fs:read:{proj}/**"]
    assert child["result"]["write"] == "EPERM"
    assert outside.read_text() == "host file"
    assert sup.store.get_process(child["pid"]).image_path == str(sup.paths.images / "greedy")


def test_spawning_a_registered_image_still_needs_proc_spawn_for_its_name(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    img = make_image("noproc", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.image.register("helper")
            try:
                ctx.proc.spawn("helper")
            except PermissionDenied as e:
                return e.message
    """, caps=["fs:read:./**", "image:register:helper"])
    rec = run_proc(sup, img, cwd=proj, policy=POLICY)
    assert rec.exit_reason == "returned", rec.error
    assert "proc:spawn:helper" in rec.result


def test_bad_input_is_refused_with_typed_errors_and_nothing_registered(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    (proj / "plain").mkdir()
    (proj / "plain/readme.txt").write_text("not an image")
    write_image(tmp_path, "elsewhere", "def main(ctx, args):\n    return 1\n")
    (proj / "link").symlink_to(tmp_path / "elsewhere")
    (proj / "piped").mkdir()
    os.mkfifo(proj / "piped/image.toml")  # would stop the loop if it were opened blocking
    write_image(proj, "fifo-inside", "def main(ctx, args):\n    return 1\n")
    os.mkfifo(proj / "fifo-inside/data")  # would stop the copy
    img = make_image("registrar", REGISTRAR, caps=["fs:read:/**", "image:register:*"])
    calls = [
        ["../elsewhere", None],            # outside the cwd, lexically
        [str(tmp_path / "elsewhere"), None],  # outside, absolute
        ["link", None],                    # outside, through a symlink in the cwd
        ["plain", None],                   # not an image
        ["missing", None],                 # nothing there
        ["helper", "Not A Name"],          # an invalid name
        ["helper", "../x"],
        ["", None],                        # an empty path
        ["piped", None],                   # image.toml is a FIFO
        ["fifo-inside", None],             # a FIFO among its files
    ]
    rec = run_proc(sup, img, {"calls": calls}, cwd=proj, policy=POLICY)
    assert rec.exit_reason == "returned", rec.error
    kinds = [r[0] for r in rec.result]
    assert kinds == ["PermissionDenied", "PermissionDenied", "PermissionDenied", "ImageError",
                     "ImageError", "ImageError", "ImageError", "InvalidArgument",
                     "ImageError", "ImageError"], rec.result
    assert "only regular files" in rec.result[-1][1]
    assert "outside the process's working directory" in rec.result[0][1]
    assert sup.store.list_images() == []
    assert _leftovers(sup) == []


def test_a_missing_capability_registers_nothing(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    # No image:register for this name; then no fs:read on the directory.
    img = make_image("registrar", REGISTRAR, caps=["fs:read:./**", "image:register:other"])
    rec = run_proc(sup, img, {"calls": [["helper", None], ["helper", "other2"]]}, cwd=proj,
                   policy=POLICY)
    assert [r[0] for r in rec.result] == ["PermissionDenied", "PermissionDenied"]
    assert "image:register:helper" in rec.result[0][1]
    img2 = make_image("noread", REGISTRAR, caps=["fs:read:./elsewhere/**", "image:register:*"])
    rec2 = run_proc(sup, img2, {"calls": [["helper", None]]}, cwd=proj, policy=POLICY)
    assert rec2.result[0][0] == "PermissionDenied"
    assert "fs:read:" in rec2.result[0][1]
    assert sup.store.list_images() == []
    assert _leftovers(sup) == []


def test_a_name_already_registered_is_a_conflict_whoever_registered_it(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    write_image(proj, "other", "def main(ctx, args):\n    return 2\n")
    img = make_image("registrar", REGISTRAR, caps=["fs:read:./**", "image:register:*"])
    rec = run_proc(sup, img, {"calls": [["helper", None], ["helper", None],
                                        ["other", "helper"]]}, cwd=proj, policy=POLICY)
    assert [r[0] for r in rec.result] == ["ok", "Conflict", "Conflict"], rec.result
    assert "already registered" in rec.result[1][1]
    helper = sup.store.get_image("helper")
    assert helper is not None and helper.path == str(sup.paths.images / "helper")
    assert "hello" in (sup.paths.images / "helper/agent.py").read_text()  # not replaced
    assert _leftovers(sup) == ["helper"]


@pytest.mark.privileged
def test_an_image_the_agent_uid_cannot_read_is_refused(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent runs as another uid only then")
    proj = _project(tmp_path)
    (proj / "helper/agent.py").chmod(0o600)
    img = make_image("registrar", REGISTRAR, caps=["fs:read:./**", "image:register:*"])
    rec = run_proc(sup, img, {"calls": [["helper", None]]}, cwd=proj, policy=POLICY)
    assert rec.result[0][0] == "ImageError", rec.result
    assert sup.store.list_images() == []
    assert _leftovers(sup) == []


GOOD_TS = """
export default function (args: { text: string }, libos: Libos): number {
  return args.text.length;
}
"""
BAD_TS = """
export default function (args: { text: string }, libos: Libos): number {
  return args.text.notAMethod();
}
"""


@pytest.mark.deno
@pytest.mark.slow
def test_jit_tools_are_type_checked_off_the_loop_before_anything_is_registered(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    hello = "def main(ctx, args):\n    return ctx.tools.call('count', {'text': 'four'})\n"
    write_image(proj, "typed", hello, tools={"count": "jit:tools/count.ts"},
                files={"tools/count.ts": GOOD_TS})
    write_image(proj, "broken", hello, tools={"count": "jit:tools/count.ts"},
                files={"tools/count.ts": BAD_TS})
    img = make_image("registrar", REGISTRAR, caps=["fs:read:./**", "image:register:*"])
    rec = run_proc(sup, img, {"calls": [["broken", None], ["typed", None]]}, cwd=proj,
                   policy=POLICY, timeout_s=180)
    assert rec.exit_reason == "returned", rec.error
    (s1, m1), (s2, r2) = rec.result
    assert s1 == "ImageError", rec.result
    assert "does not pass `deno check`" in m1 and "notAMethod" in m1
    assert str(proj / "broken/tools/count.ts") in m1  # the source, not the staging copy
    assert (s2, r2["name"]) == ("ok", "typed")
    assert [i.name for i in sup.store.list_images()] == ["typed"]
    assert _leftovers(sup) == ["typed"]
    errors = [a for a in sup.store.audit_records(pid=rec.pid)
              if a.call == "image.register" and a.verdict == "error"]
    assert [a.request for a in errors] == ["image:register:broken"]


def test_the_copy_and_checks_run_off_the_loop_while_other_agents_go_on(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the staging step (copy + `deno check`) until another agent has run start to
    # end: if it ran on the loop, that agent could not even start.
    release, entered = threading.Event(), threading.Event()

    def held(*a: Any, **kw: Any) -> Staged:
        entered.set()
        assert release.wait(30)
        return stage_image(*a, **kw)

    monkeypatch.setattr("agentlibos.supervisor.image_calls.stage_image", held)
    proj = _project(tmp_path)
    img = make_image("registrar", """
        def main(ctx, args):
            reg = ctx.image.register("helper", name="alias")
            return {"reg": reg, "child": ctx.proc.wait(ctx.proc.spawn("alias",
                                                                      args={"who": "you"}))}
    """, caps=["fs:read:./**", "image:register:alias", "proc:spawn:alias"])
    pid = sup.submit_run(str(img), {}, cwd=str(proj), policy=POLICY)
    assert sup.run_until(entered.is_set, 30)
    # (A wait on work off the loop is shown once it lasts 50 ms: supervisor/waits.py.)
    assert sup.run_until(lambda: sup.store.get_process(pid).wait == "image:alias", 5)
    other = run_proc(sup, make_image("other", "def main(ctx, args):\n    return 7\n"))
    assert other.result == 7
    release.set()
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["reg"]["name"] == "alias"
    assert rec.result["child"]["result"] == {"hello": "you"}


# ------------------------------------------------ the copy itself (registry._copy_tree)


def test_the_copy_follows_no_link_even_one_raced_in_after_the_checks(tmp_path: Path) -> None:
    from agentlibos.registry import _copy_tree  # noqa: PLC0415 - private, tested as such

    (tmp_path / "secret").mkdir()
    (tmp_path / "secret/key.txt").write_text("TOPSECRET")
    src = tmp_path / "img"
    (src / "sub").mkdir(parents=True)
    (src / "sub/a.txt").write_text("a")
    # What a swap between the link check and the copy leaves: a link where a directory was.
    (src / "data").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        _copy_tree(src, tmp_path / "copy")
    copied = [p.read_text() for p in (tmp_path / "copy").rglob("*") if p.is_file()]
    assert "TOPSECRET" not in copied


def test_the_copy_drops_set_id_bits_and_bounds_depth(tmp_path: Path) -> None:
    from agentlibos.errors import LimitExceeded  # noqa: PLC0415
    from agentlibos.registry import MAX_IMAGE_DEPTH, _copy_tree  # noqa: PLC0415

    src = tmp_path / "img"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o4755)
    _copy_tree(src, tmp_path / "copy")
    assert (tmp_path / "copy/run.sh").stat().st_mode & 0o7777 == 0o755
    deep = tmp_path / "deep"
    d = deep
    for _ in range(MAX_IMAGE_DEPTH + 1):
        d = d / "d"
    d.mkdir(parents=True)
    with pytest.raises(LimitExceeded):
        _copy_tree(deep, tmp_path / "copy2")


def test_an_ask_rule_on_image_register_holds_the_call_for_a_human(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = _project(tmp_path)
    policy = parse_policy('ask = ["image:register:*"]\nallow = ["fs:*:**"]\n', "p")
    img = make_image("registrar", REGISTRAR, caps=["fs:read:./**", "image:register:*"])
    pid = sup.submit_run(str(img), {"calls": [["helper", None]]}, cwd=str(proj),
                         policy=policy, ask="deny")
    assert sup.run_until(lambda: not sup.tree_live(pid), 30)
    rec = sup.store.get_process(pid)
    assert rec.result[0][0] == "PermissionDenied", rec.result
    assert "needs a human's approval" in rec.result[0][1]
    assert sup.store.list_images() == []
