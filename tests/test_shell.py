"""shell.exec: argv checks, the file system a command sees, and real programs run from
inside their sandbox -- git, python3, sockets, rm -rf, a fork bomb, a daemon, 10 MB."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentlibos.broker.syscalls.shell import (
    check_argv,
    check_env,
    check_timeout,
    program_allowed,
    program_names,
)
from agentlibos.config import Paths
from agentlibos.errors import InvalidArgument
from agentlibos.kernel.caps import parse_cap
from agentlibos.kernel.policy import BUILTIN_POLICY, Request, authorize, parse_policy
from agentlibos.sandbox import seccomp
from agentlibos.sandbox.namespaces import MountPlan, compile_mounts
from agentlibos.sandbox.profile import (
    SHELL_TMP,
    HostView,
    SandboxConfig,
    build_shell_profile,
)
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.shell import MAX_OUTPUT, cap_root, output_text, shell_paths
from tests.helpers import log_of, run_proc, write_image

POLICY = parse_policy('allow = ["shell:*:*", "fs:*:./**", "proc:*:*"]\ndefault = "deny"\n',
                      "shell-test.toml")
OWNER = 1000  # the project's owner: not the supervisor's uid

AGENT = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for call in args["calls"]:
        try:
            out.append(ctx.shell.run(**call))
        except LibOSError as e:
            out.append({"error": type(e).__name__, "message": e.message})
    return out
"""


# --------------------------------------------------------------- argv, timeout, env


@pytest.mark.parametrize("argv", ["ls -la", [], [""], ["ls", 3], [["ls"]], ["ls", "a\x00b"],
                                  None, {"0": "ls"}])
def test_an_argv_that_is_not_a_non_empty_list_of_strings_is_refused(argv: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"shell\.exec: argv"):
        check_argv(argv)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, 3601, True, "5", None])
def test_a_timeout_that_is_not_a_positive_finite_number_up_to_an_hour_is_refused(
    timeout: Any
) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        check_timeout(timeout)


def test_timeouts_up_to_an_hour_are_taken_as_seconds() -> None:
    assert check_timeout(1) == 1.0 and check_timeout(0.5) == 0.5 and check_timeout(3600) == 3600


@pytest.mark.parametrize("env", [{"PATH": "/srv"}, {"LD_PRELOAD": "/srv/x.so"}, {"A=B": "1"},
                                 {"A": 1}, {"": "x"}, {"A": "a\x00"}, ["A"]])
def test_env_may_not_move_path_or_the_loader_or_be_malformed(env: Any) -> None:
    with pytest.raises(InvalidArgument, match="env"):
        check_env(env)


def test_a_bare_name_is_allowed_as_found_on_the_sandbox_path_and_nowhere_else() -> None:
    git = parse_cap("shell:exec:git")
    assert program_allowed(git, "git", "/usr/bin/git")
    assert not program_allowed(git, "/srv/x/git", "/srv/x/git")  # as given: not "git"
    assert not program_allowed(git, "git", "/srv/x/git")  # resolved off the PATH
    assert not program_allowed(git, "sh", "/usr/bin/sh")
    anything = parse_cap("shell:exec:*")
    assert program_allowed(anything, "/srv/x/git", "/srv/x/git")
    by_path = parse_cap("shell:exec:/usr/bin/*")
    assert program_allowed(by_path, "/usr/bin/git", "/usr/bin/git")
    assert not program_allowed(by_path, "git", "/usr/bin/git")  # as given it is "git"
    assert not program_allowed(parse_cap("shell:exec:sh"), "bash", "/usr/bin/bash")


# ------------------------------------------------------------ what the command sees


