"""How an HTTP request happens for an agent: one exchange with an address already checked.

The broker decides (``supervisor/net.py``: the capability, the policy, the address class,
each redirect) and this module only acts, off the supervisor's loop, on plain values:

* :func:`resolve` turns a host name into addresses (``getaddrinfo``); the caller checks
  every one before anything is sent.
* :class:`HttpxClient` sends one request *to the checked address* -- the URL holds the IP,
  the ``Host`` header (and TLS SNI and certificate check) the name -- so a DNS answer
  that changes between the check and the connection (rebinding) cannot move it. It
  follows no redirect, reads no proxy settings from the environment, asks for an
  uncompressed body and stops reading past the size limit or the deadline.

The operator's ``[secrets.NAME]`` tables are parsed here too (:func:`parse_secrets`, called
by the one config loader): they describe headers the supervisor adds to requests.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from agentlibos.errors import LimitExceeded, PolicyError, Timeout, Unavailable
from agentlibos.kernel.caps import Glob, url_host_within

if TYPE_CHECKING:
    import ssl  # only for annotations: importing it costs every CLI call ~10 ms

    import httpx

__all__ = [
    "HttpClient",
    "HttpRequest",
    "HttpResponse",
    "HttpxClient",
    "Resolver",
    "SecretRule",
    "parse_secrets",
    "redact",
    "resolve",
]

# TLS clients kept (one per server name), the oldest closed past this.
_MAX_TLS_CLIENTS: Final = 32
_CHUNK: Final = 64 << 10


@dataclass(frozen=True)
class HttpRequest:
    """One exchange, decided: where to connect and exactly what to send."""

    method: str
    scheme: str  # "http" or "https"
    host: str  # the name: Host header, SNI, certificate check (an IP literal for IPs)
    port: int
    target: str  # path and query, as checked
    address: str  # the resolved, checked IP address to connect to
    headers: tuple[tuple[str, str], ...]
    body: bytes
    deadline: float  # time.monotonic() by which the whole response must be in
    max_response_bytes: int


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # names in lower case, in the order received
    body: bytes


class HttpClient(Protocol):
    """Sends one request; raises Timeout, LimitExceeded or Unavailable (typed)."""

    def send(self, req: HttpRequest) -> HttpResponse: ...
    def close(self) -> None: ...


class Resolver(Protocol):
    def __call__(self, host: str, port: int) -> list[str]: ...


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal is its own answer)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Unavailable(f"net.fetch: cannot resolve {host!r}: {e}") from None
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]  # a zone id never names another host
        if addr not in out:
            out.append(addr)
    if not out:
        raise Unavailable(f"net.fetch: {host!r} has no address")
    return out


class HttpxClient:
    """:class:`HttpClient` over httpx, with pooled connections (thread-safe).

    httpx is imported, and the pools made, at the first request: a supervisor whose
    agents never fetch does not pay for them at start.
    """

    def __init__(self, *, verify: ssl.SSLContext | None = None) -> None:
        # The system's trust store (certifi's) unless a context is given (tests).
        self._verify: ssl.SSLContext | bool = verify if verify is not None else True
        self._plain: httpx.Client | None = None
        self._tls: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def _client_for(self, req: HttpRequest) -> httpx.Client:
        with self._lock:
            if req.scheme == "http":
                if self._plain is None:
                    self._plain = _new_client(True)
                return self._plain
            # Pooled per TLS server name: a connection is only reused for the name it was
            # verified for (httpx keys its pool by address, and one address serves many).
            client = self._tls.get(req.host)
            if client is None:
                if len(self._tls) >= _MAX_TLS_CLIENTS:
                    _, old = self._tls.popitem()
                    old.close()
                client = _new_client(self._verify)
                self._tls[req.host] = client
            return client

    def send(self, req: HttpRequest) -> HttpResponse:
        import httpx  # noqa: PLC0415 - see the class docstring

        remaining = req.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"net.fetch: no time left for {req.scheme}://{req.host}")
        ip = ipaddress.ip_address(req.address)
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        url = f"{req.scheme}://{netloc}:{req.port}{req.target}"
        host_header = _host_header(req.scheme, req.host, req.port)
        extensions: dict[str, Any] = {}
        if req.scheme == "https":
            extensions["sni_hostname"] = req.host
        client = self._client_for(req)
        try:
            request = client.build_request(
                req.method, url, headers=[("Host", host_header), *req.headers],
                content=req.body or None, timeout=httpx.Timeout(remaining),
                extensions=extensions)
            resp = client.send(request, stream=True)
        except httpx.TimeoutException:
            raise Timeout(f"net.fetch: {req.scheme}://{host_header} did not answer in time")\
                from None
        except httpx.ConnectError as e:
            # Nothing was sent: the caller may try the host's next checked address.
            raise Unavailable(f"net.fetch: cannot connect to {req.scheme}://{host_header} "
                              f"at {req.address}: {e}", connect=True) from None
        except httpx.HTTPError as e:
            raise Unavailable(f"net.fetch: {req.scheme}://{host_header}: "
                              f"{type(e).__name__}: {e}") from None
        try:
            return _read(resp, req, host_header)
        except httpx.TimeoutException:
            raise Timeout(f"net.fetch: the response from {req.scheme}://{host_header} did "
                          "not arrive in time") from None
        except httpx.HTTPError as e:
            raise Unavailable(f"net.fetch: reading from {req.scheme}://{host_header}: "
                              f"{type(e).__name__}: {e}") from None
        finally:
            resp.close()

    def close(self) -> None:
        with self._lock:
            clients = [*([self._plain] if self._plain else []), *self._tls.values()]
            self._plain = None
            self._tls.clear()
        for c in clients:
            c.close()


def _new_client(verify: ssl.SSLContext | bool) -> httpx.Client:
    import httpx  # noqa: PLC0415 - see HttpxClient

    # trust_env=False: HTTP(S)_PROXY would send the request somewhere other than the
    # address that was checked; .netrc would add credentials nobody granted.
    return httpx.Client(trust_env=False, follow_redirects=False, verify=verify)


def _read(resp: httpx.Response, req: HttpRequest, where: str) -> HttpResponse:
    limit = req.max_response_bytes
    declared = resp.headers.get("content-length", "")
    if req.method != "HEAD" and declared.isdigit() and int(declared) > limit:
        raise LimitExceeded(f"net.fetch: the response from {req.scheme}://{where} is "
                            f"{int(declared)} bytes, over the limit of {limit}")
    parts: list[bytes] = []
    size = 0
    # iter_raw: the bytes as sent (the client asked for identity; a body the server
    # compressed anyway comes back compressed, with its Content-Encoding), so a small
    # compressed answer cannot expand past the limit here.
    for chunk in resp.iter_raw(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise LimitExceeded(f"net.fetch: the response from {req.scheme}://{where} is "
                                f"over the limit of {limit} bytes")
        if time.monotonic() > req.deadline:
            raise Timeout(f"net.fetch: the response from {req.scheme}://{where} did not "
                          "arrive in time")
        parts.append(chunk)
    headers = tuple((k.lower(), v) for k, v in resp.headers.multi_items())
    return HttpResponse(resp.status_code, headers, b"".join(parts))


def _host_header(scheme: str, host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return name if port == default else f"{name}:{port}"


# ------------------------------------------------------------------------ secrets


@dataclass(frozen=True)
class SecretRule:
    """``[secrets.NAME]``: add ``header: prefix + $value_env`` to requests matching ``match``.

    The supervisor reads the variable when a matching request is sent; the value never
    enters a sandbox, a reply, the audit, an error message or a log.
    """

    name: str
    match: str  # a URL glob, with net capability semantics ('*' crosses '/', not a host)
    header: str
    value_env: str
    prefix: str = ""

    def matches(self, url: str) -> bool:
        # The host written in the rule matches the URL's host alone (`*` would cross `/`:
        # `http://*.example.com/**` sent the credential to `http://evil/.example.com/`).
        return _secret_glob(self.match).match(url) and url_host_within(self.match, url)


def _secret_glob(pattern: str) -> Glob:
    return Glob.compile(pattern, paths=False)


_SECRET_KEYS: Final = frozenset({"match", "header", "value_env", "prefix"})


def _token(text: str) -> bool:
    """An HTTP header name (RFC 9110 token)."""
    return bool(text) and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~")
                              for c in text)


def parse_secrets(table: object, source: str) -> tuple[SecretRule, ...]:
    """The ``[secrets]`` tables of config.toml; errors name the file and the secret."""
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [secrets] must hold tables [secrets.NAME]")
    rules: list[SecretRule] = []
    for name, entry in table.items():
        where = f"{source}: [secrets.{name}]"
        if not isinstance(entry, dict):
            raise PolicyError(f"{where} must be a table (match, header, value_env, prefix)")
        unknown = set(entry) - _SECRET_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(_SECRET_KEYS))})")
        missing = [k for k in ("match", "header", "value_env") if k not in entry]
        if missing:
            raise PolicyError(f"{where}: missing {', '.join(missing)}")
        values = {k: entry.get(k, "") for k in _SECRET_KEYS}
        for k, v in values.items():
            if not isinstance(v, str):
                raise PolicyError(f"{where}: {k} must be a string")
        if not values["match"].startswith(("http://", "https://")):
            raise PolicyError(f"{where}: match must be a URL glob starting with http:// or "
                              f"https://, not {values['match']!r}")
        if not _token(values["header"]) or values["header"].lower() in _FORBIDDEN_SECRET:
            raise PolicyError(f"{where}: header {values['header']!r} is not a header name "
                              "the supervisor may set")
        if not values["value_env"] or "=" in values["value_env"]:
            raise PolicyError(f"{where}: value_env must name an environment variable")
        if any(c in values["prefix"] for c in "\r\n\0"):
            raise PolicyError(f"{where}: prefix holds a line break")
        try:
            _secret_glob(values["match"])
        except PolicyError as e:
            raise PolicyError(f"{where}: match: {e.message}") from None
        rules.append(SecretRule(str(name), values["match"], values["header"],
                                values["value_env"], values["prefix"]))
    return tuple(rules)


# Headers that say where or how the request travels: the broker sets them itself.
_FORBIDDEN_SECRET: Final = frozenset({"host", "content-length", "transfer-encoding",
                                      "connection"})


def redact(data: bytes, secrets: Iterable[bytes]) -> bytes:
    """``data`` with every verbatim occurrence of a secret replaced."""
    for s in secrets:
        if s and s in data:
            data = data.replace(s, b"[redacted]")
    return data
