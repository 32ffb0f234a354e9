"""The provider seam: the whole runtime runs on injected providers.

A real supervisor, real sandboxed agents speaking through the SDK, but files kept in a
dict, a clock that never moves, a shell that records, a model client of the test's own,
a human channel that approves. What must hold: the effects land in the injected
providers (not on the host), and capabilities and the audit still decide and record.
Providers are also chosen by name in the operator's ``[providers]``, and a bad name is
refused naming the file and the key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlibos.config import Paths, load_operator_config
from agentlibos.errors import Conflict, InvalidArgument, LimitExceeded, NotFound, PolicyError
from agentlibos.kernel.approvals import AskRecord
from agentlibos.kernel.policy import parse_policy
from agentlibos.providers import (
    FileProvider,
    FixedClock,
    HumanAnswers,
    LocalFs,
    MemoryFs,
    ModelAnswer,
    ModelRequest,
    Providers,
    ShellDone,
    ShellRequest,
    ShellResult,
)
from agentlibos.providers.shell import MAX_OUTPUT
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.loop import Loop
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, run_proc

FIXED_TIME = 1_700_000_000.25


def test_memory_fs_is_a_file_provider() -> None:
    fs: FileProvider = MemoryFs()  # mypy checks the Protocol here
    assert fs.resolve("/w", "a/../b").real == "/w/b"


def test_memory_fs_refuses_what_local_fs_refuses() -> None:
    fs = MemoryFs(max_read_bytes=4)
    fs.resolve("/w", ".")
    fs.mkdir("/w/d", parents=False, exist_ok=False)
    fs.write("/w/d/a", b"12345")
    with pytest.raises(LimitExceeded):
        fs.read("/w/d/a", None)
    with pytest.raises(NotFound):
        fs.write("/w/nowhere/a", b"x")
    with pytest.raises(Conflict):
        fs.delete("/w/d", recursive=False)
    with pytest.raises(InvalidArgument):
        fs.resolve("/w", "bad\x00name")
    fs.delete("/w/d", recursive=True)
    assert not fs.exists("/w/d/a") and fs.files() == {}


@pytest.fixture
def mem() -> MemoryFs:
    return MemoryFs()


@pytest.fixture
def mem_sup(paths: Paths, mem: MemoryFs) -> Iterator[Supervisor]:
    s = Supervisor(paths, sandbox=default_sandbox(),
                   providers=Providers(files=mem, clock=FixedClock(FIXED_TIME)))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_a_sandboxed_agent_runs_on_an_injected_file_system_and_clock_under_its_caps(
    mem_sup: Supervisor, mem: MemoryFs, make_image: MakeImage, tmp_path: Path
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    img = make_image("memfiles", """
        from agentlibos.errors import PermissionDenied
        def main(ctx, args):
            ctx.fs.mkdir("out/deep", parents=True)
            ctx.fs.write_text("out/deep/a.txt", "alpha")
            ctx.fs.write_text("out/deep/a.txt", "+more", append=True)
            ctx.fs.write_bytes("out/b.bin", bytes(range(256)))
            try:
                ctx.fs.write_text(args["outside"], "no")
                refused = None
            except PermissionDenied as e:
                refused = e.code
            return {"text": ctx.fs.read_text("out/deep/a.txt"),
                    "listing": [(e["name"], e["type"]) for e in ctx.fs.list("out")],
                    "size": ctx.fs.stat("out/b.bin")["size"],
                    "now": ctx.clock.now(), "refused": refused}
    """, caps=["fs:rw:./**"])
    outside = str(tmp_path / "outside.txt")
    rec = run_proc(mem_sup, img, {"outside": outside}, cwd=proj)
    assert rec.exit_reason == "returned", rec.error
    real = str(proj.resolve())
    assert rec.result == {"text": "alpha+more", "listing": [["b.bin", "file"], ["deep", "dir"]],
                          "size": 256, "now": FIXED_TIME, "refused": "EPERM"}
    # The bytes are in the injected provider, and the host never saw them.
    assert mem.files()[f"{real}/out/deep/a.txt"] == b"alpha+more"
    assert mem.files()[f"{real}/out/b.bin"] == bytes(range(256))
    assert list(proj.iterdir()) == []
    assert not Path(outside).exists() and not mem.exists(outside)
    # Capabilities and the audit still apply: the write outside ./** was refused and
    # recorded, the ones inside allowed and recorded.
    audit = mem_sup.store.audit_records(pid=rec.pid)
    assert [a.call for a in audit if a.verdict == "deny"] == ["fs.write"]
    assert sum(1 for a in audit if a.call == "fs.write" and a.verdict == "allow") == 3


# ------------------------------------------------------------------------ the shell


class RecordingShell:
    """A ShellProvider that runs nothing: it records each request and answers with what
    the test says, at once or, given a loop, a moment later (as a real command would)."""

    def __init__(self, stdout: bytes = b"recorded\n") -> None:
        self.requests: list[ShellRequest] = []
        self.ended: list[int] = []
        self.stdout = stdout
        self.loop: Loop | None = None

    def start(self, request: ShellRequest, done: ShellDone) -> None:
        self.requests.append(request)
        result = ShellResult(0, self.stdout, b"", detail={"provider": "recording"})
        if self.loop is None:
            done(result)
        else:
            self.loop.call_later(0.2, lambda: done(result))

    def end_process(self, pid: int) -> None:
        self.ended.append(pid)


def recording_shell() -> RecordingShell:
    """The factory ``[providers] shell = "tests.test_providers:recording_shell"`` names."""
    return RecordingShell()


SHELL_POLICY = parse_policy('allow = ["shell:*:*", "fs:*:./**"]\ndefault = "deny"\n',
                            "shell-policy.toml")

SHELL_AGENT = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for argv in args["calls"]:
        try:
            r = ctx.shell.run(argv, stdin="in")
            out.append({k: r[k] for k in ("exit_code", "stdout", "truncated")})
        except LibOSError as e:
            out.append({"error": e.code})
    return out
"""


