"""The web console: its guard in pure code, its HTTP answers, and real use in Chromium.

The browser tests drive Debian's ``chromium`` through its ``chromedriver`` (installed by
``.ci/run``) against a real ``agentlibos serve`` and real agents whose writes need a
human's approval; they click the page's own buttons and look at the files the agents
wrote. The cross-site tests attack from a page on another site in the same browser.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver import Chrome, ChromeOptions
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from agentlibos.config import Paths
from agentlibos.console import Guard, host_names, parse_listen
from agentlibos.errors import UsageError
from agentlibos.supervisor.control import control_call
from tests.helpers import stop_process, write_image
from tests.test_cli import cli, serving

STRICT = os.environ.get("AGENTLIBOS_STRICT") == "1"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{40,})$")
XSS = "<img src=x onerror=alert(2)><script>alert(1)</script>"


# --- the guard, decided in pure code -------------------------------------------------

HOSTS = host_names("127.0.0.1", 8470, loopback=True)


def test_the_wrong_token_opens_no_session_and_the_right_one_does() -> None:
    g = Guard("right-token", HOSTS)
    assert g.login("wrong-token") is None
    assert g.login("") is None
    s = g.login("right-token")
    assert s is not None
    assert g.session(s.id) == s
    assert g.session("forged") is None
    assert g.session(None) is None


def test_a_change_needs_the_sessions_csrf_token_and_our_own_origin() -> None:
    g = Guard("t", HOSTS)
    s = g.login("t")
    assert s is not None
    own = "http://127.0.0.1:8470"
    ok = g.check_change(s, host="127.0.0.1:8470", csrf=s.csrf, origin=own, referer=None)
    assert ok is None
    for csrf, origin, referer in [
        (None, own, None),  # no CSRF token
        ("forged", own, None),  # someone else's
        (s.csrf, "http://evil.example", None),  # a cross-site POST that somehow has it
        (s.csrf, "http://127.0.0.1:8471", None),  # another port is another origin
        (s.csrf, "null", None),  # an opaque origin (sandboxed frame, data: URL)
        (s.csrf, None, "http://evil.example/page"),
        (s.csrf, None, None),  # neither: not from a browser page of ours
    ]:
        refusal = g.check_change(s, host="127.0.0.1:8470", csrf=csrf, origin=origin,
                                 referer=referer)
        assert refusal is not None and refusal.status == 403, (csrf, origin, referer)
    assert g.check_change(s, host="127.0.0.1:8470", csrf=s.csrf, origin=None,
                          referer=own + "/") is None


def test_another_sessions_csrf_token_does_not_do() -> None:
    g = Guard("t", HOSTS)
    a, b = g.login("t"), g.login("t")
    assert a is not None and b is not None and a.csrf != b.csrf
    refusal = g.check_change(a, host="127.0.0.1:8470", csrf=b.csrf,
                             origin="http://127.0.0.1:8470", referer=None)
    assert refusal is not None and refusal.status == 403


def test_only_host_names_that_name_the_console_are_answered() -> None:
    g = Guard("t", HOSTS)
    for host in ("127.0.0.1:8470", "localhost:8470", "LOCALHOST:8470"):
        assert g.check_host(host) is None
    for bad in ("evil.example:8470", "127.0.0.1:80", "127.0.0.1", None):
        refusal = g.check_host(bad)  # DNS rebinding sends the attacker's name
        assert refusal is not None and refusal.status == 400


def test_listen_is_loopback_unless_the_operator_allows_remote() -> None:
    assert parse_listen("127.0.0.1:8470").port == 8470
    assert parse_listen("[::1]:0").host == "::1"
    assert parse_listen("localhost:0").loopback
    for remote in ("0.0.0.0:8470", "192.0.2.7:8470", "example.org:8470", "[::]:8470"):
        with pytest.raises(UsageError, match="not a loopback"):
            parse_listen(remote)
        assert not parse_listen(remote, allow_remote=True).loopback
    for bad in ("8470", "127.0.0.1:", "127.0.0.1:http", "::1:8470", "127.0.0.1:70000"):
        with pytest.raises(UsageError, match="--listen"):
            parse_listen(bad)


def test_the_page_script_never_turns_data_into_html() -> None:
    """Agent text reaches the DOM through textContent only (the browser tests attack it)."""
    static = Path(__file__).resolve().parent.parent / "agentlibos/console/static"
    script = (static / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "srcdoc"):
        assert sink not in script, sink
    page = (static / "index.html").read_text()
    assert "<script>" not in page  # no inline script: the CSP would refuse it anyway
    assert not re.search(r"<[^>]*\son\w+\s*=", page)  # no inline handler


# --- a real console process ----------------------------------------------------------

@dataclass
class Console:
    proc: subprocess.Popen[str]
    port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def login(self) -> str:
        """A session cookie (``name=value``), as the printed URL gives a browser."""
        status, headers, _ = self.request("GET", f"/?token={self.token}")
        assert status == 303, status
        return headers["set-cookie"].split(";")[0]

    def csrf(self, cookie: str) -> str:
        status, _, page = self.request("GET", "/", headers={"Cookie": cookie})
        assert status == 200
        m = re.search(rb'<meta name="csrf-token" content="([A-Za-z0-9_-]+)">', page)
        assert m, page[:300]
        return m.group(1).decode()


@contextlib.contextmanager
def console_for(home: Path, *extra: str) -> Iterator[Console]:
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentlibos", "console", "--listen", "127.0.0.1:0", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().strip() if ready else ""
        m = URL_LINE.match(line)
        if m is None:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"console printed {line!r}, not its URL; stderr: {err}")
        yield Console(proc, int(m.group(1)), m.group(2))
    finally:
        stop_process(proc, 15)


@pytest.fixture
def lone_console(home: Path) -> Iterator[Console]:
    """A console whose home has no supervisor: a request the guard lets through gets 503."""
    with console_for(home) as c:
        yield c


def test_the_console_prints_its_url_with_a_token_and_no_request_without_it_gets_in(
    lone_console: Console,
) -> None:
    c = lone_console
    for method, path in [("GET", "/"), ("GET", "/api/state"), ("GET", "/static/console.js"),
                         ("GET", "/nothing-here"), ("POST", "/api/approve")]:
        status, _, body = c.request(method, path)
        assert status == 401, (method, path)
        assert b"agentlibos console" in body and c.token.encode() not in body
    assert c.request("GET", "/?token=not-the-token")[0] == 401
    assert c.request("GET", "/", headers={"Cookie": "agentlibos_console=forged"})[0] == 401


def test_the_token_buys_an_httponly_samesite_strict_cookie_and_leaves_the_address_bar(
    lone_console: Console,
) -> None:
    c = lone_console
    status, headers, _ = c.request("GET", f"/?token={c.token}")
    assert status == 303
    assert headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    # The redirect stays on the console, whatever path the token came with.
    assert c.request("GET", f"//evil.example/?token={c.token}")[1]["location"] == "/evil.example/"
    status, headers, page = c.request("GET", "/", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"agentlibos console" in page
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_a_cross_site_or_forged_post_is_refused_before_it_reaches_the_supervisor(
    lone_console: Console,
) -> None:
    c = lone_console
    cookie = c.login()
    csrf = c.csrf(cookie)
    own = c.base
    body = json.dumps({"id": 1, "always": False}).encode()
    json_type = {"Content-Type": "application/json"}
    for headers in [
        {"Cookie": cookie, "Origin": own},  # no CSRF token
        {"Cookie": cookie, "Origin": own, "X-CSRF-Token": "forged"},
        {"Cookie": cookie, "Origin": "http://evil.example", "X-CSRF-Token": csrf},
        {"Cookie": cookie, "Origin": "null", "X-CSRF-Token": csrf},
        {"Cookie": cookie, "X-CSRF-Token": csrf},  # neither Origin nor Referer
    ]:
        status, _, reply = c.request("POST", "/api/approve", headers={**json_type, **headers},
                                     body=body)
        assert status == 403, (headers, reply)
        assert json.loads(reply)["ok"] is False
        # The error has the shape every other answer's has.
        assert set(json.loads(reply)["error"]) == {"type", "code", "message", "details"}
        assert json.loads(reply)["error"]["code"] == "EPERM"
    # A rebinding attacker's Host name is not ours, whatever else is right.
    status, _, _ = c.request("POST", "/api/approve", body=body, headers={
        **json_type, "Cookie": cookie, "Origin": "http://evil.example:1", "X-CSRF-Token": csrf,
        "Host": "evil.example:1"})
    assert status == 400
    # The same request from our own page passes the guard and reaches the control
    # channel, where (no supervisor runs here) it gets a clear 503.
    status, _, reply = c.request("POST", "/api/approve", body=body, headers={
        **json_type, "Cookie": cookie, "Origin": own, "X-CSRF-Token": csrf})
    assert status == 503, reply
    assert "no supervisor is answering" in json.loads(reply)["error"]["message"]


def test_a_change_with_a_malformed_body_is_refused_with_a_reason(
    lone_console: Console,
) -> None:
    c = lone_console
    cookie = c.login()
    headers = {"Cookie": cookie, "Origin": c.base, "X-CSRF-Token": c.csrf(cookie),
               "Content-Type": "application/json"}
    for path, body in [("/api/approve", {"id": "1"}), ("/api/approve", {"id": True}),
                       ("/api/approve", {"id": 1, "always": "yes"}),
                       ("/api/deny", {"id": 1, "reason": 7}), ("/api/answer", {"id": 1}),
                       ("/api/answer", {"id": 1, "text": "  "}),
                       ("/api/approve", {"id": 1, "alway": True})]:  # a typo acts not
        status, _, reply = c.request("POST", path, headers=headers,
                                     body=json.dumps(body).encode())
        assert status == 400, (path, body, reply)
        assert json.loads(reply)["error"]["code"] in ("EINVAL", "EUSAGE")
    status, _, _ = c.request("POST", "/api/approve", body=b"id=1", headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_console_stops_on_a_signal_with_status_zero_and_frees_its_port(
    home: Path, sig: signal.Signals
) -> None:
    with console_for(home) as c:
        cookie = c.login()
        assert c.request("GET", "/api/state", headers={"Cookie": cookie})[0] == 503
        c.proc.send_signal(sig)
        assert c.proc.wait(15) == 0
        with pytest.raises(ConnectionRefusedError):
            c.request("GET", "/")


def test_with_json_the_console_prints_its_url_host_and_port_as_one_object(home: Path) -> None:
    env = {**os.environ, "AGENTLIBOS_HOME": str(home)}
    with subprocess.Popen([sys.executable, "-m", "agentlibos", "console", "--json", "--listen",
                           "127.0.0.1:0"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            out = json.loads(proc.stdout.readline()) if ready else None
        finally:
            proc.terminate()
    assert proc.returncode == 0
    assert out is not None and set(out) == {"url", "host", "port"}
    assert out["host"] == "127.0.0.1"
    m = URL_LINE.match(out["url"])
    assert m is not None and int(m.group(1)) == out["port"] > 0


def test_a_non_loopback_listen_is_refused_in_one_line(home: Path) -> None:
    p = cli(home, "console", "--listen", "0.0.0.0:0", timeout=30)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "not a loopback address" in p.stderr
    assert p.stdout == ""


# --- in a real Chromium --------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        msg = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        if STRICT:
            pytest.fail(msg)  # CI installs them (.ci/run): never skip silently there
        pytest.skip(msg)
    opts = ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    # Leave an alert() open so the test can see one if it ever ran.
    opts.set_capability("unhandledPromptBehavior", "ignore")
    driver = Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Chrome, cond: Callable[[Chrome], Any], timeout_s: float = 30) -> Any:
    # The page redraws its tables every second: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(cond)


def texts(driver: Chrome, selector: str) -> list[str]:
    """The textContent of every match, read in one go (no element can go stale)."""
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), n => n.textContent)",
        selector)
    return found


def screenshot(driver: Chrome, tmp_path: Path, name: str) -> Path:
    """Keep what the page looked like: in the test's tmp dir and $AGENTLIBOS_ARTIFACTS."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("AGENTLIBOS_ARTIFACTS"):
        out = Path(os.environ["AGENTLIBOS_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def no_alert(driver: Chrome) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - the property raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_the_page_says_clearly_when_no_supervisor_runs(
    browser: Chrome, lone_console: Console, tmp_path: Path
) -> None:
    browser.get(f"{lone_console.base}/?token={lone_console.token}")
    assert browser.current_url == lone_console.base + "/"  # the token left the address bar
    banner = until(browser, lambda d: _visible(d, "banner"))
    assert "no supervisor is answering" in banner.text
    assert "agentlibos serve" in banner.text
    assert browser.find_element(By.ID, "supervisor").text == "supervisor down"
    screenshot(browser, tmp_path, "console-no-supervisor.png")


def _visible(driver: Chrome, element_id: str) -> WebElement | None:
    node = driver.find_element(By.ID, element_id)
    return node if node.is_displayed() and node.text else None


# A writer whose every write asks the operator (see POLICY); a refusal is its result.
WRITER = """
from agentlibos.errors import PermissionDenied

def main(ctx, args):
    out = {}
    for name in args["names"]:
        try:
            ctx.fs.write_text(name, "written after a click")
            out[name] = "written"
        except PermissionDenied as e:
            out[name] = "denied: " + str(e)
    return out
"""
POLICY = """
ask = ["fs:write:**"]
allow = ["fs:read:**", "human:ask:*"]
"""
ASKER = """
from agentlibos.errors import PermissionDenied

def main(ctx, args):
    try:
        return {"answer": ctx.human.ask(args["question"], choices=["staging", "production"])}
    except PermissionDenied as e:
        return {"declined": str(e)}
"""


@dataclass
class Stack:
    home: Path
    console: Console
    writer: Path
    asker: Path
    policy: Path
    work: Path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One daemon and one console for the browser tests (each starts its own agents)."""
    if os.geteuid() != 0:
        pytest.skip("runs agents with every sandbox layer required, which needs root")
    home = Path(tempfile.mkdtemp(prefix="alos-", dir="/tmp"))
    # The agents' project lies beside the home, as a user keeps it.
    work = Path(tempfile.mkdtemp(prefix="alos-work-", dir="/tmp"))
    try:
        writer = write_image(home / "images", "writer", WRITER, caps=["fs:rw:./**"])
        asker = write_image(home / "images", "asker", ASKER, caps=["human:ask:*"])
        policy = home / "ask-writes.toml"
        policy.write_text(POLICY)
        with serving(home), console_for(home) as console:
            yield Stack(home, console, writer, asker, policy, work / "work-dir")
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def start_writer(s: Stack, *names: str) -> subprocess.Popen[str]:
    return start(s, s.writer, "names=" + json.dumps(list(names)))


def start(s: Stack, image: Path, *args: str) -> subprocess.Popen[str]:
    cwd = s.work / f"run-{len(list(s.work.glob('run-*'))) if s.work.exists() else 0}"
    cwd.mkdir(parents=True)
    env = {**os.environ, "AGENTLIBOS_HOME": str(s.home)}
    return subprocess.Popen(
        [sys.executable, "-m", "agentlibos", "run", str(image), "--cwd", str(cwd),
         "--policy", str(s.policy), "--json",
         *(a for arg in args for a in ("--arg", arg))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(run: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    result: dict[str, Any] = json.loads(out)["result"]
    return result


def open_page(browser: Chrome, c: Console) -> None:
    if browser.current_url != c.base + "/":
        browser.get(f"{c.base}/?token={c.token}")
    until(browser, lambda d: d.find_element(By.ID, "supervisor").text.startswith(
        "supervisor pid"))


def card_for(browser: Chrome, request_suffix: str) -> WebElement:
    """The queue's card whose request ends with ``request_suffix``, once it shows."""
    def find(d: Chrome) -> WebElement | None:
        for card in d.find_elements(By.CSS_SELECTOR, "#queue .card"):
            if card.find_element(By.CSS_SELECTOR, ".request").text.endswith(request_suffix):
                return card
        return None

    card: WebElement = until(browser, find)
    return card


@pytest.mark.privileged
def test_an_agents_request_shows_in_the_page_and_a_click_lets_its_write_land(
    browser: Chrome, stack: Stack, tmp_path: Path
) -> None:
    run = start_writer(stack, "approved.txt")
    open_page(browser, stack.console)
    card = card_for(browser, "/approved.txt")
    aid = card.get_attribute("data-id")
    assert card.find_element(By.CSS_SELECTOR, ".request").text.startswith("fs:write:/")
    # The process tree shows the writer waiting on exactly this approval.
    until(browser, lambda d: f"approval:{aid}" in texts(d, "#processes td.wait"))
    screenshot(browser, tmp_path, "console-approval-pending.png")
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    assert result_of(run) == {"approved.txt": "written"}
    written = list(stack.work.glob("run-*/approved.txt"))
    assert [p.read_text() for p in written] == ["written after a click"]
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'.card[data-id="{aid}"]'))
    screenshot(browser, tmp_path, "console-approved.png")
    # A second console (or a stale tab) answering the same request is told it is decided.
    c = stack.console
    cookie = c.login()
    status, _, reply = c.request("POST", "/api/deny", body=json.dumps({"id": int(aid or 0)})
                                 .encode(), headers={
        "Cookie": cookie, "Origin": c.base, "X-CSRF-Token": c.csrf(cookie),
        "Content-Type": "application/json"})
    assert status == 409, reply
    assert json.loads(reply)["error"]["code"] == "ECONFLICT"


