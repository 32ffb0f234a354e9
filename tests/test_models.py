"""Model calls as brokered syscalls: providers, keys, budgets, the loop never blocking.

Against a real OpenAI-compatible server on loopback (tests/openai_server.py): real
sockets, the supervisor's real httpx client; agents are real sandboxed processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentlibos.broker.syscalls.model import check_messages
from agentlibos.config import Paths, parse_operator_config
from agentlibos.errors import (
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    PolicyError,
    Timeout,
    Unavailable,
)
from agentlibos.kernel import tokens
from agentlibos.providers.models import (
    ModelConfig,
    ModelRequest,
    OpenAIProvider,
    ScriptedProvider,
    load_script,
)
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.zygote_client import zygote_env
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, log_of, run_proc, start_daemon, stop_process
from tests.openai_server import Answer, FakeOpenAI
from tests.test_cli import cli, serving

KEY = "sk-test-4f9a1c0e7b2d4e8f9a0b1c2d3e4f5a6b"
KEY_ENV = "ALOS_TEST_MODEL_KEY"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


_OPENED: list[OpenAIProvider] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _provider(server: FakeOpenAI, base: str = "", **kw: Any) -> OpenAIProvider:
    p = OpenAIProvider(ModelConfig(name="local", kind="openai",
                                   base_url=base or server.base_url, **kw))
    _OPENED.append(p)
    return p


def _sup_with(paths: Paths, config: str) -> Supervisor:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "config.toml").write_text(config)
    s = Supervisor(paths, sandbox=default_sandbox())
    s.start()
    return s


def _local(server: FakeOpenAI, extra: str = "") -> str:
    return f'[models.local]\nkind = "openai"\nbase_url = "{server.base_url}"\n{extra}'


# ------------------------------------------------------------------ pure: budgets


def test_a_call_that_does_not_fit_the_budget_is_refused_before_it_is_sent() -> None:
    r = tokens.plan(1, 100, 0, 0, 40, 60)
    assert r.tokens == 100 and r.max_tokens == 60
    with pytest.raises(LimitExceeded, match="tree 1 has spent 10 of its 100"):
        tokens.plan(1, 100, 10, 0, 40, 60)
    with pytest.raises(LimitExceeded):  # what calls in flight hold counts too
        tokens.plan(1, 100, 0, 1, 40, 60)


def test_an_unnamed_max_tokens_is_what_the_budget_leaves_and_never_more() -> None:
    r = tokens.plan(1, 1000, 100, 200, 300, None)
    assert r.max_tokens == 400 and r.tokens == 700
    assert tokens.plan(1, 10**9, 0, 0, 10, None).max_tokens == tokens.DEFAULT_MAX_TOKENS
    assert tokens.plan(1, None, 0, 0, 10, None).max_tokens is None


def test_settling_never_charges_more_than_was_reserved() -> None:
    r = tokens.plan(1, 1000, 0, 0, 50, 20)
    assert tokens.settle_amount(r, 10, 5, sent=True) == (10, 5)
    assert tokens.settle_amount(r, 500, 500, sent=True) == (50, 20)
    assert tokens.settle_amount(r, None, None, sent=False) == (0, 0)
    assert tokens.settle_amount(r, None, None, sent=True) == (50, 20)


def test_the_prompt_estimate_is_at_least_its_utf8_bytes() -> None:
    text = "héllo wörld " * 50
    msgs = [{"role": "user", "content": text}]
    assert tokens.estimate_prompt_tokens(msgs, None) > len(text.encode())


# ------------------------------------------------------------------ config and scripts


def test_models_tables_are_parsed_and_bad_ones_are_refused_naming_the_key(
        tmp_path: Path) -> None:
    cfg = parse_operator_config(
        '[models.openai]\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
        'api_key_env = "OPENAI_API_KEY"\ntimeout = "30s"\nmax_retries = 1\n'
        '[models.script]\nkind = "scripted"\nscript = "s.json"\n',
        str(tmp_path / "config.toml"))
    assert cfg.models["openai"].timeout_s == 30 and cfg.models["openai"].max_retries == 1
    assert cfg.models["script"].script == str(tmp_path / "s.json")
    # Two lines reach OpenAI itself: its URL and its usual key variable are the defaults.
    two = parse_operator_config('[models.openai]\nkind = "openai"\n', "c.toml")
    assert two.models["openai"].base_url == "https://api.openai.com/v1"
    assert two.models["openai"].api_key_env == "OPENAI_API_KEY"
    for bad, says in [('kind = "anthropic"', "kind must be one of"),
                      ('kind = "openai"\nbase_url = "ftp://x"', "base_url must be"),
                      ('kind = "scripted"', "needs script"),
                      ('kind = "openai"\nbase_url = "http://x"\nkey = "sk"', "unknown key")]:
        with pytest.raises(PolicyError, match=says):
            parse_operator_config(f"[models.x]\n{bad}\n", "c.toml")


def test_a_malformed_script_is_a_clear_invalid_argument(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    for text, says in [("{", "not valid JSON"), ('{"answers": []}', '"responses"'),
                       ('{"responses": [{"text": "x"}]}', r"responses\[0\]"),
                       ('{"responses": [{"tool_calls": [{"arguments": {}}]}]}',
                        r"tool_calls\[0\]")]:
        p.write_text(text)
        with pytest.raises(InvalidArgument, match=says):
            load_script(str(p))


def test_a_script_answers_in_order_then_with_empty_content(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"responses": [
        {"content": "one"},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "x"}}]}]}))
    prov = ScriptedProvider(ModelConfig(name="script", kind="scripted", script=str(p)))
    req = ModelRequest("any", MSGS)
    assert prov.chat(req).message["content"] == "one"
    call = prov.chat(req).message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "read_file"
    assert json.loads(call["function"]["arguments"]) == {"path": "x"}
    assert prov.chat(req).message == {"role": "assistant", "content": ""}


# ------------------------------------------------------------------ the HTTP client


def test_the_openai_client_returns_tool_calls_and_usage(server: FakeOpenAI) -> None:
    server.plan.append(Answer(content=None, tool_calls=[
        {"name": "read_file", "arguments": {"path": "a.txt"}}],
        usage={"prompt_tokens": 30, "completion_tokens": 7}))
    ans = _provider(server).chat(ModelRequest("gpt-x", MSGS, max_tokens=50))
    assert ans.message["tool_calls"][0]["function"]["name"] == "read_file"
    assert (ans.prompt_tokens, ans.completion_tokens) == (30, 7)
    assert server.received[0]["body"]["model"] == "gpt-x"
    assert server.received[0]["body"]["max_tokens"] == 50


def test_content_given_as_text_parts_is_their_text_and_other_parts_are_refused(
        server: FakeOpenAI) -> None:
    def raw(content: Any) -> Answer:
        return Answer(raw=json.dumps({"choices": [{"message": {
            "role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode())

    server.plan.append(raw([{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]))
    assert _provider(server).chat(ModelRequest("m", MSGS)).message["content"] == "multipart"
    server.plan.append(raw([{"type": "image_url", "image_url": {"url": "x"}}]))
    with pytest.raises(Unavailable, match=r"message\.content is not text"):
        _provider(server).chat(ModelRequest("m", MSGS))


def test_5xx_and_429_are_retried_with_backoff_then_succeed(server: FakeOpenAI) -> None:
    server.plan.extend([Answer(status=503), Answer(status=429,
                                                   headers={"Retry-After": "0"}), Answer()])
    ans = _provider(server, max_retries=2).chat(ModelRequest("m", MSGS))
    assert ans.attempts == 3 and len(server.received) == 3


def test_retries_are_bounded(server: FakeOpenAI) -> None:
    server.default = Answer(status=500)
    with pytest.raises(Unavailable, match="HTTP 500"):
        _provider(server, max_retries=1).chat(ModelRequest("m", MSGS))
    assert len(server.received) == 2


def test_401_404_and_bad_json_are_clear_errors_that_never_carry_the_key(
        server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    server.key = "something-else"
    prov = _provider(server, api_key_env=KEY_ENV)
    with pytest.raises(PermissionDenied, match="HTTP 401") as e1:
        prov.chat(ModelRequest("m", MSGS))
    assert KEY not in str(e1.value)
    assert server.received[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    server.key = None
    bad = _provider(server, server.base_url + "/nope")
    with pytest.raises(NotFound, match="HTTP 404"):
        bad.chat(ModelRequest("m", MSGS))
    server.plan.append(Answer(raw=b"{not json"))
    with pytest.raises(Unavailable, match="not valid JSON"):
        prov.chat(ModelRequest("m", MSGS))


def test_a_key_a_server_echoes_in_a_good_answer_is_redacted(
        server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    server.plan.append(Answer(content="your key is", echo="Authorization"))
    ans = _provider(server, api_key_env=KEY_ENV).chat(ModelRequest("m", MSGS))
    assert ans.message["content"] == "your key is Bearer [redacted]"
    call = ans.message["tool_calls"][0]["function"]
    assert json.loads(call["arguments"]) == {"Bearer [redacted]": "Bearer [redacted]"}
    assert ans.model == "m Bearer [redacted]"
    assert KEY not in repr(ans)


@pytest.mark.parametrize("placeholder", ["a", "none"])
def test_a_local_servers_placeholder_key_garbles_neither_the_answer_nor_its_usage(
        server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, placeholder: str) -> None:
    # Local servers take any key; "a" is in "usage" and "assistant", "none" in prose.
    monkeypatch.setenv(KEY_ENV, placeholder)
    server.plan.append(Answer(content="none of these is a problem",
                              usage={"prompt_tokens": 3, "completion_tokens": 5}))
    ans = _provider(server, api_key_env=KEY_ENV).chat(ModelRequest("m", MSGS))
    assert ans.message["content"] == "none of these is a problem"
    assert (ans.prompt_tokens, ans.completion_tokens) == (3, 5)


def test_a_slow_server_times_out(server: FakeOpenAI) -> None:
    server.plan.append(Answer(delay_s=2))
    with pytest.raises(Timeout, match=r"within 0\.3 s"):
        _provider(server, timeout_s=0.3, max_retries=0).chat(ModelRequest("m", MSGS))


def test_a_provider_without_its_key_variable_names_the_variable(server: FakeOpenAI) -> None:
    os.environ.pop("ALOS_UNSET_KEY", None)
    with pytest.raises(Unavailable, match=r"\$ALOS_UNSET_KEY is not set"):
        _provider(server, api_key_env="ALOS_UNSET_KEY").chat(ModelRequest("m", MSGS))
    assert server.received == []


def test_the_zygote_environment_keeps_no_secret() -> None:
    env = zygote_env({"PATH": "/bin", KEY_ENV: KEY, "OPENAI_API_KEY": "sk-x", "LANG": "C"})
    assert env == {"PATH": "/bin", "LANG": "C"}


# ------------------------------------------------------------------ through the broker

CHAT = """
import json
from agentlibos.errors import LibOSError
def main(ctx, args):
    try:
        r = ctx.model.chat([{"role": "user", "content": args.get("q", "hi")}],
                           model=args.get("model", "local/gpt-test"),
                           max_tokens=args.get("max_tokens", 20))
        return {"ok": r}
    except LibOSError as e:
        return {"error": type(e).__name__, "message": e.message}