@pytest.mark.parametrize("deferred", [False, True], ids=["answered-at-once", "answered-later"])
def test_a_recording_shell_gets_only_the_commands_the_caps_allow_and_the_audit_records_them(
    paths: Paths, make_image: MakeImage, tmp_path: Path, deferred: bool
) -> None:
    shell = RecordingShell()
    sup = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(shell=shell))
    sup.start()
    try:
        shell.loop = sup.loop if deferred else None
        img = make_image("shelled", SHELL_AGENT, caps=["shell:exec:echo", "fs:rw:./**"])
        pid = sup.submit_run(str(img), {"calls": [["echo", "hi"], ["ls", "-la"]]},
                             cwd=str(tmp_path), policy=SHELL_POLICY)
        if deferred:  # while the recorder holds the command, the agent waits on it
            assert sup.run_until(lambda: sup.store.get_process(pid).wait == "shell:echo", 20)
        assert sup.run_until(lambda: not sup.tree_live(pid), 30)
        rec = sup.store.get_process(pid)
        audit = [a for a in sup.store.audit_records(pid=pid) if a.call == "shell.exec"]
    finally:
        sup.stop()
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == [{"exit_code": 0, "stdout": "recorded\n", "truncated": False},
                          {"error": "EPERM"}]
    # `ls` was refused by the broker: the provider never saw it.
    (req,) = shell.requests
    cwd = str(tmp_path.resolve())
    assert req.argv == ("echo", "hi") and req.exe.endswith("/echo") and req.stdin == b"in"
    assert req.cwd == cwd and cwd in req.read_write and req.env["PATH"]
    assert shell.ended == [pid]
    assert [a.verdict for a in audit] == ["allow", "info", "deny"]
    assert audit[1].detail["provider"] == "recording" and audit[1].detail["argv"] == [
        "echo", "hi"]


def test_the_output_limit_is_the_runtimes_whatever_a_shell_provider_returns(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    shell = RecordingShell(stdout=b"x" * (MAX_OUTPUT + 10))
    sup = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(shell=shell))
    sup.start()
    try:
        img = make_image("loud", """
            def main(ctx, args):
                r = ctx.shell.run(["echo"])
                out = r["stdout"]
                return {"truncated": r["truncated"], "xs": out.count("x"), "tail": out[-80:]}
        """, caps=["shell:exec:echo", "fs:rw:./**"])
        rec = run_proc(sup, img, {}, cwd=tmp_path, policy=SHELL_POLICY)
    finally:
        sup.stop()
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["truncated"] is True and MAX_OUTPUT - 200 < rec.result["xs"] < MAX_OUTPUT
    assert "output truncated" in rec.result["tail"]


# ------------------------------------------------------------------------ models


class EchoModel:
    """An embedder's own model client: answers with the last message, echoed."""

    def __init__(self) -> None:
        self.seen: list[ModelRequest] = []
        self.closed = False

    def check(self) -> None:
        pass

    def chat(self, req: ModelRequest) -> ModelAnswer:
        self.seen.append(req)
        return ModelAnswer({"role": "assistant", "content": "echo: "
                            + req.messages[-1]["content"]}, 5, 2)

    def close(self) -> None:
        self.closed = True