def test_policy_rules_see_every_name_of_the_program() -> None:
    assert program_names("rm", "/usr/bin/rm", "/usr/bin/rm") == ("/usr/bin/rm",)
    assert program_names("/bin/rm", "/bin/rm", "/usr/bin/rm") == ("/usr/bin/rm", "rm")
    assert program_names("//usr/bin/rm", "//usr/bin/rm", "/usr/bin/rm") == ("/usr/bin/rm", "rm")
    assert program_names("python3", "/usr/bin/python3", "/usr/bin/python3.11") == (
        "/usr/bin/python3", "/usr/bin/python3.11", "python3.11")
    # Off the PATH a program has no bare name: /srv/x/rm is not the `rm` a rule means.
    assert program_names("/srv/x/rm", "/srv/x/rm", "/srv/x/rm") == ()
    deny_rm = parse_policy('deny = ["shell:exec:rm"]\nask = ["shell:exec:python3.11"]\n'
                           'allow = ["shell:exec:*"]\ndefault = "deny"\n', "p.toml")
    held = [parse_cap("shell:exec:*")]
    for given in ("rm", "/bin/rm", "/usr/bin/rm", "/usr/bin/../bin/rm", "//usr/bin/rm"):
        exe = os.path.normpath(given) if "/" in given else "/usr/bin/rm"
        request = Request("shell", "exec", given,
                          aliases=program_names(given, exe, os.path.realpath(exe)))
        assert authorize(held, deny_rm, request, "/").verdict == "deny", given
    request = Request("shell", "exec", "python3",
                      aliases=program_names("python3", "/usr/bin/python3", "/usr/bin/python3.11"))
    assert authorize(held, deny_rm, request, "/").verdict == "ask"


def test_a_capability_contributes_the_directory_before_its_first_wildcard() -> None:
    assert cap_root("/p/src/**") == "/p/src"
    assert cap_root("/p/*.md") == "/p"
    assert cap_root("/p/a?c/x") == "/p"
    assert cap_root("/p/notes.txt") == "/p/notes.txt"
    assert cap_root("/p/\\*star/**") == "/p/*star"  # an escaped star is a name
    assert cap_root("/**") == "/"
    assert cap_root("**/.env") is None and cap_root("*") is None


def test_read_caps_are_read_only_write_caps_read_write_and_the_policy_has_its_say() -> None:
    caps = [parse_cap(c) for c in (
        "fs:read:/p/**", "fs:rw:/p/out/**", "fs:read:/p/out/logs/**", "fs:read:/etc/**",
        "fs:write:/q/**", "fs:read:**/.env", "fs:read:/**", "fs:read:/proc/**",
        "fs:read:/home/alos/**", "fs:read:/home/**", "shell:exec:*")]
    policy = parse_policy('deny = ["fs:*:/etc/**"]\nallow = ["fs:*:/p/**", "fs:read:/home/**"]'
                          '\nask = ["fs:*:/q/**"]\ndefault = "deny"\n', "t.toml")
    ro, rw = shell_paths(caps, [], policy, "/p", hidden=("/home/alos",))
    # /etc denied; /q asks (a mount is no call to approve); "/" and /proc never; the
    # runtime's home never, nor a directory holding it.
    assert (ro, rw) == (["/p"], ["/p/out"])
    ro, rw = shell_paths(caps, [parse_cap("fs:write:/q/**")], policy, "/p",
                         hidden=("/home/alos",))
    assert sorted(rw) == ["/p/out", "/q"]  # a standing approval answers the ask


def test_the_default_working_directory_in_the_home_is_bound_and_the_rest_of_the_home_not(
) -> None:
    # A run without --cwd works in <home>/work/<pid>: its own files, which every shell
    # command was refused (audit 4-b, F1: "the process's cwd ... is not readable").
    caps = [parse_cap(c) for c in ("fs:rw:/h/work/7/**", "fs:read:/h/**", "fs:rw:/h/work/8/**",
                                   "fs:read:/h/work/7/sub/**")]
    allow = parse_policy('default = "allow"', "t")
    ro, rw = shell_paths(caps, [], allow, "/h/work/7", hidden=("/h",), own="/h/work/7")
    assert (ro, rw) == ([], ["/h/work/7"])
    assert shell_paths(caps, [], allow, "/h/work/7", hidden=("/h",)) == ([], [])


def test_a_write_path_inside_a_read_path_stays_writable_and_reads_inside_writes_merge() -> None:
    caps = [parse_cap(c) for c in ("fs:rw:/p/**", "fs:read:/p/src/**", "fs:read:/r/**",
                                   "fs:read:/r/a/**")]
    ro, rw = shell_paths(caps, [], parse_policy('default = "allow"', "t"), "/p")
    assert (ro, rw) == (["/r"], ["/p"])


