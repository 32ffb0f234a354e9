"""net.fetch: real agents, real HTTP servers on loopback started here, the broker between.

Only loopback addresses are ever connected to. The deciding parts (URL canonical form,
address classes, which capability names a host) have their own pure tests at the end.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agentlibos.broker.syscalls.net import Url, canonical_url
from agentlibos.config import Paths, parse_operator_config
from agentlibos.errors import InvalidArgument, PermissionDenied, PolicyError, Unavailable
from agentlibos.kernel.caps import parse_caps
from agentlibos.kernel.policy import parse_policy
from agentlibos.providers.net import HttpRequest, HttpResponse, HttpxClient, SecretRule
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.net import _exchange, address_refusal, named_host, names_host
from tests.conftest import default_sandbox
from tests.helpers import MakeImage, log_of, run_proc

ALLOW_NET = parse_policy(
    'allow = ["net:*:*", "fs:*:./**", "obj:*:*", "proc:*:*", "event:*:*", "clock:*:*"]\n'
    'default = "deny"\n', "allow-net.toml")
HANG_MAX_S = 10.0  # a hanging handler gives up after this, so no thread outlives a test


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              *, length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append((self.command, self.path, dict(self.headers.items()), body))
        if u.path == "/hello":
            self._send(200, b"hello, agent", {"Content-Type": "text/plain; charset=utf-8",
                                              "X-Test": "yes"})
        elif u.path.startswith("/echo"):
            out = {"method": self.command, "path": self.path, "body": body.decode(),
                   "headers": dict(self.headers.items())}
            self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})
        elif u.path == "/redirect":
            self._send(int(q.get("status", "302")), b"", {"Location": q["to"]})
        elif u.path == "/loop":
            self._send(302, b"", {"Location": f"/loop?n={int(q.get('n', '0')) + 1}"})
        elif u.path == "/leak":
            # A server that sends the credential it was given back in a redirect.
            self._send(302, b"", {"Location": "/denied/" + self.headers.get("X-Api-Key", "")})
        elif u.path == "/big":
            # Without length=1, no Content-Length: the size is only known by reading.
            self.send_response(200)
            if "length" in q:
                self.send_header("Content-Length", q["n"])
            self.end_headers()
            if self.command == "HEAD":
                return
            chunk = b"x" * 65536
            left = int(q["n"])
            while left > 0:
                self.wfile.write(chunk[:left])
                left -= len(chunk)
        elif u.path == "/hang":
            self.server.hanging.set()
            self.server.release.wait(HANG_MAX_S)
            self._send(200, b"late")
        else:
            self._send(404, b"no such page")

    do_GET = do_POST = do_PUT = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.hanging = threading.Event()
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths_seen(self) -> list[str]:
        return [p for _, p, _, _ in self.seen]


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.release.set()
        s.shutdown()
        s.server_close()
        t.join(5)


FETCH = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = []
    for req in args["requests"]:
        if "body_size" in req:
            req["body"] = b"x" * req.pop("body_size")
        try:
            r = ctx.net.fetch(**req)
            text = r["text"] if len(r["body"]) < 65536 else None
            out.append({"status": r["status"], "text": text, "size": len(r["body"]),
                        "headers": r["headers"], "url": r["url"],
                        "redirects": r["redirects"]})
        except LibOSError as e:
            out.append(f"{type(e).__name__}: {e.message}")
    return out
"""


def _fetch(sup: Supervisor, make_image: MakeImage, caps: list[str],
           requests: list[dict[str, Any]], *, name: str = "fetcher") -> list[Any]:
    img = make_image(name, FETCH, caps=caps)
    rec = run_proc(sup, img, {"requests": requests}, policy=ALLOW_NET)
    assert rec.exit_reason == "returned", log_of(sup, rec.pid)
    assert isinstance(rec.result, list)
    return rec.result