def test_an_injected_model_provider_answers_model_calls_within_the_caps_and_budget(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    model = EchoModel()
    sup = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(models={"mine": model}))
    sup.start()
    try:
        img = make_image("chatter", """
            from agentlibos.errors import LibOSError
            def main(ctx, args):
                r = ctx.model.chat([{"role": "user", "content": "hi"}], model="mine/m1")
                try:
                    ctx.model.chat([{"role": "user", "content": "x"}], model="other/m1")
                    other = None
                except LibOSError as e:
                    other = e.code
                return {"message": r["message"], "usage": r["usage"], "other": other}
        """, caps=["model:call:mine/*"])
        rec = run_proc(sup, img, {}, cwd=tmp_path)
        audit = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "model.chat"]
    finally:
        sup.stop()
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"message": {"role": "assistant", "content": "echo: hi"},
                          "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                    "total_tokens": 7}, "other": "EPERM"}
    # The endpoint sees the model without its provider prefix, as with a configured one.
    assert [r.model for r in model.seen] == ["m1"]
    done = [a for a in audit if a.verdict == "info"]
    assert len(done) == 1 and done[0].detail["model"] == "mine/m1"
    assert model.closed  # the supervisor closes what effects went through


def test_a_model_provider_name_with_a_slash_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not a provider name"):
        Providers(models={"a/b": EchoModel()})


# ------------------------------------------------------------------- the human channel


class AutoApprover:
    """A HumanChannel that approves every ask and answers every question with its first
    choice, from a thread of its own (as a chat-bot bridge would)."""

    def __init__(self) -> None:
        self.opened_items: list[AskRecord] = []
        self.closed_items: list[AskRecord] = []
        self.outcomes: list[str] = []
        self.threads: list[threading.Thread] = []

    def opened(self, item: AskRecord, answers: HumanAnswers) -> None:
        self.opened_items.append(item)

        def bridge() -> None:
            if item.kind == "approval":
                rec = answers.approve(item.id).result(timeout=20)
                try:  # the first answer wins; a second is a Conflict
                    answers.deny(item.id, "too late").result(timeout=20)
                except Conflict:
                    self.outcomes.append("second answer refused")
            else:
                rec = answers.answer(item.id, (item.choices or ["yes"])[0]).result(timeout=20)
            self.outcomes.append(rec.state)

        t = threading.Thread(target=bridge)
        self.threads.append(t)
        t.start()

    def closed(self, item: AskRecord) -> None:
        self.closed_items.append(item)


def auto_approver() -> AutoApprover:
    return AutoApprover()


ASK_POLICY = parse_policy('ask = ["fs:write:**"]\nallow = ["fs:read:**", "human:*:*"]\n'
                          'default = "deny"\n', "ask-policy.toml")


def test_a_human_channel_approves_an_ask_and_answers_a_question_and_the_audit_says_so(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    human = AutoApprover()
    sup = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(human=human))
    sup.start()
    try:
        img = make_image("asker", """
            def main(ctx, args):
                ctx.fs.write_text("out.txt", "approved by a bridge")
                return ctx.human.ask("Ship it?", choices=["ship", "wait"])
        """, caps=["fs:rw:./**", "human:ask:*"])
        rec = run_proc(sup, img, {}, cwd=tmp_path, policy=ASK_POLICY)
        audit = sup.store.audit_records(pid=rec.pid)
    finally:
        sup.stop()
        for t in human.threads:
            t.join(5)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == "ship" and (tmp_path / "out.txt").read_text() == "approved by a bridge"
    assert [i.kind for i in human.opened_items] == ["approval", "question"]
    assert [(i.kind, i.state) for i in human.closed_items] == [("approval", "approved"),
                                                               ("question", "answered")]
    assert sorted(human.outcomes) == ["answered", "approved", "second answer refused"]
    ask = human.opened_items[0].id
    steps = [(a.verdict, a.detail.get("by")) for a in audit
             if a.call == "fs.write" and a.detail.get("approval") == ask]
    assert steps == [("ask", None), ("approved", "human channel AutoApprover"),
                     ("allow", None)]


class BrokenChannel:
    def opened(self, item: AskRecord, answers: HumanAnswers) -> None:
        raise RuntimeError("the bridge is down")

    def closed(self, item: AskRecord) -> None:
        raise RuntimeError("the bridge is down")