def test_the_shell_profile_runs_as_the_owner_with_its_own_tmp_and_writes_only_where_granted(
) -> None:
    view = HostView(ro_paths=("/usr",), symlinks=(("/bin", "usr/bin"),), dev_nodes=("/dev/null",))
    p = build_shell_profile(config=SandboxConfig(), view=view, read_only=("/p",),
                            read_write=("/p/out",), scratch="/h/scratch/s1", new_root="/h/root",
                            cgroup_procs=(), seccomp_bpf=b"x", run_as=(1000, 1000),
                            supervisor_uid=0, supervisor_gid=0)
    assert p.agent_ids == (1000, 1000)
    assert p.mount is not None and p.mount.moved == (("/h/scratch/s1", SHELL_TMP),)
    assert p.mount.ro_binds == ("/usr", "/p") and p.mount.rw_binds == ("/p/out",)
    assert set(p.landlock_rw) == {"/h/scratch/s1", "/dev/null", "/p/out"}
    assert "/p" in p.landlock_ro and "/p/out" not in p.landlock_ro
    assert "net" in p.namespaces and "pid" in p.namespaces


def test_a_bind_inside_another_is_made_after_it(tmp_path: Path) -> None:
    scratch, proj = tmp_path / "scratch", tmp_path / "proj"
    (proj / "out").mkdir(parents=True)
    scratch.mkdir()
    plan = compile_mounts(MountPlan(new_root="/r", ro_binds=(str(proj),),
                                    rw_binds=(str(proj / "out"),), dev_nodes=(), symlinks=(),
                                    tmp_dir=SHELL_TMP, moved=((str(scratch), SHELL_TMP),)))
    assert plan.ops is not None
    assert [t for _, t, _ in plan.ops.binds] == [SHELL_TMP, str(proj), str(proj / "out")]