def test_a_get_and_a_post_reach_a_loopback_server_named_by_the_capability(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    got = _fetch(sup, make_image, [f"net:fetch:{server.base}/**"], [
        {"url": f"{server.base}/hello"},
        {"url": f"{server.base}/echo", "method": "POST", "body": "a=1",
         "headers": {"Content-Type": "text/plain", "X-Mine": "m"}},
    ])
    hello, echo = got
    assert (hello["status"], hello["text"], hello["size"]) == (200, "hello, agent", 12)
    assert hello["headers"]["x-test"] == "yes" and hello["url"] == f"{server.base}/hello"
    sent = json.loads(echo["text"])
    assert (sent["method"], sent["body"], sent["headers"]["X-Mine"]) == ("POST", "a=1", "m")
    assert sent["headers"]["Host"] == f"127.0.0.1:{server.port}"
    done = [r for r in sup.store.audit_records() if r.call == "net.fetch" and r.verdict == "info"]
    assert [(r.detail["method"], r.detail["url"], r.detail["status"], r.detail["bytes"])
            for r in done] == [("GET", f"{server.base}/hello", 200, 12),
                               ("POST", f"{server.base}/echo", 200, echo["size"])]
    assert all("a=1" not in json.dumps(r.detail) for r in sup.store.audit_records())


def test_loopback_is_refused_unless_a_capability_names_the_host(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    url = f"{server.base}/hello"
    for i, cap in enumerate(["net:fetch:*", "net:fetch:http://**", "net:fetch:http://127.0.0.*/**"]):
        got = _fetch(sup, make_image, [cap], [{"url": url}], name=f"wide{i}")
        assert got[0].startswith("PermissionDenied: net.fetch: 127.0.0.1 resolves to "
                                 "127.0.0.1, a loopback address"), (cap, got)
    assert server.seen == []
    got = _fetch(sup, make_image, [f"net:fetch:http://127.0.0.1:{server.port}/**"],
                 [{"url": url}], name="named")
    assert got[0]["status"] == 200


SPAWNER = """
def main(ctx, args):
    kid = ctx.proc.spawn("fetcher", args={"requests": args["requests"]}, caps=args["hand"])
    return ctx.proc.wait(kid)["result"]
"""


@pytest.mark.parametrize("parent_cap, reached", [
    ("net:fetch:*", False),  # names no host: it cannot hand on the naming
    ("net:fetch:http://127.0.0.1:{port}/**", True),
])
def test_a_parent_cannot_hand_on_the_naming_of_a_host_it_does_not_name_itself(
    sup: Supervisor, make_image: MakeImage, server: _Server, parent_cap: str, reached: bool
) -> None:
    # The child is handed a capability naming loopback, which lies within the parent's
    # `net:fetch:*`: without the lineage check, the parent reached the host's own
    # services through it (an image it registers and spawns would do the same).
    named = f"net:fetch:http://127.0.0.1:{server.port}/**"
    make_image("fetcher", FETCH, caps=[named])
    img = make_image("spawner", SPAWNER, caps=[parent_cap.format(port=server.port),
                                               "proc:spawn:fetcher", "proc:wait:*"])
    rec = run_proc(sup, img, {"requests": [{"url": f"{server.base}/hello"}],
                              "hand": [named]}, policy=ALLOW_NET)
    assert rec.exit_reason == "returned", log_of(sup, rec.pid)
    [got] = rec.result
    if reached:
        assert got["status"] == 200, got
    else:
        assert got.startswith("PermissionDenied: net.fetch: 127.0.0.1 resolves to "
                              "127.0.0.1, a loopback address"), got
        assert server.seen == []


def test_a_name_that_resolves_to_loopback_is_refused_unless_named(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    url = f"http://localhost:{server.port}/hello"
    got = _fetch(sup, make_image, [f"net:fetch:http://*:{server.port}/**"], [{"url": url}])
    assert "localhost resolves to 127.0.0.1, a loopback address" in got[0]
    assert server.seen == []
    got = _fetch(sup, make_image, [f"net:fetch:http://localhost:{server.port}/**"],
                 [{"url": url}], name="named")
    assert got[0]["status"] == 200
    assert server.seen[0][2]["Host"] == f"localhost:{server.port}"  # the name, not the IP


def test_each_redirect_is_checked_again(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    base = server.base
    got = _fetch(sup, make_image, [f"net:fetch:{base}/redirect*", f"net:fetch:{base}/hello",
                                   f"net:fetch:{base}/loop*"], [
        {"url": f"{base}/redirect?to=/hello"},
        {"url": f"{base}/redirect?to=/echo/secret"},
        {"url": f"{base}/redirect?to=file:///etc/passwd"},
        {"url": f"{base}/loop"},
    ])
    ok, refused, scheme, loop = got
    assert (ok["status"], ok["text"], ok["redirects"]) == (200, "hello, agent", [f"{base}/hello"])
    assert refused.startswith(f"PermissionDenied: net.fetch: net:fetch:{base}/echo/secret "
                              "needs a capability")
    assert scheme.startswith("PermissionDenied: net.fetch: ") and "http and https" in scheme
    assert loop.startswith("PermissionDenied: net.fetch: more than 5 redirects")
    assert "/echo/secret" not in server.paths_seen()  # refused before anything was sent
    assert server.paths_seen().count("/hello") == 1
    denied = [r for r in sup.store.audit_records() if r.call == "net.fetch"
              and r.verdict == "deny" and r.request == f"net:fetch:{base}/echo/secret"]
    assert denied


def test_a_post_redirected_with_303_becomes_a_get_without_its_body(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    got = _fetch(sup, make_image, [f"net:fetch:{server.base}/**"], [
        {"url": f"{server.base}/redirect?status=303&to=/echo", "method": "POST", "body": "b"},
        {"url": f"{server.base}/redirect?status=307&to=/echo", "method": "POST", "body": "c"},
    ])
    assert json.loads(got[0]["text"])["method"] == "GET"
    assert json.loads(got[0]["text"])["body"] == ""
    assert (json.loads(got[1]["text"])["method"], json.loads(got[1]["text"])["body"]) == (
        "POST", "c")


def test_a_response_over_the_size_limit_is_refused(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    limit = sup.net.limits.max_response_bytes
    got = _fetch(sup, make_image, [f"net:fetch:{server.base}/**"], [
        {"url": f"{server.base}/big?n={limit}"},
        {"url": f"{server.base}/big?n={limit + 1}"},
        {"url": f"{server.base}/big?n={limit + 1}&length=1"},
        {"url": f"{server.base}/big?n={limit + 1}&length=1", "method": "HEAD"},
    ])
    assert got[0]["size"] == limit
    assert got[1].startswith("LimitExceeded: net.fetch: the response from "
                             f"http://127.0.0.1:{server.port} is over the limit")
    assert got[2] == (f"LimitExceeded: net.fetch: the response from {server.base} is "
                      f"{limit + 1} bytes, over the limit of {limit}")
    assert (got[3]["status"], got[3]["size"]) == (200, 0)  # HEAD: a length, no body


def test_a_body_over_the_request_limit_and_a_url_that_is_not_http_are_refused(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    got = _fetch(sup, make_image, ["net:fetch:*"], [
        {"url": f"{server.base}/echo", "method": "POST",
         "body_size": sup.net.limits.max_request_bytes + 1},
        {"url": "file:///etc/passwd"},
        {"url": "ftp://127.0.0.1/x"},
        {"url": "http://user:pw@127.0.0.1/"},
        {"url": f"{server.base}/echo", "headers": {"Host": "other"}},
        {"url": "http://127.1/"},
        {"url": f"{server.base}/hello", "timeout": 1000},
    ])
    assert got[0].startswith("LimitExceeded: net.fetch: a body of")
    assert got[1].startswith("InvalidArgument: net.fetch: only http and https")
    assert got[2].startswith("InvalidArgument: net.fetch: only http and https")
    assert got[3].startswith("InvalidArgument: net.fetch: user info")
    assert got[4] == "InvalidArgument: net.fetch: the broker sets the Host header itself"
    assert "in a form other than a.b.c.d" in got[5]
    assert got[6].startswith("InvalidArgument: net.fetch: timeout must be")
    assert server.seen == []
    assert [r.verdict for r in sup.store.audit_records() if r.call == "net.fetch"] == [
        "deny"] * 7


SLOW = """
from agentlibos.errors import LibOSError
import time
def main(ctx, args):
    t = time.monotonic()
    try:
        ctx.net.fetch(args["url"], timeout=args["timeout"])
        return "answered"
    except LibOSError as e:
        return [type(e).__name__, time.monotonic() - t]
"""

BUSY = """
import time
def main(ctx, args):
    took = []
    for i in range(args["n"]):
        t = time.monotonic()
        ctx.obj.put("k", i)
        took.append(time.monotonic() - t)
    return sorted(took)
"""


def test_a_hanging_server_times_out_while_other_agents_are_answered_at_once(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    slow = make_image("slow", SLOW, caps=[f"net:fetch:{server.base}/**"])
    busy = make_image("busy", BUSY, caps=["obj:rw:self"])
    pid = sup.submit_run(str(slow), {"url": f"{server.base}/hang", "timeout": 3},
                         policy=ALLOW_NET)
    assert sup.run_until(lambda: server.hanging.is_set() and sup.store.get_process(pid).wait
                         == f"net:{server.base}/hang", 20)
    other = sup.submit_run(str(busy), {"n": 50}, policy=ALLOW_NET)
    assert sup.run_until(lambda: not sup.tree_live(other), 20)
    assert sup.tree_live(pid)  # still waiting on the server
    took = sup.store.get_process(other).result
    # A loop blocked by the fetch would hold each call for the server's 3 s; on a busy
    # host a call may still take tens of milliseconds now and then.
    assert took[len(took) // 2] < 0.05 and took[-1] < 1.0, took
    assert sup.run_until(lambda: not sup.tree_live(pid), 20)
    name, took = sup.store.get_process(pid).result
    assert name == "Timeout" and 2.5 < took < 5.0


SECRET = "s3cr3t-value-0123456789"  # noqa: S105 - a test value, sought everywhere
LEAKY = """
import os
from agentlibos.errors import LibOSError
def main(ctx, args):
    seen = [f"{k}={v}" for k, v in os.environ.items()]
    r = ctx.net.fetch(args["base"] + "/echo", headers={"X-Api-Key": "mine"})
    seen.append(repr(r))
    try:
        ctx.net.fetch(args["base"] + "/leak")
    except LibOSError as e:
        seen.append(f"{type(e).__name__}: {e.message} {e.details!r}")
    seen.append(repr(ctx.caps.list()))
    probe = args["probe"][::-1]  # given reversed, so the store never holds it either
    return {"found": any(probe in s for s in seen), "echo": r["text"],
            "errors": seen[-2]}
"""


@pytest.fixture
def secret_sup(paths: Paths, server: _Server, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[Supervisor]:
    paths.home.mkdir(parents=True, exist_ok=True)
    (paths.home / "config.toml").write_text(
        f'[secrets.test]\nmatch = "{server.base}/**"\nheader = "X-Api-Key"\n'
        'value_env = "ALOS_TEST_NET_SECRET"\nprefix = "Key "\n')
    monkeypatch.setenv("ALOS_TEST_NET_SECRET", SECRET)
    s = Supervisor(paths, sandbox=default_sandbox())
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_a_secret_header_is_added_and_the_agent_never_sees_it(
    secret_sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    sup = secret_sup
    img = make_image("leaky", LEAKY, caps=[f"net:fetch:{server.base}/echo*",
                                           f"net:fetch:{server.base}/leak"])
    rec = run_proc(sup, img, {"base": server.base, "probe": SECRET[::-1]}, policy=ALLOW_NET)
    assert rec.exit_reason == "returned", log_of(sup, rec.pid)
    assert rec.result["found"] is False
    # The server got it (the agent's own value of that header was replaced) ...
    assert server.seen[0][2]["X-Api-Key"] == f"Key {SECRET}"
    # ... and echoed it, which the agent sees only redacted.
    assert json.loads(rec.result["echo"])["headers"]["X-Api-Key"] == "[redacted]"
    assert rec.result["errors"].startswith("PermissionDenied: net.fetch: ")
    assert "/leak" in server.paths_seen() and len(server.seen) == 2  # /denied never sent
    # Nothing the supervisor wrote holds it: the audit, the journal, the logs.
    for f in [*sup.paths.home.glob("state.db*"), *sup.paths.logs.glob("*")]:
        assert SECRET.encode() not in f.read_bytes(), f
    assert all(SECRET not in json.dumps(r.detail) for r in sup.store.audit_records())


def test_a_secret_whose_variable_is_unset_fails_the_call_clearly(
    secret_sup: Supervisor, make_image: MakeImage, server: _Server,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALOS_TEST_NET_SECRET")
    got = _fetch(secret_sup, make_image, [f"net:fetch:{server.base}/**"],
                 [{"url": f"{server.base}/hello"}])
    assert got == ["Unavailable: net.fetch: the operator's secret 'test' applies to "
                   f"{server.base}/hello, but ALOS_TEST_NET_SECRET is not set for the "
                   "supervisor"]
    assert server.seen == []


def test_the_built_in_policy_asks_a_human_before_a_fetch(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    img = make_image("asker", FETCH, caps=[f"net:fetch:{server.base}/**"])
    pid = sup.submit_run(str(img), {"requests": [{"url": f"{server.base}/hello"}]})

    def ask() -> Any:
        asks = [a for a in sup.store.ask_list() if a.root_pid == pid]
        return asks[0] if asks else None

    assert sup.run_until(lambda: ask() is not None, 20)
    a = ask()
    assert a.request == f"net:fetch:{server.base}/hello"
    assert server.seen == []
    sup.approvals.approve(a.id)
    assert sup.run_until(lambda: not sup.tree_live(pid), 20)
    assert sup.store.get_process(pid).result[0]["status"] == 200


# ------------------------------------------------------------------ pure deciding


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "a loopback address"), ("127.9.9.9", "a loopback address"),
    ("::1", "a loopback address"), ("::ffff:127.0.0.1", "a loopback address"),
    ("10.1.2.3", "a private address"), ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"), ("100.64.0.1", "a private address"),
    ("fc00::1", "a private address"), ("fd12::1", "a private address"),
    ("169.254.1.1", "a link-local address"), ("fe80::1", "a link-local address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("0.0.0.0", "the unspecified address"),  # noqa: S104
    ("::", "the unspecified address"),
    ("224.0.0.1", "a multicast address"), ("ff02::1", "a multicast address"),
    ("64:ff9b::7f00:1", "a loopback address"), ("240.0.0.1", "a reserved address"),
    ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_addresses_inside_the_host_or_its_networks_are_refused(address: str,
                                                               why: str | None) -> None:
    assert address_refusal(address) == why


@pytest.mark.parametrize(("resource", "host"), [
    ("http://127.0.0.1:8080/**", "127.0.0.1"), ("https://api.github.com/**", "api.github.com"),
    ("http://LOCALHOST./x", "localhost"), ("http://[::1]:80/**", "::1"),
    ("http://127.0.0.1:*/**", "127.0.0.1"), ("*://10.0.0.1/**", "10.0.0.1"),
    ("*", None), ("https://**", None), ("http://127.0.0.*/**", None),
    ("http://127.0.0.1*", None), ("http://u@127.0.0.1/", None), ("127.0.0.1", None),
])
def test_a_capability_names_a_host_only_by_a_literal_host(resource: str,
                                                          host: str | None) -> None:
    assert named_host(resource) == host


def test_a_capability_must_allow_the_url_to_name_its_host() -> None:
    url = canonical_url("http://127.0.0.1:8080/x")
    assert names_host(parse_caps(["net:fetch:http://127.0.0.1:8080/**"]), url)
    assert not names_host(parse_caps(["net:fetch:http://127.0.0.1:9090/**",
                                      "net:fetch:*"]), url)


@pytest.mark.parametrize(("given", "canonical"), [
    ("HTTP://Example.COM", "http://example.com/"),
    ("https://example.com:443/a/./b/../c?q=1#frag", "https://example.com/a/c?q=1"),
    ("http://example.com./a/", "http://example.com/a/"),
    ("http://[::1]:8080/", "http://[::1]:8080/"),
    ("http://127.0.0.1:80/x", "http://127.0.0.1/x"),
    ("https://bücher.example/", "https://xn--bcher-kva.example/"),
])
def test_urls_are_checked_in_their_canonical_form(given: str, canonical: str) -> None:
    assert canonical_url(given).text == canonical


@pytest.mark.parametrize("bad", [
    "file:///etc/passwd", "ftp://x/", "javascript:alert(1)", "http://", "http://a b/",
    "http://u:p@host/", "http://host:0/", "http://host:99999/", "http://0x7f.1/",
    "http://2130706433/", "http://h/%2e%2e/etc", "http://h\\@evil/", "http://a*b/",
])
def test_urls_that_cannot_be_fetched_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        canonical_url(bad)


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[HttpRequest] = []

    def send(self, req: HttpRequest) -> HttpResponse:
        self.sent.append(req)
        return HttpResponse(200, (), b"")

    def close(self) -> None:
        pass


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """A DNS answer that changes after the check (rebinding) is never asked for."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[len(calls) - 1]

    client = _Recorder()
    url: Url = canonical_url("http://rebind.example/")
    _exchange(client, resolver, url, "GET", (), b"", time.monotonic() + 5, 100, False)
    assert calls == ["rebind.example"]
    assert [(r.address, r.host) for r in client.sent] == [("93.184.216.34", "rebind.example")]
    with pytest.raises(PermissionDenied, match="a loopback address"):
        _exchange(client, resolver, url, "GET", (), b"", time.monotonic() + 5, 100, False)
    assert len(client.sent) == 1


def test_a_name_with_one_internal_address_among_public_ones_is_refused() -> None:
    client = _Recorder()
    with pytest.raises(PermissionDenied, match=r"10\.0\.0\.5, a private address"):
        _exchange(client, lambda h, p: ["93.184.216.34", "10.0.0.5"],
                  canonical_url("http://mixed.example/"), "GET", (), b"",
                  time.monotonic() + 5, 100, False)
    assert client.sent == []


@pytest.mark.parametrize(("table", "message"), [
    ('[secrets.a]\nheader = "X"\nvalue_env = "V"\n', "missing match"),
    ('[secrets.a]\nmatch = "*"\nheader = "X"\nvalue_env = "V"\n', "must be a URL glob"),
    ('[secrets.a]\nmatch = "https://h/**"\nheader = "Host"\nvalue_env = "V"\n',
     "not a header name"),
    ('[secrets.a]\nmatch = "https://h/**"\nheader = "X"\nvalue_env = "V"\nvalue = "no"\n',
     "unknown key"),
    ('[secrets]\na = 1\n', "must be a table"),
])
def test_a_malformed_secrets_table_is_an_error_naming_it(table: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_operator_config(table, "config.toml")


def test_a_secrets_table_is_parsed() -> None:
    cfg = parse_operator_config(
        '[secrets.github]\nmatch = "https://api.github.com/**"\nheader = "Authorization"\n'
        'value_env = "GITHUB_TOKEN"\nprefix = "Bearer "\n', "config.toml")
    (rule,) = cfg.secrets
    assert (rule.name, rule.header, rule.value_env, rule.prefix) == (
        "github", "Authorization", "GITHUB_TOKEN", "Bearer ")
    assert rule.matches("https://api.github.com/repos/x")
    assert not rule.matches("https://api.github.com.evil.example/")


def test_a_process_killed_during_a_fetch_leaves_nothing_behind(
    sup: Supervisor, make_image: MakeImage, server: _Server
) -> None:
    slow = make_image("slow", SLOW, caps=[f"net:fetch:{server.base}/**"])
    pid = sup.submit_run(str(slow), {"url": f"{server.base}/hang", "timeout": 30},
                         policy=ALLOW_NET)
    assert sup.run_until(server.hanging.is_set, 20)
    sup.terminate(pid, "killed", "the test stops it", grace_s=0)
    assert sup.run_until(lambda: not sup.tree_live(pid), 20)
    server.release.set()  # the answer comes back for a process that is gone
    assert sup.run_until(lambda: sup.offloop.in_flight == 0, 20)
    sup.step(0.05)
    assert sup.store.get_process(pid).state == "killed"
    assert not [r for r in sup.store.audit_records() if r.verdict == "error"]
    busy = make_image("busy", BUSY, caps=["obj:rw:self"])
    assert run_proc(sup, busy, {"n": 3}, policy=ALLOW_NET).exit_reason == "returned"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, ssl.SSLContext, list[str]]]:
    """An https server on 127.0.0.1 whose certificate is for ``localhost`` only."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True,
                   capture_output=True)
    names: list[str] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def sni(sock: ssl.SSLObject, name: str | None, c: ssl.SSLContext) -> None:
        names.append(str(name))

    ctx.sni_callback = sni
    s = _Server()
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
    t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        yield s, trust, names
    finally:
        s.shutdown()
        s.server_close()
        t.join(5)


def test_https_goes_to_the_checked_address_with_the_name_for_sni_and_the_certificate(
    tls_server: tuple[_Server, ssl.SSLContext, list[str]]
) -> None:
    server, trust, names = tls_server
    client = HttpxClient(verify=trust)
    try:
        def req(host: str) -> HttpRequest:
            return HttpRequest("GET", "https", host, server.port, "/hello", "127.0.0.1", (),
                               b"", time.monotonic() + 10, 1 << 20)

        resp = client.send(req("localhost"))
        assert (resp.status, resp.body) == (200, b"hello, agent")
        assert names == ["localhost"]
        assert server.seen[0][2]["Host"] == f"localhost:{server.port}"
        # Same address, another name: the certificate is checked against the name.
        with pytest.raises(Unavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            client.send(req("other.example"))
        assert len(server.seen) == 1
    finally:
        client.close()


def test_a_secret_rules_host_matches_the_requests_host_alone() -> None:
    rule = SecretRule("api", "http://*.example.com/**", "Authorization", "TOKEN")
    assert rule.matches("http://api.example.com/v1")
    assert not rule.matches("http://127.0.0.1:8080/.example.com/")