def test_a_failing_human_channel_leaves_the_ask_in_the_queue_for_the_operator(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    sup = Supervisor(paths, sandbox=default_sandbox(), providers=Providers(human=BrokenChannel()))
    sup.start()
    try:
        img = make_image("writer", """
            def main(ctx, args):
                ctx.fs.write_text("out.txt", "x")
                return "wrote"
        """, caps=["fs:rw:./**"])
        pid = sup.submit_run(str(img), {}, cwd=str(tmp_path), policy=ASK_POLICY)
        assert sup.run_until(lambda: bool(sup.store.ask_list()), 20)
        sup.approvals.approve(sup.store.ask_list()[0].id)  # what `agentlibos approve` does
        assert sup.run_until(lambda: not sup.tree_live(pid), 20)
        assert sup.store.get_process(pid).result == "wrote"
    finally:
        sup.stop()


# ------------------------------------------------------------- chosen by config


def not_a_provider() -> object:
    return object()


def test_the_operators_providers_table_chooses_them_and_an_explicit_bundle_wins(
    paths: Paths, make_image: MakeImage, tmp_path: Path
) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "config.toml").write_text(
        '[providers]\nfiles = "memory"\nclock = "fixed:1700000000"\n'
        'shell = "tests.test_providers:recording_shell"\n'
        'human = "tests.test_providers:auto_approver"\n')
    assert isinstance(Supervisor(paths, providers=Providers()).providers.files, LocalFs)
    sup = Supervisor(paths, sandbox=default_sandbox())
    files, shell = sup.providers.files, sup.providers.shell
    assert isinstance(files, MemoryFs) and isinstance(shell, RecordingShell)
    assert isinstance(sup.providers.human, AutoApprover)
    sup.start()
    try:
        img = make_image("configured", """
            def main(ctx, args):
                ctx.fs.write_text("note.txt", "in memory")
                r = ctx.shell.run(["echo", "hi"])
                return {"now": ctx.clock.now(), "read": ctx.fs.read_text("note.txt"),
                        "shell": r["stdout"]}
        """, caps=["fs:rw:./**", "shell:exec:echo"])
        # The built-in policy asks for shell.exec: the configured channel approves it.
        rec = run_proc(sup, img, {}, cwd=tmp_path)
        # Its bridge thread then tries a second answer, which the loop must still see
        # (and refuse): a thread left waiting on it would fail a later test.
        human = sup.providers.human
        assert isinstance(human, AutoApprover)
        assert sup.run_until(lambda: not any(t.is_alive() for t in human.threads), 30)
        assert human.outcomes == ["second answer refused", "approved"]
    finally:
        sup.stop()
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == {"now": 1_700_000_000, "read": "in memory", "shell": "recorded\n"}
    assert files.files() == {str(tmp_path.resolve() / "note.txt"): b"in memory"}
    assert not (tmp_path / "note.txt").exists() and len(shell.requests) == 1


@pytest.mark.parametrize(("table", "words"), [
    ('files = "ramdisk"', "[providers] files: unknown files provider 'ramdisk'"),
    ('clock = "fixed:soon"', "[providers] clock: fixed:<unix-seconds> takes a number"),
    ('clock = "fixed"', "[providers] clock: unknown clock provider 'fixed'"),
    ('clock = "system:1"', "[providers] clock: unknown clock provider"),
    ("shell = 3", "[providers] shell must be a string"),
    ('disk = "local"', "unknown key(s) in [providers]: disk"),
])
def test_a_bad_providers_table_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, table: str, words: str
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[providers]\n{table}\n")
    with pytest.raises(PolicyError) as e:
        load_operator_config(cfg)
    assert str(cfg) in e.value.message and words in e.value.message


@pytest.mark.parametrize(("value", "words"), [
    ("nowhere_at_all.module:factory", "ModuleNotFoundError"),
    ("tests.test_providers:no_such_factory", "AttributeError"),
    ("os:no_such_factory", "AttributeError"),  # a top-level module is a module too
    ("tests.test_providers:not_a_provider", "lacks resolve, read, write"),
])
def test_an_embedders_factory_that_cannot_be_built_fails_the_start_naming_the_key(
    paths: Paths, value: str, words: str
) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "config.toml").write_text(f'[providers]\nfiles = "{value}"\n')
    with pytest.raises(PolicyError) as e:
        Supervisor(paths)
    assert "config.toml: [providers] files" in e.value.message and words in e.value.message