def test_output_past_the_limit_is_cut_and_says_so_within_the_limit() -> None:
    assert output_text(b"abc", 3) == "abc"
    assert output_text(b"ab", 10) == ("ab\n[agentlibos: output truncated: 10 bytes written, "
                                      "the first 2 kept]")
    # "each output up to 1 MiB, then truncated and said so": the marker included.
    for data in (b"x" * MAX_OUTPUT, "\u20ac".encode() * (MAX_OUTPUT // 3)):
        text = output_text(data, 10_000_000)
        assert len(text.encode()) <= MAX_OUTPUT, len(text.encode())
        kept = int(text.rpartition("the first ")[2].split()[0])
        assert MAX_OUTPUT - 200 < kept < MAX_OUTPUT


# ------------------------------------------------------------------------- seccomp


@pytest.mark.parametrize("style", ["allowlist", "denylist"])
def test_the_shell_variant_adds_exec_and_nothing_the_agent_variant_refuses(style: str) -> None:
    shell, agent = seccomp.build_profile("shell", style), seccomp.build_profile("agent", style)
    for name in ("execve", "execveat", "arch_prctl", "fork", "vfork"):
        assert seccomp.decide(shell, name).action == "allow", name
    assert seccomp.decide(agent, "execve").action == "errno"
    for name in ("ptrace", "mount", "bpf", "io_uring_setup", "unshare", "setsid", "setpgid",
                 "keyctl", "process_vm_readv"):
        assert seccomp.decide(shell, name).action == "errno", (style, name)
    assert seccomp.decide(shell, "socket", (socket.AF_INET, 1, 0)).action == "errno"
    assert seccomp.decide(shell, "clone", (0x10000000,)).action == "errno"  # CLONE_NEWUSER
    allowed_new = {r.syscall for r in shell.rules if r.action == "allow"} - {
        r.syscall for r in agent.rules if r.action == "allow"}
    # flock: an agent may not (two agents could signal through locks on the shared
    # runtime); a command runs alone in its own tree, and programs lock their files.
    assert allowed_new <= {"execve", "execveat", "arch_prctl", "flock", "inotify_init",
                           "inotify_init1", "inotify_add_watch", "inotify_rm_watch"}


@pytest.mark.parametrize("style", ["allowlist", "denylist"])
def test_the_compiled_shell_filter_agrees_with_decide_on_every_syscall(style: str) -> None:
    profile = seccomp.build_profile("shell", style)
    bpf = seccomp.compile_bpf(profile)
    u64 = (1 << 64) - 1
    for nr in range(512):
        name = seccomp.syscall_name(nr)
        for args in ([0] * 6, [u64] * 6, [socket.AF_INET, 1, 0, 0, 0, 0],
                     [0x10000000 | 0x01200011] * 6):
            want = seccomp.decide(profile, name, args) if name else profile.default_action
            got = seccomp.verdict_of(seccomp.emulate_bpf(bpf, nr, args).ret)
            assert got == want, (style, nr, name)


# ------------------------------------------------------------- from inside, for real


@pytest.fixture(scope="module")
def shsup() -> Iterator[Supervisor]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the command runs as the project's owner in its namespaces")
    home = Path(tempfile.mkdtemp(prefix="alos-", dir="/tmp"))
    sup = Supervisor(Paths(home), sandbox=SandboxConfig())
    sup.start()
    try:
        yield sup
    finally:
        sup.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project owned by a non-root user, with a secret at its top."""
    p = tmp_path / "proj"
    (p / "src").mkdir(parents=True)
    (p / "src" / "main.py").write_text("print('hi')\n")
    (p / ".env").write_text("API_KEY=hunter2\n")
    for q in (tmp_path, p, p / "src", p / "src" / "main.py", p / ".env"):
        os.chown(q, OWNER, OWNER)
    os.chmod(tmp_path, 0o755)  # noqa: S103 - the owner must reach its project
    return p


def shell(sup: Supervisor, tmp_path: Path, calls: list[dict[str, Any]], *, cwd: Path,
          caps: list[str], policy: Any = POLICY, code: str = AGENT) -> list[Any]:
    img = write_image(tmp_path / "images", f"sh{time.monotonic_ns()}", code, caps=caps)
    rec = run_proc(sup, img, {"calls": calls}, cwd=cwd, policy=policy, timeout_s=60)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert isinstance(rec.result, list)
    return rec.result


def audits(sup: Supervisor) -> list[Any]:
    """The records of commands that ran (not the authority checks before them)."""
    return [a for a in sup.store.audit_records()
            if a.call == "shell.exec" and a.verdict in ("info", "error")]


@pytest.mark.privileged
def test_git_init_and_commit_work_and_leave_files_the_owner_owns(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    who = {k: "Ada" if k.endswith("NAME") else "ada@example.org" for k in (
        "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")}
    [init, log] = shell(shsup, tmp_path, [
        {"argv": ["sh", "-c", "git init -q && git add src && git commit -qm first && id -u"],
         "env": who},
        {"argv": ["git", "log", "--format=%an %s"]},
    ], cwd=project, caps=["shell:exec:sh", "shell:exec:git", "fs:rw:./**"])
    assert init["exit_code"] == 0, init
    assert init["stdout"].strip() == str(OWNER)
    assert log == {"exit_code": 0, "stdout": "Ada first\n", "stderr": "", "truncated": False,
                   "timed_out": False}
    made = [project / ".git", *(project / ".git").rglob("*")]
    assert len(made) > 10
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in made} == {(OWNER, OWNER)}
    rec = audits(shsup)[-2]
    assert rec.detail["argv"][0] == "sh" and rec.detail["cwd"] == str(project)
    assert rec.detail["exit_code"] == 0 and len(rec.detail["stdout_sha256"]) == 64
    assert "duration_s" in rec.detail
    assert set(rec.detail["layers"]) == {"cgroups", "namespaces", "rlimits", "landlock",
                                         "seccomp"}


@pytest.mark.privileged
def test_a_command_runs_in_the_default_working_directory_and_sees_no_other_part_of_the_home(
    shsup: Supervisor, tmp_path: Path
) -> None:
    home = shsup.paths.home
    img = write_image(tmp_path / "images", "shdefault", AGENT,
                      caps=["shell:exec:sh", "fs:rw:./**"])
    rec = run_proc(shsup, img, {"calls": [{"argv": ["sh", "-c",
        f"echo hi > made.txt && cat made.txt && pwd; ls {home} {home}/work 2>&1; "
        f"test -e {home}/state.db && echo LEAK || echo hidden"]}]},
        policy=POLICY, timeout_s=60)
    assert rec.exit_reason == "returned", (rec.error, log_of(shsup, rec.pid))
    (out,) = rec.result
    work = home / "work" / str(rec.pid)
    assert out["exit_code"] == 0, out
    lines = out["stdout"].splitlines()
    assert lines[:2] == ["hi", str(work)], out
    assert lines[-1] == "hidden" and "state.db" not in out["stdout"], out
    assert (work / "made.txt").read_text() == "hi\n"


@pytest.mark.privileged
def test_python3_cannot_read_a_file_no_capability_covers(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    probe = (f"import os\nfor p in ('../.env', {str(project / '.env')!r}):\n"
             "    try:\n        print(open(p).read())\n"
             "    except OSError as e:\n        print(type(e).__name__)\n"
             "print(sorted(os.listdir('..')))")
    [run] = shell(shsup, tmp_path, [{"argv": ["python3", "-c", probe]}],
                  cwd=project / "src", caps=["shell:exec:python3", "fs:read:./**"])
    assert run["exit_code"] == 0, run
    assert "hunter2" not in run["stdout"] + run["stderr"]
    assert run["stdout"].splitlines() == ["FileNotFoundError", "FileNotFoundError", "['src']"]
    # From the project's top with only ./src/** readable, the cwd is not reachable: the
    # command runs in its private /tmp, where it finds src/ at its own path and no .env.
    probe = (f"import os\nprint(os.getcwd())\nprint(sorted(os.listdir({str(project)!r})))\n"
             f"print(os.path.exists({str(project / '.env')!r}))")
    [run] = shell(shsup, tmp_path, [{"argv": ["python3", "-c", probe]}],
                  cwd=project, caps=["shell:exec:python3", "fs:read:./src/**"])
    assert run["exit_code"] == 0, run
    assert run["stdout"].splitlines() == [SHELL_TMP, "['src']", "False"], run


@pytest.mark.privileged
def test_neither_curl_nor_a_python_socket_reaches_a_loopback_listener(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        probe = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 3)\n"
                 "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)")
        [run, curl] = shell(shsup, tmp_path, [
            {"argv": ["python3", "-c", probe]},
            {"argv": ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/"]},
        ], cwd=project, caps=["shell:exec:python3", "shell:exec:curl", "fs:read:./**"])
        assert run["stdout"].startswith("refused"), run
        assert curl["exit_code"] != 0 and curl["stdout"] == "", curl
        with pytest.raises(BlockingIOError):
            listener.accept()


@pytest.mark.privileged
def test_rm_rf_of_a_read_only_path_fails_and_the_files_remain(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    [run] = shell(shsup, tmp_path, [{"argv": ["rm", "-rf", "src", ".env"]}], cwd=project,
                  caps=["shell:exec:rm", "fs:read:./**"])
    assert run["exit_code"] != 0 and "Read-only file system" in run["stderr"], run
    assert (project / "src" / "main.py").exists() and (project / ".env").exists()


@pytest.mark.privileged
def test_a_fork_bomb_stops_at_the_pids_limit_and_nothing_outlives_it(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    bomb = ("import os, time\nn = 0\ntry:\n    while n < 10000:\n"
            "        if os.fork() == 0:\n            time.sleep(617)\n            os._exit(0)\n"
            "        n += 1\nexcept OSError as e:\n    print(n, type(e).__name__)")
    [run] = shell(shsup, tmp_path, [{"argv": ["python3", "-c", bomb], "timeout": 30}],
                  cwd=project, caps=["shell:exec:python3", "fs:read:./**"])
    n, err = run["stdout"].split()
    limit = SandboxConfig().shell_limits.pids_max
    assert limit is not None and int(n) < limit and err == "BlockingIOError", run
    assert not _sleepers("sleep(617)")
    assert audits(shsup)[-1].detail["pids_limit_hit"] is True


def _sleepers(arg: str) -> list[psutil.Process]:
    """Processes of the project's owner still sleeping ``arg`` seconds (the host runs
    other sleeps of its own: only ours count)."""
    out = []
    for p in psutil.process_iter(["uids", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["uids"] is not None and p.info["uids"].real == OWNER and arg in cmd:
            out.append(p)
    return out


@pytest.mark.privileged
def test_background_and_daemonized_children_are_gone_when_the_call_returns(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    t0 = time.monotonic()
    [bg, daemon] = shell(shsup, tmp_path, [
        {"argv": ["sh", "-c", "sleep 10007 & echo started"]},
        {"argv": ["sh", "-c", "(nohup sleep 10017 >/dev/null 2>&1 &) ; echo forked"]},
    ], cwd=project, caps=["shell:exec:sh", "fs:read:./**"])
    assert bg["stdout"] == "started\n" and daemon["stdout"] == "forked\n", (bg, daemon)
    assert time.monotonic() - t0 < 30
    assert not _sleepers("sleep 10007") and not _sleepers("sleep 10017")


@pytest.mark.privileged
def test_a_command_past_its_deadline_is_killed_with_everything_it_started(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    t0 = time.monotonic()
    [run] = shell(shsup, tmp_path, [
        {"argv": ["sh", "-c", "sleep 10027 & sleep 10037; echo never"], "timeout": 1}],
        cwd=project, caps=["shell:exec:sh", "fs:read:./**"])
    assert run["timed_out"] is True and run["stdout"] == "" and run["exit_code"] == -9, run
    assert time.monotonic() - t0 < 20
    assert not _sleepers("sleep 10027") and not _sleepers("sleep 10037")


@pytest.mark.privileged
def test_a_command_that_signals_itself_dies_of_that_signal_under_its_init(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    # As pid 1 of its namespace the kernel dropped these: `kill -TERM $$` went on and
    # reported 0, abort() came back as SIGSEGV. An init is pid 1 now, the command pid 2.
    runs = shell(shsup, tmp_path, [
        {"argv": ["sh", "-c", "kill -TERM $$; echo still alive"]},
        {"argv": ["python3", "-c", "import os; os.abort()"]},
        {"argv": ["python3", "-c", "import os; os.kill(os.getpid(), 9); print('alive')"]},
        {"argv": ["sh", "-c", "echo $$; exit 3"]},
    ], cwd=project, caps=["shell:exec:sh", "shell:exec:python3", "fs:read:./**"])
    assert [r["exit_code"] for r in runs] == [-signal.SIGTERM, -signal.SIGABRT,
                                              -signal.SIGKILL, 3], runs
    assert [r["stdout"] for r in runs] == ["", "", "", "2\n"], runs


@pytest.mark.privileged
def test_ten_megabytes_of_output_are_cut_at_one_mebibyte_and_said_so(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    # The agent's own result is limited to 1 MiB too: it reports what it got.
    measure = AGENT.replace("out.append(ctx.shell.run(**call))", (
        "r = ctx.shell.run(**call); kept, _, marker = r['stdout'].partition("
        "'\\n[agentlibos: output truncated'); out.append({**r, 'stdout': "
        "[len(kept), sorted(set(kept)), marker]})"))
    [run] = shell(shsup, tmp_path, [
        {"argv": ["python3", "-c", "import sys; sys.stdout.write('x' * 10_000_000)"]}],
        cwd=project, caps=["shell:exec:python3", "fs:read:./**"], code=measure)
    assert run["exit_code"] == 0 and run["truncated"] is True, run
    kept, chars, marker = run["stdout"]
    assert chars == ["x"] and MAX_OUTPUT - 200 < kept < MAX_OUTPUT, run["stdout"]
    assert kept + len(marker) + len("\n[agentlibos: output truncated") <= MAX_OUTPUT
    assert f"10000000 bytes written, the first {kept} kept" in marker
    assert audits(shsup)[-1].detail["stdout_bytes"] == 10_000_000


@pytest.mark.privileged
def test_stdin_is_fed_and_the_environment_is_only_path_home_lang_and_what_was_passed(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    os.environ["AGENTLIBOS_TEST_LEAK"] = "1"
    fds = len(os.listdir("/proc/self/fd"))
    try:
        [cat, env] = shell(shsup, tmp_path, [
            {"argv": ["cat"], "stdin": "through the pipe " * 10000},
            {"argv": ["env"], "env": {"FOO": "bar"}},
        ], cwd=project, caps=["shell:exec:cat", "shell:exec:env", "fs:read:./**"])
    finally:
        del os.environ["AGENTLIBOS_TEST_LEAK"]
    assert cat["stdout"] == "through the pipe " * 10000
    assert len(os.listdir("/proc/self/fd")) == fds  # every pipe and pidfd closed
    assert not list(shsup.paths.scratch.glob("s*"))  # its private /tmp removed
    assert sorted(env["stdout"].split()) == sorted(
        ["PATH=/usr/local/bin:/usr/bin:/bin", f"HOME={SHELL_TMP}", "LANG=C.UTF-8", "FOO=bar"])


@pytest.mark.privileged
def test_bad_argv_timeouts_and_env_are_refused_with_nothing_run(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    touch = ["sh", "-c", "touch ran"]
    before = len(audits(shsup))
    results = shell(shsup, tmp_path, [
        {"argv": "touch ran"}, {"argv": []}, {"argv": ["sh", "-c", 3]},
        {"argv": ["touch", "r\x00an"]}, {"argv": touch, "timeout": 0},
        {"argv": touch, "timeout": -5}, {"argv": touch, "timeout": 7200},
        {"argv": touch, "env": {"PATH": "."}}, {"argv": ["no-such-program-here"]},
    ], cwd=project, caps=["shell:exec:*", "fs:rw:./**"])
    assert [r.get("error") for r in results] == ["InvalidArgument"] * 8 + ["NotFound"], results
    assert not (project / "ran").exists() and not (project / "r").exists()
    assert audits(shsup)[before:] == []


@pytest.mark.privileged
def test_a_capability_for_git_does_not_run_a_git_elsewhere_or_a_shell(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    fake = project / "x" / "git"
    fake.parent.mkdir()
    shutil.copy("/usr/bin/true", fake)
    [by_path, relative, via_sh, real] = shell(shsup, tmp_path, [
        {"argv": [str(fake)]}, {"argv": ["./x/git"]}, {"argv": ["sh", "-c", "git --version"]},
        {"argv": ["git", "--version"]},
    ], cwd=project, caps=["shell:exec:git", "fs:rw:./**"])
    assert by_path["error"] == relative["error"] == via_sh["error"] == "PermissionDenied"
    assert real["exit_code"] == 0 and real["stdout"].startswith("git version")


@pytest.mark.privileged
def test_a_policy_deny_of_a_program_holds_whatever_path_names_it(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    (project / "keep").write_text("x")
    deny_rm = parse_policy('deny = ["shell:exec:rm"]\nallow = ["shell:*:*", "fs:*:./**"]\n'
                           'default = "deny"\n', "deny-rm.toml")
    names = ["rm", "/bin/rm", "/usr/bin/rm", "/usr/bin/../bin/rm", "//usr/bin/rm",
             "/usr/bin/./rm"]
    results = shell(shsup, tmp_path, [{"argv": [n, "keep"]} for n in names], cwd=project,
                    caps=["shell:exec:*", "fs:rw:./**"], policy=deny_rm)
    assert [r.get("error") for r in results] == ["PermissionDenied"] * len(names), results
    assert all("denied by policy rule 'shell:exec:rm'" in r["message"] for r in results)
    assert (project / "keep").exists()


@pytest.mark.privileged
def test_the_built_in_policy_asks_and_an_approval_lets_the_command_run(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    img = write_image(tmp_path / "images", "asker", AGENT, caps=["shell:exec:echo", "fs:rw:./**"])
    pid = shsup.submit_run(str(img), {"calls": [{"argv": ["echo", "approved", "a b\nc"]}]},
                           cwd=str(project), policy=BUILTIN_POLICY)

    def asks() -> list[Any]:
        return [a for a in shsup.store.ask_list() if a.root_pid == pid]

    assert shsup.run_until(lambda: bool(asks()), 20)
    [ask] = asks()
    assert ask.request == "shell:exec:echo"
    # The human sees the command itself, on one line, not only its digest.
    assert ask.summary == "shell.exec wants to run: echo approved 'a b\\nc'"
    assert shsup.store.get_process(pid).wait == f"approval:{ask.id}"
    shsup.approvals.approve(ask.id)
    assert shsup.run_until(lambda: not shsup.tree_live(pid), 30)
    assert shsup.store.get_process(pid).result[0]["stdout"] == "approved a b\nc\n"


@pytest.mark.privileged
def test_an_ask_made_inside_a_builtin_tool_names_the_tools_own_call(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    img = write_image(tmp_path / "images", "tool-asker", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            try:
                return ctx.tools.call("sh", {"argv": ["echo", "hi"]})
            except PermissionDenied as e:
                return str(e)
    """, caps=["shell:exec:echo", "fs:rw:./**"], tools={"sh": "builtin:shell.exec"})
    pid = shsup.submit_run(str(img), {}, cwd=str(project), policy=BUILTIN_POLICY)
    assert shsup.run_until(lambda: any(a.root_pid == pid for a in shsup.store.ask_list()), 20)
    [ask] = [a for a in shsup.store.ask_list() if a.root_pid == pid]
    assert (ask.call, ask.summary) == ("shell.exec", "shell.exec wants to run: echo hi")
    shsup.approvals.deny(ask.id, "not today")
    assert shsup.run_until(lambda: not shsup.tree_live(pid), 30)
    assert shsup.store.get_process(pid).result == (
        "shell.exec: shell:exec:echo was denied by the operator: not today")