"""


def test_an_agent_calls_a_model_through_the_broker_and_the_audit_records_it(
        paths: Paths, server: FakeOpenAI, make_image: MakeImage, tmp_path: Path) -> None:
    server.plan.append(Answer(content="hello", usage={"prompt_tokens": 12,
                                                      "completion_tokens": 3}))
    sup = _sup_with(paths, _local(server))
    try:
        img = make_image("chat", CHAT, caps=["model:call:local/*"])
        rec = run_proc(sup, img, {"q": "say hello"}, cwd=tmp_path)
        assert rec.state == "exited", log_of(sup, rec.pid)
        ok = rec.result["ok"]
        assert ok["message"] == {"role": "assistant", "content": "hello"}
        assert ok["usage"] == {"prompt_tokens": 12, "completion_tokens": 3,
                               "total_tokens": 15}
        # The provider prefix is the broker's business: the endpoint sees the model name.
        assert server.received[0]["body"]["model"] == "gpt-test"
        done = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "model.chat"
                and a.verdict == "info"]
        assert done and done[0].detail["model"] == "local/gpt-test"
        assert done[0].detail["usage"]["total_tokens"] == 15
        assert done[0].detail["prompt_digest"].startswith("sha256:")
        assert "say hello" not in json.dumps(done[0].detail)
        row = sup.store.get_process(rec.pid).table_row()
        assert row["tokens"]["used"] == 15 and row["tokens"]["calls"] == 1
    finally:
        sup.stop()


def test_bad_requests_are_typed_errors_and_nothing_is_sent(
        paths: Paths, server: FakeOpenAI, make_image: MakeImage, tmp_path: Path) -> None:
    os.environ.pop("ALOS_UNSET_KEY", None)
    sup = _sup_with(paths, _local(server) + '\n[models.nokey]\nkind = "openai"\n'
                    f'base_url = "{server.base_url}"\napi_key_env = "ALOS_UNSET_KEY"\n')
    try:
        img = make_image("chat", CHAT, caps=["model:call:*"])
        cases: list[tuple[dict[str, Any], str, str]] = [
                 ({"model": "ghost/x"}, "NotFound", "no model provider 'ghost'"),
                 ({"model": "nokey/x"}, "Unavailable", "$ALOS_UNSET_KEY is not set"),
                 ({"model": "noslash"}, "InvalidArgument", "provider/model"),
                 ({"max_tokens": 0}, "InvalidArgument", "max_tokens")]
        for args, err, says in cases:
            rec = run_proc(sup, img, args, cwd=tmp_path)
            assert rec.result["error"] == err, rec.result
            assert says in rec.result["message"]
        narrow = make_image("narrow", CHAT, caps=["model:call:other/*"])
        rec = run_proc(sup, narrow, {}, cwd=tmp_path)
        assert rec.result["error"] == "PermissionDenied"
        assert server.received == []
        assert sup.store.tokens_usage(rec.pid).used == 0
    finally:
        sup.stop()


SPY = """
import gc, json, os
def main(ctx, args):
    # The key arrives masked, so the only plain copy in this process is the one made here.
    key = bytes(b ^ 0x5A for b in bytes.fromhex(args["masked"])).decode()
    seen, found = [], []
    try:
        r = ctx.model.chat([{"role": "user", "content": "hi"}], model="local/m")
        seen.append(json.dumps(r))
    except Exception as e:
        seen.append(repr(e) + json.dumps(getattr(e, "details", {})))
    if any(key in k or key in v for k, v in os.environ.items()):
        found.append("os.environ")
    try:
        with open("/proc/self/environ", "rb") as f:
            if key.encode() in f.read():
                found.append("/proc/self/environ")
    except OSError:
        pass
    try:  # the stack: where an inherited environment block would be, cleared or not
        with open("/proc/self/maps") as m, open("/proc/self/mem", "rb", 0) as mem:
            for line in m:
                if line.rstrip().endswith("[stack]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    mem.seek(lo)
                    if key.encode() in mem.read(hi - lo):
                        found.append("stack")
    except OSError:
        pass
    for o in gc.get_objects():
        if isinstance(o, str) and o is not key and key in o:
            found.append("an object")
            break
    if any(key in s for s in seen):
        found.append("a reply")
    return {"found": found, "seen": seen}
"""


@pytest.mark.parametrize("how", ["a 401", "echoed in a good answer"])
def test_the_key_reaches_neither_an_agent_nor_the_audit_nor_a_log(
        paths: Paths, server: FakeOpenAI, make_image: MakeImage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    if how == "a 401":
        server.key = KEY + "-not"  # whose message the agent receives
    else:
        server.default = Answer(content="you sent", echo="Authorization")
    sup = _sup_with(paths, _local(server, f'api_key_env = "{KEY_ENV}"\n'))
    try:
        img = make_image("spy", SPY, caps=["model:call:local/*"])
        masked = bytes(b ^ 0x5A for b in KEY.encode()).hex()
        rec = run_proc(sup, img, {"masked": masked}, cwd=tmp_path)
        assert rec.state == "exited", log_of(sup, rec.pid)
        assert rec.result["found"] == [], rec.result
        assert ("401" if how == "a 401" else "Bearer [redacted]") in rec.result["seen"][0]
        assert server.received[0]["headers"]["Authorization"] == f"Bearer {KEY}"
        audit = json.dumps([a.detail for a in sup.store.audit_records()])
        assert KEY not in audit
        for f in paths.logs.iterdir():
            assert KEY.encode() not in f.read_bytes(), f
    finally:
        sup.stop()
    assert KEY.encode() not in paths.db.read_bytes()


SLOW_AND_FAST = """
import time
def main(ctx, args):
    if args["role"] == "slow":
        ctx.model.chat([{"role": "user", "content": "slow"}], model="local/m")
        return {"done": True}
    ctx.obj.put("ready", 1)
    times = []
    for _ in range(50):
        t = time.monotonic()
        ctx.obj.get("ready")
        times.append(time.monotonic() - t)
    return {"max_ms": max(times) * 1000, "p50_ms": sorted(times)[25] * 1000}
"""


@pytest.mark.slow
def test_the_loop_answers_others_while_a_model_call_hangs(
        paths: Paths, server: FakeOpenAI, make_image: MakeImage, tmp_path: Path) -> None:
    server.plan.append(Answer(delay_s=10))
    sup = _sup_with(paths, _local(server, 'timeout = "30s"\n'))
    try:
        img = make_image("mix", SLOW_AND_FAST, caps=["model:call:local/*", "obj:rw:self"])
        slow = sup.submit_run(str(img), {"role": "slow"}, cwd=str(tmp_path))
        assert sup.run_until(lambda: len(server.received) == 1, 30)
        t0 = time.monotonic()
        fast = run_proc(sup, img, {"role": "fast"}, cwd=tmp_path)
        assert fast.state == "exited", log_of(sup, fast.pid)
        assert time.monotonic() - t0 < 8  # finished while the slow call still hung
        assert sup.tree_live(slow)
        assert fast.result["max_ms"] < 200 and fast.result["p50_ms"] < 20, fast.result
        assert sup.run_until(lambda: not sup.tree_live(slow), 30)
        assert sup.store.get_process(slow).result == {"done": True}
    finally:
        sup.stop()


CALL_ONCE = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    try:
        r = ctx.model.chat([{"role": "user", "content": "x"}], model="local/m",
                           max_tokens=args["max_tokens"])
        return {"ok": r["usage"]["total_tokens"]}
    except LibOSError as e:
        return {"error": type(e).__name__}
"""

PARENT = """
def main(ctx, args):
    kids = [ctx.proc.spawn("once", args={"max_tokens": args["max_tokens"]})
            for _ in range(args["n"])]
    return [ctx.proc.wait(k)["result"] for k in kids]
"""


def test_twenty_concurrent_calls_against_a_budget_for_five_spend_no_more(
        paths: Paths, server: FakeOpenAI, make_image: MakeImage, tmp_path: Path) -> None:
    # Slow answers, so that all 20 are in flight together; each uses its worst case.
    server.default = Answer(delay_s=0.5, usage={"prompt_tokens": 10**6,
                                                "completion_tokens": 10**6})
    per_call = tokens.estimate_prompt_tokens([{"role": "user", "content": "x"}], None) + 50
    budget = 5 * per_call + per_call // 2
    sup = _sup_with(paths, _local(server))
    try:
        make_image("once", CALL_ONCE, caps=["model:call:local/*"])
        parent = make_image("parent", PARENT, caps=["model:call:local/*", "proc:*:*"],
                            limits={"tokens": budget})
        rec = run_proc(sup, parent, {"n": 20, "max_tokens": 50}, cwd=tmp_path, timeout_s=60)
        assert rec.state == "exited", log_of(sup, rec.pid)
        results = rec.result
        assert sum(1 for r in results if "ok" in r) == 5
        assert sum(1 for r in results if r.get("error") == "LimitExceeded") == 15
        assert len(server.received) == 5  # the refused calls never reached the server
        usage = sup.store.tokens_usage(rec.pid)
        assert usage.limit == budget and usage.used <= budget and usage.calls == 5
        assert all(r["body"]["max_tokens"] == 50 for r in server.received)
        assert sup.store.get_process(rec.pid).table_row()["tokens"]["used"] == usage.used
    finally:
        sup.stop()


def test_credentials_in_a_base_url_are_not_shown_in_errors(server: FakeOpenAI) -> None:
    base = server.base_url.replace("http://", "http://user:hunter2@") + "/nope"
    with pytest.raises(NotFound) as e:
        _provider(server, base).chat(ModelRequest("m", MSGS))
    assert "hunter2" not in e.value.message and "127.0.0.1" in e.value.message


@given(st.integers(0, 5000), st.lists(st.tuples(st.booleans(), st.integers(1, 900),
                                                st.integers(1, 900), st.integers(0, 2000),
                                                st.integers(0, 2000)), max_size=60))
def test_no_interleaving_of_reserves_and_settles_spends_more_than_the_budget(
        limit: int, ops: list[tuple[bool, int, int, int, int]]) -> None:
    """Any order of reserving (a call starts) and settling (the oldest in flight ends,
    reporting any usage at all): the spend never passes the limit."""
    used = 0
    in_flight: list[tokens.Reservation] = []
    for start, prompt, max_tokens, p_real, c_real in ops:
        if start or not in_flight:
            reserved = sum(r.tokens for r in in_flight)
            try:
                in_flight.append(tokens.plan(1, limit, used, reserved, prompt, max_tokens))
            except LimitExceeded:
                continue
        else:
            p, c = tokens.settle_amount(in_flight.pop(0), p_real, c_real, sent=True)
            used += p + c
        assert used + sum(r.tokens for r in in_flight) <= limit


def test_a_scripted_answer_has_the_chat_completions_finish_reason(
        paths: Paths, make_image: MakeImage, tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"responses": [
        {"content": "one"}, {"tool_calls": [{"name": "t", "arguments": {}}]}]}))
    sup = _sup_with(paths, f'[models.script]\nkind = "scripted"\nscript = "{script}"\n')
    try:
        img = make_image("twice", """
            def main(ctx, args):
                return [ctx.model.chat([{"role": "user", "content": "hi"}],
                                       model="script/any")["finish_reason"] for _ in "12"]
        """, caps=["model:call:script/*"])
        rec = run_proc(sup, img, cwd=tmp_path)
        assert (rec.state, rec.result) == ("exited", ["stop", "tool_calls"]), rec.error
    finally:
        sup.stop()


