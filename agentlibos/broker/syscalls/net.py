"""``net.fetch``: one HTTP(S) request, made by the broker for the agent.

The sandbox has no network; this call is the only way out. The URL is made canonical
first (:func:`canonical_url`: scheme and host in lower case, default port dropped, dot
segments removed, no user info, no fragment), so the capability check
``net:fetch:<the URL>`` and every policy rule see exactly the request that will be sent.
The service (``supervisor/net.py``) then resolves the host, refuses internal addresses
unless a capability names the host, sends the request off the loop, and checks each
redirect again as if the agent had asked for it.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument, LibOSError, LimitExceeded
from agentlibos.kernel.policy import Request
from agentlibos.kernel.text import storable

MAX_URL: Final = 8192
MAX_HEADERS: Final = 64
MAX_HEADER_BYTES: Final = 16 << 10
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Headers that say where and how the request travels: the broker sets them from the
# checked URL and body. An agent's own "Host" would send a request checked for one name
# to another name served at the same address.
FORBIDDEN_HEADERS: Final = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "te", "trailer",
    "upgrade", "keep-alive", "proxy-authorization", "proxy-connection",
})
_DEFAULT_PORT: Final = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# A last label that is a number makes the host an IPv4 address in some form ("127.1",
# "0x7f.1", "2130706433"): only the dotted-quad form is accepted, so a capability or
# policy rule naming 127.0.0.1 cannot be sidestepped by another spelling.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


@dataclass(frozen=True)
class Url:
    """A checked, canonical http(s) URL."""

    scheme: str
    host: str  # lower case, no trailing dot; an IPv6 address without brackets
    port: int
    target: str  # path (dot segments removed) and query

    @property
    def text(self) -> str:
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != _DEFAULT_PORT[self.scheme]:
            netloc = f"{netloc}:{self.port}"
        return f"{self.scheme}://{netloc}{self.target}"

    def __str__(self) -> str:
        return self.text


def canonical_url(url: object, what: str = "net.fetch") -> Url:
    """Parse and normalise ``url``; InvalidArgument says what is wrong with it."""
    if not isinstance(url, str):
        raise InvalidArgument(f"{what}: the URL must be a string")
    if len(url) > MAX_URL:
        raise InvalidArgument(f"{what}: the URL is longer than {MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise InvalidArgument(f"{what}: the URL holds a space, control character or "
                              f"backslash: {storable(url, 200)!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidArgument(f"{what}: {storable(url, 200)!r} is not a URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT:
        raise InvalidArgument(f"{what}: only http and https URLs can be fetched, not "
                              f"{storable(url, 200)!r}")
    if "@" in parts.netloc:
        raise InvalidArgument(f"{what}: user info in a URL is not accepted "
                              "(credentials belong in headers or [secrets])")
    host = _canonical_host(parts.hostname or "", url, what)
    if port is None:
        port = _DEFAULT_PORT[scheme]
    elif port == 0:
        raise InvalidArgument(f"{what}: port 0 in {storable(url, 200)!r}")
    path = _canonical_path(parts.path, url, what)
    target = f"{path}?{parts.query}" if parts.query else path
    return Url(scheme, host, port, target)


def _canonical_host(host: str, url: str, what: str) -> str:
    if not host:
        raise InvalidArgument(f"{what}: no host in {storable(url, 200)!r}")
    if "%" in host:  # an IPv6 zone id, or an escape: neither names a host
        raise InvalidArgument(f"{what}: malformed host in {storable(url, 200)!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host.startswith("[") or ":" in host:
            raise InvalidArgument(f"{what}: malformed host in {storable(url, 200)!r}") \
                from None
    else:
        return str(ip)
    try:
        ascii_host = host.encode("idna").decode("ascii").lower().removesuffix(".")
    except UnicodeError:
        raise InvalidArgument(f"{what}: host {storable(host, 200)!r} is not a valid "
                              "domain name") from None
    if not _HOST_NAME.fullmatch(ascii_host) or len(ascii_host) > 253:
        raise InvalidArgument(f"{what}: host {storable(host, 200)!r} is not a valid "
                              "domain name")
    if _NUMERIC_LABEL.fullmatch(ascii_host.rsplit(".", 1)[-1]):
        raise InvalidArgument(f"{what}: host {storable(host, 200)!r} is an IPv4 address "
                              "in a form other than a.b.c.d; write it as a.b.c.d")
    return ascii_host


def _canonical_path(path: str, url: str, what: str) -> str:
    if not path:
        return "/"
    segments = path.split("/")
    if any(unquote(s) in (".", "..") and s not in (".", "..") for s in segments):
        # "%2e%2e" is decoded to ".." by some servers after any check of ours.
        raise InvalidArgument(f"{what}: an encoded dot segment in {storable(url, 200)!r}")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


@dataclass(frozen=True)
class FetchSpec:
    """A validated net.fetch request (the first hop; redirects derive the others)."""

    url: Url
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout_s: float


@dataclass(frozen=True)
class FetchLimits:
    """The operator's bounds on a fetch (units in the names)."""

    max_response_bytes: int = 8 << 20
    max_request_bytes: int = 8 << 20
    max_timeout_s: float = 120.0
    max_redirects: int = 5


