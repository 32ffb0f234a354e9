"""shell.exec against an agent that attacks its own command's sandbox: a link raced into a
bind root, a capability with '..' handed to a child, a set-id program left on the host."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agentlibos.errors import PolicyError, SandboxError
from agentlibos.kernel.caps import parse_cap
from agentlibos.kernel.policy import Policy, parse_policy
from agentlibos.sandbox import seccomp
from agentlibos.sandbox.namespaces import STRICT_SOURCE, MountPlan, compile_mounts, open_no_symlinks
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor import shell as shell_module
from tests.helpers import log_of, run_proc, write_image
from tests.test_shell import AGENT, POLICY

pytestmark = pytest.mark.privileged
# The operator allows the user's files anywhere: only the capability bounds a bind.
ANYWHERE = parse_policy('allow = ["shell:*:*", "fs:*:**", "proc:*:*"]\ndefault = "deny"\n',
                        "anywhere.toml")


def _run(sup: Supervisor, tmp_path: Path, cwd: Path, caps: list[str],
         calls: list[dict[str, Any]], policy: Policy = POLICY) -> list[Any]:
    img = write_image(tmp_path / "images", f"h{len(list(tmp_path.iterdir()))}", AGENT,
                      caps=caps)
    rec = run_proc(sup, img, {"calls": calls}, cwd=cwd, policy=policy, timeout_s=60)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert isinstance(rec.result, list)
    return rec.result


# ------------------------------------------------------------------ links in a path


def test_a_path_is_opened_without_following_a_link_in_any_component(tmp_path: Path) -> None:
    (tmp_path / "real" / "d").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = open_no_symlinks(str(tmp_path / "real" / "d"))
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "real" / "d"))
    finally:
        os.close(fd)
    for bad in (tmp_path / "link", tmp_path / "link" / "d"):
        with pytest.raises(SandboxError, match="cannot bind"):
            open_no_symlinks(str(bad))


def test_only_the_shells_user_paths_are_bound_strictly(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "user").mkdir()
    plan = compile_mounts(MountPlan(
        new_root="/nr", ro_binds=(str(tmp_path / "sys"), str(tmp_path / "user")),
        rw_binds=(), dev_nodes=(), symlinks=(), tmp_dir="/tmp",  # noqa: S108 - the path inside, never made
        strict=(str(tmp_path / "user"),)))
    assert plan.ops is not None
    marks = {path: bool(flags & STRICT_SOURCE) for path, _, flags in plan.ops.binds}
    assert marks == {str(tmp_path / "sys"): False, str(tmp_path / "user"): True}
    assert MountPlan.from_json(plan.to_json()) == plan


def test_a_link_in_place_of_a_bind_root_when_the_command_starts_binds_nothing(
    sup: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an agent's racing command does between the supervisor's check of a bind root
    # and the child's mount: the root is a link to elsewhere by the time it is bound.
    # The supervisor's check is made to pass, as if the swap came just after it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE SECRET\n")
    os.chmod(outside / "secret.txt", 0o600)
    proj = tmp_path / "proj"
    proj.mkdir()
    (tmp_path / "granted").symlink_to(outside)
    monkeypatch.setattr(shell_module, "_bindable", lambda path: True)
    [out] = _run(sup, tmp_path, proj, ["shell:exec:sh", "fs:rw:./**",
                                       f"fs:rw:{tmp_path}/granted/**"],
                 [{"argv": ["sh", "-c", f"cat {tmp_path}/granted/secret.txt; "
                                        f"echo pwned > {tmp_path}/granted/PWNED"]}],
                 policy=ANYWHERE)
    assert "OUTSIDE SECRET" not in str(out)
    assert not (outside / "PWNED").exists()
    assert out.get("error") in ("SandboxError", "Unavailable"), out
    assert "symbolic link" in out["message"], out


def test_a_bind_root_checked_while_a_component_changes_is_not_bound() -> None:
    def racing(path: str) -> str:
        raise OSError(22, "Invalid argument")  # realpath's readlink of a path just swapped

    real = os.path.realpath
    os.path.realpath = racing  # type: ignore[assignment]
    try:
        assert shell_module._bindable("/usr") is False
    finally:
        os.path.realpath = real


# ------------------------------------------------------------------ '..' handed on


@pytest.mark.parametrize("text", ["fs:rw:/p/src/..", "fs:read:/p/./src/**",
                                  "fs:rw:/p/src/../secrets/**"])
def test_a_capability_with_dot_components_in_an_absolute_path_is_refused(text: str) -> None:
    with pytest.raises(PolicyError, match=r"'\.' or '\.\.' in an absolute path"):
        parse_cap(text)


def test_a_child_cannot_be_handed_a_parent_directory_through_dot_dot(
    sup: Supervisor, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "secrets").mkdir()
    (proj / "secrets" / "key.txt").write_text("TOP-SECRET-KEY\n")
    images = tmp_path / "images"
    write_image(images, "kid", """
        def main(ctx, args):
            return ctx.shell.run(["sh", "-c", "cat secrets/key.txt"])
    """, caps=["fs:rw:**", "shell:exec:*"])
    parent = write_image(images, "parent", f"""
        from agentlibos.errors import LibOSError
        def main(ctx, args):
            try:
                kid = ctx.proc.spawn("kid", caps=["fs:rw:{proj}/src/..", "shell:exec:*"])
            except LibOSError as e:
                return {{"refused": type(e).__name__, "message": e.message}}
            return ctx.proc.wait(kid)
    """, caps=["fs:rw:./src/**", "shell:exec:*", "proc:spawn:kid", "proc:wait:*"])
    rec = run_proc(sup, parent, {}, cwd=proj, policy=POLICY, timeout_s=60)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert rec.result["refused"] == "InvalidArgument", rec.result
    assert "TOP-SECRET-KEY" not in str(rec.result)


# ------------------------------------------------------------------ set-id bits


@pytest.mark.parametrize("style", ["allowlist", "denylist"])
def test_the_shell_filter_refuses_set_id_modes_and_allows_plain_ones(style: str) -> None:
    p = seccomp.build_profile("shell", style)
    creat, tmpfile = os.O_CREAT | os.O_WRONLY, os.O_TMPFILE | os.O_WRONLY
    refused = [("chmod", [0, 0o4755]), ("fchmod", [3, 0o2755]), ("fchmodat", [3, 0, 0o6755]),
               ("creat", [0, 0o4755]), ("open", [0, creat, 0o4755]),
               ("openat", [3, 0, creat, 0o2700]), ("openat", [3, 0, tmpfile, 0o4700]),
               ("mknod", [0, stat.S_IFREG | 0o4755]), ("mknodat", [3, 0, 0o2644])]
    for name, args in refused:
        assert seccomp.decide(p, name, args) == seccomp.EPERM, (name, args)
    allowed = [("chmod", [0, 0o755]), ("fchmod", [3, 0o1777]), ("open", [0, os.O_RDONLY,
               0o4755]), ("openat", [3, 0, creat, 0o644]), ("mknod", [0, stat.S_IFIFO | 0o600]),
               ("mkdir", [0, 0o2755])]
    for name, args in allowed:
        assert seccomp.decide(p, name, args) == seccomp.ALLOW, (name, args)
    assert seccomp.decide(p, "openat2", [3, 0, 0, 24]) == seccomp.ENOSYS


def test_a_command_in_a_root_owned_tree_leaves_no_set_id_file_on_the_host(
    sup: Supervisor, tmp_path: Path
) -> None:
    proj = tmp_path / "rootproj"
    proj.mkdir()
    assert proj.stat().st_uid == 0  # the command runs as root, every capability dropped
    [copy, creat, plain] = _run(sup, tmp_path, proj, ["shell:exec:*", "fs:rw:./**"], [
        {"argv": ["sh", "-c", "cp /bin/true ./t; chmod u+s ./t; chmod g+s ./t; "
                              "install -m 4755 /bin/true ./u; id -u"]},
        {"argv": ["python3", "-c", "import os; os.open('v', os.O_CREAT | os.O_WRONLY, 0o4755)"]},
        {"argv": ["sh", "-c", "cp /bin/true ./w && chmod 755 ./w && ./w && echo ok"]},
    ])
    assert copy["stdout"].strip().splitlines()[-1] == "0", copy
    assert "Operation not permitted" in copy["stderr"], copy
    assert creat["exit_code"] != 0 and "PermissionError" in creat["stderr"], creat
    assert plain["stdout"] == "ok\n", plain
    for f in proj.iterdir():
        assert not f.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), (f, oct(f.stat().st_mode))
    assert (proj / "w").stat().st_mode & 0o777 == 0o755