@pytest.mark.privileged
def test_an_agent_chosen_script_shows_as_text_and_a_deny_reaches_the_agent_with_its_reason(
    browser: Chrome, stack: Stack, tmp_path: Path
) -> None:
    run = start_writer(stack, XSS)
    open_page(browser, stack.console)
    card = card_for(browser, XSS)
    # The agent's markup is text on the page: no element was made of it, nothing ran.
    assert card.find_element(By.CSS_SELECTOR, ".request").text.endswith(XSS)
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    until(browser, lambda d: any(t.endswith(XSS) for t in texts(d, "#audit td.request")))
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert no_alert(browser)
    screenshot(browser, tmp_path, "console-script-as-text.png")
    card.find_element(By.CSS_SELECTOR, "input.reason").send_keys("not in my home, <b>thanks</b>")
    card.find_element(By.CSS_SELECTOR, "button.deny").click()
    result = result_of(run)
    assert result[XSS].startswith("denied: ")
    assert "not in my home, <b>thanks</b>" in result[XSS]
    assert not [p for p in stack.work.glob("run-*/*") if p.is_file() and "script" in p.name]
    assert no_alert(browser)


@pytest.mark.privileged
def test_a_question_is_answered_with_a_click_on_one_of_its_choices(
    browser: Chrome, stack: Stack, tmp_path: Path
) -> None:
    run = start(stack, stack.asker, "question=Deploy <b>where</b>?")
    open_page(browser, stack.console)

    def question(d: Chrome) -> WebElement | None:
        for card in d.find_elements(By.CSS_SELECTOR, '#queue .card[data-kind="question"]'):
            if card.find_element(By.CSS_SELECTOR, ".question").text == "Deploy <b>where</b>?":
                return card
        return None

    card: WebElement = until(browser, question)
    choices = card.find_elements(By.CSS_SELECTOR, "button.choice")
    assert [b.text for b in choices] == ["staging", "production"]
    screenshot(browser, tmp_path, "console-question.png")
    choices[1].click()
    assert result_of(run) == {"answer": "production"}

    # A question the operator will not answer is declined, with a reason.
    run = start(stack, stack.asker, "question=Drop the prod database?")
    card = until(browser, lambda d: next(
        (c for c in d.find_elements(By.CSS_SELECTOR, '#queue .card[data-kind="question"]')
         if c.find_element(By.CSS_SELECTOR, ".question").text == "Drop the prod database?"),
        None))
    card.find_element(By.CSS_SELECTOR, "input.reason").send_keys("ask the DBA")
    card.find_element(By.CSS_SELECTOR, "button.decline").click()
    assert result_of(run) == {"declined": "human.ask: the question was denied by the "
                                          "operator: ask the DBA"}


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another site (``localhost`` is not the site ``127.0.0.1``) trying to approve."""

    target = ""
    approval_id = 0

    def do_GET(self) -> None:
        page = f"""<!doctype html><title>evil</title>