CHATTER = """
def main(ctx, args):
    r = ctx.model.chat([{"role": "user", "content": "hi"}], model="local/m")
    return {"content": r["message"]["content"]}
"""


@pytest.mark.privileged
def test_a_daemon_stop_does_not_wait_for_a_model_call_and_the_resumed_agent_asks_again(
    server: FakeOpenAI, home: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    # model.chat is `redo`: cut off by SIGTERM, its answer was never given, so the
    # process asks again once resumed. The stop itself must not wait for the answer.
    (home / "config.toml").write_text(_local(server))
    server.plan.append(Answer(content="late", delay_s=60))
    img = make_image("chatter", CHATTER, caps=["model:call:local/*"])
    daemon = start_daemon(home)
    try:
        r = cli(home, "run", str(img), "--detach")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        deadline = time.monotonic() + 30
        while not server.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.received, "the model call never reached the server"
        row = None
        while time.monotonic() < deadline:  # shown once it lasted 50 ms
            row = next(p for p in json.loads(cli(home, "ps", "--json").stdout)
                       if p["pid"] == pid)
            if row["wait"]:
                break
        assert row is not None and row["wait"] == "model:local/m", row
        assert row["state"] == "waiting", row
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
        assert time.monotonic() - t0 < 10, "the stop waited for the model's answer"
    finally:
        stop_process(daemon, 5)
    server.default = Answer(content="again")
    with serving(home):
        rec = json.loads(cli(home, "wait", str(pid), "--json").stdout)
    assert rec["result"] == {"content": "again"}, (rec, cli(home, "logs", str(pid)).stdout)
    assert len(server.received) == 2


def test_only_text_reaches_a_provider_and_a_models_extra_keys_are_dropped() -> None:
    # An image part names a URL the provider fetches (a way out without `net`) and costs
    # tokens its bytes do not bound: 20 of them spent 30,000 tokens of a 5,000 budget.
    part = {"type": "image_url", "image_url": {"url": "https://x.example/p.png?d=SECRET"}}
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.content\[1\] must be a text"):
        check_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, part]}])
    with pytest.raises(InvalidArgument, match="must be a text part"):
        check_messages([{"role": "user", "content": [{"type": "text", "text": "a",
                                                       "image_url": "u"}]}])
    got = check_messages([
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "refusal": None, "annotations": [],
         "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok", "extra": {"url": "u"}}])
    assert got == [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                   {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