@pytest.mark.privileged
@pytest.mark.parametrize(("caps", "policy", "why"), [
    (["shell:exec:*"], None, "it holds no fs capability that reads it"),
    (["shell:exec:*", "fs:read:./**"], 'allow = ["shell:exec:*"]\ndefault = "ask"\n',
     "the policy does not allow reading it outright"),
    (["shell:exec:*", "fs:rw:/**"], 'allow = ["shell:exec:*"]\ndefault = "allow"\n',
     "fs:rw:/** would bind /, which is never bound into a command's tree"),
    (["shell:exec:*", "fs:read:./**"], 'allow = ["*:*:**"]\ndefault = "allow"\n',
     "it lies in the runtime's home"),
], ids=["no-cap", "policy-asks", "root", "home"])
def test_a_command_whose_cwd_the_caller_may_not_read_runs_in_its_private_tmp(
    shsup: Supervisor, tmp_path: Path, project: Path, caps: list[str], policy: str | None,
    why: str
) -> None:
    # `shell:exec` is what a command needs (DESIGN): one whose cwd no fs capability lets
    # it see runs in its own empty /tmp -- nothing of the user's files -- and the audit
    # says why it did not run in the cwd.
    (project / "secret.txt").write_text("SECRET")
    cwd = shsup.paths.home / "logs" if why.startswith("it lies") else project
    img = write_image(tmp_path / "images", "blind", AGENT, caps=caps)
    calls = [{"argv": ["pwd"]}, {"argv": ["echo", "hi"]}, {"argv": ["cat", "secret.txt"]}]
    pid = shsup.submit_run(str(img), {"calls": calls}, cwd=str(cwd),
                           policy=parse_policy(policy, "p") if policy else POLICY)
    assert shsup.run_until(lambda: not shsup.tree_live(pid), 30)
    pwd, echo, cat = shsup.store.get_process(pid).result
    assert (pwd["exit_code"], pwd["stdout"]) == (0, SHELL_TMP + "\n"), pwd
    assert (echo["exit_code"], echo["stdout"]) == (0, "hi\n"), echo
    assert cat["exit_code"] != 0 and "SECRET" not in cat["stdout"], cat
    recs = [r for r in shsup.store.audit_records(pid=pid) if r.call == "shell.exec"
            and r.verdict == "info"]
    assert len(recs) == 3 and all(r.detail["cwd"] == SHELL_TMP for r in recs), recs
    assert recs[0].detail["cwd_unseen"].startswith(f"{cwd}: "), recs[0].detail
    assert why in recs[0].detail["cwd_unseen"], recs[0].detail