<form id=f method=POST action="{self.target}/api/approve" enctype="text/plain">
<input name='{{"id": {self.approval_id}, "always": true, "x": "' value='"}}'></form>
<script>
fetch("{self.target}/api/approve", {{method: "POST", credentials: "include",
  mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{id: {self.approval_id}, always: true}})}})
  .finally(() => document.getElementById("f").submit());
</script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.privileged
def test_a_page_on_another_site_in_the_same_browser_cannot_approve(
    browser: Chrome, stack: Stack, tmp_path: Path
) -> None:
    run = start_writer(stack, "cross-site.txt")
    open_page(browser, stack.console)  # the browser holds a live session cookie
    aid = int(card_for(browser, "/cross-site.txt").get_attribute("data-id") or 0)
    _EvilSite.target, _EvilSite.approval_id = stack.console.base, aid
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{evil.server_address[1]}/")
        # The form's submission lands on the console, which refuses it: no cookie
        # crosses sites (SameSite=Strict), and it carries no CSRF token either.
        until(browser, lambda d: d.current_url.startswith(stack.console.base))
        assert "401" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        evil.shutdown()
        evil.server_close()
    # Asked of the supervisor itself, not through the console under attack.
    items = control_call(Paths(stack.home).control_endpoint, {"op": "approvals"})["items"]
    assert [i["state"] for i in items if i["id"] == aid] == ["pending"]
    open_page(browser, stack.console)  # the operator's own page still works
    card_for(browser, "/cross-site.txt").find_element(By.CSS_SELECTOR, "button.deny").click()
    assert result_of(run)["cross-site.txt"].startswith("denied: ")