class Fetcher(Protocol):
    """The network service (agentlibos.supervisor.net.Net)."""

    @property
    def limits(self) -> FetchLimits: ...
    def fetch(self, caller: Caller, spec: FetchSpec) -> Result: ...


class NetServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def net(self) -> Fetcher: ...


def check_headers(raw: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    if len(raw) > MAX_HEADERS:
        raise InvalidArgument(f"net.fetch: more than {MAX_HEADERS} headers")
    out: list[tuple[str, str]] = []
    size = 0
    for name, value in raw.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"net.fetch: header {storable(name, 80)!r} must be a "
                                  "string")
        if not _is_token(name):
            raise InvalidArgument(f"net.fetch: {storable(name, 80)!r} is not a header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidArgument(f"net.fetch: the broker sets the {name} header itself")
        if any(c in value for c in "\r\n\0") or not value.isascii():
            raise InvalidArgument(f"net.fetch: header {name} holds a line break, NUL or a "
                                  "character outside ASCII")
        size += len(name) + len(value)
        out.append((name, value))
    if size > MAX_HEADER_BYTES:
        raise InvalidArgument(f"net.fetch: headers larger than {MAX_HEADER_BYTES} bytes")
    return tuple(out)


def _is_token(text: str) -> bool:
    return bool(text) and len(text) <= 256 and all(
        c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in text)


@syscall("net.fetch", url=Param(str, max_len=MAX_URL),
         method=Param(str, required=False, default="GET", max_len=16),
         headers=Param(dict, required=False, max_len=MAX_HEADERS),
         body=Param(str, required=False),
         timeout=Param(float, required=False, default=30.0))
def net_fetch(svc: NetServices, caller: Caller, args: dict[str, Any],
              blobs: list[bytes]) -> Result:
    """Fetch an http(s) URL through the broker: {status, headers, url, size, redirects}
    and the body as a blob. The body to send is one blob (or ``body``, text). Needs
    net:fetch:<url>; internal addresses need a capability naming the host."""
    limits = svc.net.limits
    try:
        url = canonical_url(args["url"])
        method = args["method"].upper()
        if method not in METHODS:
            raise InvalidArgument(f"net.fetch: method {storable(args['method'], 20)!r} is "
                                  f"not one of {', '.join(sorted(METHODS))}")
        headers = check_headers(args["headers"])
        if args["body"] is not None and blobs:
            raise InvalidArgument("net.fetch: a body as text or as a blob, not both")
        if len(blobs) > 1:
            raise InvalidArgument("net.fetch: at most one body blob")
        body = args["body"].encode("utf-8") if args["body"] is not None else (
            blobs[0] if blobs else b"")
        if len(body) > limits.max_request_bytes:
            raise LimitExceeded(f"net.fetch: a body of {len(body)} bytes is over the limit "
                                f"of {limits.max_request_bytes}")
        if body and method in ("GET", "HEAD", "OPTIONS"):
            raise InvalidArgument(f"net.fetch: a {method} request carries no body")
        timeout = float(args["timeout"])
        if not (math.isfinite(timeout) and 0 < timeout <= limits.max_timeout_s):
            raise InvalidArgument(f"net.fetch: timeout must be more than 0 and at most "
                                  f"{limits.max_timeout_s:g} s, not {timeout!r}")
    except LibOSError as e:
        # Refused before any capability is consulted: audited like any other refusal.
        svc.authz.audit(caller, "net.fetch", f"net:fetch:{storable(str(args['url']), 512)}",
                        "deny", {"reason": storable(e.message, 1024)})
        raise
    svc.authz.authorize(caller, "net.fetch", Request("net", "fetch", url.text))
    return svc.net.fetch(caller, FetchSpec(url, method, headers, body, timeout))