@pytest.mark.privileged
def test_a_running_command_suspends_its_call_and_dies_with_its_process(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    img = write_image(tmp_path / "images", "sleeper", AGENT, caps=["shell:exec:sleep",
                                                                   "fs:read:./**"])
    pid = shsup.submit_run(str(img), {"calls": [{"argv": ["sleep", "10047"], "timeout": 600}]},
                           cwd=str(project), policy=POLICY)
    # The loop keeps turning (run_until returns) while the command runs: ps shows the wait.
    assert shsup.run_until(lambda: shsup.store.get_process(pid).wait == "shell:sleep", 20)
    assert shsup.run_until(lambda: bool(_sleepers("sleep 10047")), 20)
    shsup.terminate(pid, "killed", "test")
    assert shsup.run_until(lambda: not shsup.tree_live(pid), 20)
    deadline = time.monotonic() + 10
    while _sleepers("sleep 10047") and time.monotonic() < deadline:
        shsup.run_until(lambda: False, 0.1)
    assert not _sleepers("sleep 10047")


@pytest.mark.privileged
def test_a_quick_command_writes_no_wait_state_and_a_long_one_is_shown_waiting(
    shsup: Supervisor, tmp_path: Path, project: Path
) -> None:
    # supervisor/waits.py: a wait on an effect off the loop reaches the store only once
    # it has lasted SHOW_AFTER_S (50 ms); `ps` then shows it like any other wait.
    writes: list[tuple[int, Any, Any]] = []
    update = shsup.store.update_process

    def watched(pid: int, **fields: Any) -> None:
        if "wait" in fields or "state" in fields:
            writes.append((pid, fields.get("state"), fields.get("wait")))
        update(pid, **fields)

    shsup.store.update_process = watched  # type: ignore[method-assign]
    try:
        [quick, slow] = shell(shsup, tmp_path, [{"argv": ["true"]},
                                                {"argv": ["sleep", "0.5"]}],
                              cwd=project, caps=["shell:exec:*", "fs:rw:./**"])
    finally:
        shsup.store.update_process = update  # type: ignore[method-assign]
    assert quick["exit_code"] == slow["exit_code"] == 0
    shown = [(s, w) for _, s, w in writes if w is not None or s == "running"]
    # One wait shown (the sleep's), then running again: `true` left no trace.
    assert [s for s, _ in shown].count("waiting") == 1, shown
    assert ("waiting", "shell:sleep") in shown, shown
