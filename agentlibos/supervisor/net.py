"""The network service behind ``net.fetch``: decide on the loop, send off it.

One fetch is a chain of hops (the URL, then each redirect, at most
``FetchLimits.max_redirects``). For every hop:

1. *on the loop*: the hop's URL is authorized like a new call (the first by the handler,
   each redirect here: capability, policy, audit); the operator's secrets that match it
   are read; whether a held capability *names the host* is decided, for the process and
   each of its ancestors (:func:`names_host`, pure; :func:`names_host_in_lineage`);
2. *off the loop* (``OffLoop``): the host is resolved and every address checked
   (:func:`address_refusal`, pure): loopback, private, link-local, metadata, unspecified
   and multicast addresses are refused unless the host was named; the request goes to
   the checked address, so a second DNS answer (rebinding) is never used;
3. *back on the loop*: a redirect starts the next hop; anything else is audited (method,
   URL, status, bytes -- never a secret, never the body) and answers the call.

A fetch still running after 10 ms is suspended (``ps`` shows the process waiting on
``net:<url>``); its timeout covers every hop, and a backstop timer answers it even if a
worker never comes back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import urljoin

from agentlibos.broker.syscalls import Authorizer, Caller, Pending
from agentlibos.broker.syscalls.net import FetchLimits, FetchSpec, Url, canonical_url
from agentlibos.errors import InternalError, LibOSError, PermissionDenied, Timeout, Unavailable
from agentlibos.kernel.approvals import NeedsApproval
from agentlibos.kernel.caps import CapPattern, parse_caps
from agentlibos.kernel.policy import Request
from agentlibos.kernel.text import storable
from agentlibos.providers.net import (
    HttpClient,
    HttpRequest,
    HttpResponse,
    Resolver,
    SecretRule,
    redact,
    resolve,
)
from agentlibos.store import Store
from agentlibos.supervisor.loop import Loop
from agentlibos.supervisor.offloop import OffLoop
from agentlibos.supervisor.waits import Waits

__all__ = ["Net", "address_refusal", "named_host", "names_host", "names_host_in_lineage"]

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# The loop's own timer fires this long after the call's timeout, in case a worker is
# stuck where no timeout reaches (getaddrinfo): the agent is answered on time anyway.
BACKSTOP_S: Final = 1.0
WAITING_AFTER_S: Final = 0.01
_METADATA: Final = (ipaddress.ip_address("169.254.169.254"),
                    ipaddress.ip_address("fd00:ec2::254"))
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_GLOB_CHARS: Final = frozenset("*?\\")


# ------------------------------------------------------------------ deciding (pure)


def address_refusal(address: str) -> str | None:
    """Why a connection to ``address`` is refused unless its host is named, or None.

    Addresses inside the host or its networks -- and the cloud metadata service -- are
    what a fetch from a sandbox must not reach by accident or by a DNS trick. An
    IPv4 address wrapped in IPv6 (``::ffff:127.0.0.1``, NAT64) is judged as itself.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private or ip in _CGNAT:
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


def named_host(resource: str) -> str | None:
    """The host a ``net`` capability's URL glob names literally, or None.

    ``http://127.0.0.1:8080/**`` names ``127.0.0.1``; ``*``, ``https://**`` and
    ``http://10.0.0.*/**`` name none.
    """
    if "://" not in resource:
        return None
    hostport = resource.split("://", 1)[1].split("/", 1)[0]
    if "@" in hostport:
        return None
    bracketed = hostport.startswith("[")
    host = hostport[1:].split("]", 1)[0] if bracketed else hostport.split(":", 1)[0]
    if not host or _GLOB_CHARS & set(host):
        return None
    host = host.lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def names_host(caps: Sequence[CapPattern], url: Url) -> bool:
    """Does a held capability that allows ``url`` name its host explicitly?"""
    return any(c.kind == "net" and c.allows("net", "fetch", url.text)
               and named_host(c.resource) == url.host for c in caps)


def names_host_in_lineage(store: Store, caller: Caller, url: Url) -> bool:
    """:func:`names_host` for ``caller`` and every ancestor up to its tree's root.

    Naming a host is not a right a process can hand on without holding it: a parent
    holding ``net:fetch:*`` (which names no host) may give a child
    ``net:fetch:http://127.0.0.1:8080/**`` -- it lies within its own -- and so could
    reach the host's own services through the child, or through an image it registers
    and spawns. So every ancestor must hold a capability naming the host too: in the
    end the root's, which is its image's request within the operator's policy."""
    if not names_host(caller.caps, url):
        return False
    pid, depth = caller.ppid, 0
    while pid is not None and depth < 256:  # a tree is far shallower ([supervisor] max_depth)
        held = parse_caps(c for c in store.get_caps(pid) if c.startswith("net:"))
        if not names_host(held, url):
            return False
        pid, depth = store.get_process(pid).ppid, depth + 1
    return pid is None


def _redirect_method(status: int, method: str) -> str:
    # 303 always becomes GET; 301/302 turn a POST into GET, as every browser does;
    # 307/308 repeat the request as it was.
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


# ------------------------------------------------------------------ the service


@dataclass
class _Fetch:
    caller: Caller
    spec: FetchSpec
    pending: Pending
    deadline: float
    url: Url
    method: str
    body: bytes
    followed: list[str] = field(default_factory=list)


class Net:
    def __init__(self, authz: Authorizer, waits: Waits, loop: Loop, offloop: OffLoop,
                 client: HttpClient, secrets: Sequence[SecretRule] = (),
                 limits: FetchLimits | None = None, *, resolver: Resolver = resolve,
                 environ: Mapping[str, str] = os.environ, store: Store | None = None) -> None:
        self._authz = authz
        self._waits = waits
        self._loop = loop
        self._offloop = offloop
        self._client = client
        self._secrets = tuple(secrets)
        self._limits = limits or FetchLimits()
        self._resolver = resolver
        self._environ = environ
        self._store = store  # for the lineage of a host's naming (names_host_in_lineage)

    @property
    def limits(self) -> FetchLimits:
        return self._limits

    def fetch(self, caller: Caller, spec: FetchSpec) -> Pending:
        pid = caller.pid
        pending = Pending(pid)
        f = _Fetch(caller, spec, pending, time.monotonic() + spec.timeout_s, spec.url,
                   spec.method, spec.body)
        self._start(f)

        def expired() -> LibOSError:
            self._audit(f, "error", error="timeout")
            return Timeout(f"net.fetch: no complete response from {f.url} within "
                           f"{spec.timeout_s:g} s")

        def waiting() -> None:
            if pending.done:
                return
            left = max(0.0, f.deadline - time.monotonic())
            # KeyError: the process ended meanwhile (no longer live); its reply goes nowhere.
            with contextlib.suppress(KeyError):
                self._waits.suspend(pid, pending, f"net:{storable(spec.url.text, 200)}",
                                    timeout_s=left + BACKSTOP_S, on_timeout=expired)

        # Most fetches answer within milliseconds: marking the process `waiting` (and
        # `running` again) costs two store writes on the loop, so it is done only for a
        # fetch still running after WAITING_AFTER_S -- which also sets the backstop.
        timer = self._loop.call_later(WAITING_AFTER_S, waiting)
        pending.on_done = timer.cancel
        return pending

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------ hops

    def _start(self, f: _Fetch) -> None:
        """Send the current hop off the loop (its URL is already authorized)."""
        headers, values = self._secret_headers(f.url)
        sent = {k.lower() for k, _ in headers}
        agent = [(k, v) for k, v in f.spec.headers if k.lower() not in sent]
        if not any(k.lower() == "accept-encoding" for k, _ in agent):
            agent.append(("Accept-Encoding", "identity"))
        job = partial(_exchange, self._client, self._resolver, f.url, f.method,
                      tuple(agent + headers), f.body, f.deadline,
                      self._limits.max_response_bytes, self._named(f))
        self._offloop.submit(job, partial(self._hop_done, f, values))

    def _named(self, f: _Fetch) -> bool:
        if self._store is None:  # no lineage to read (a Net tested alone)
            return names_host(f.caller.caps, f.url)
        return names_host_in_lineage(self._store, f.caller, f.url)

    def _hop_done(self, f: _Fetch, secrets: tuple[bytes, ...],
                  outcome: HttpResponse | BaseException) -> None:
        if f.pending.done:
            return  # answered already (the backstop timer)
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            resp = _redacted(outcome, secrets)
            location = _header(resp, "location")
            if resp.status in REDIRECTS and location is not None:
                self._redirect(f, resp, location)
                return
            self._audit(f, "info", status=resp.status, bytes=len(resp.body))
            f.pending.resolve({
                "status": resp.status, "headers": _header_dict(resp.headers),
                "url": f.url.text, "size": len(resp.body), "redirects": f.followed,
            }, [resp.body])
        except LibOSError as e:
            err = e
            if secrets:  # an error message never carries a secret, even one echoed back
                err = type(e)(redact(e.message.encode(), secrets).decode(errors="replace"),
                              **e.details)
            self._audit(f, "deny" if isinstance(e, PermissionDenied) else "error",
                        error=f"{type(e).__name__}: {storable(err.message, 512)}")
            f.pending.reject(err)
        except Exception:
            f.pending.reject(InternalError("net.fetch: internal error; the supervisor log "
                                           "has the details"))
            raise

    def _redirect(self, f: _Fetch, resp: HttpResponse, location: str) -> None:
        self._audit(f, "info", status=resp.status, bytes=len(resp.body))
        if len(f.followed) >= self._limits.max_redirects:
            raise PermissionDenied(f"net.fetch: more than {self._limits.max_redirects} "
                                   f"redirects, the last from {f.url}")
        try:
            nxt = canonical_url(urljoin(f.url.text, location), "net.fetch redirect")
        except LibOSError as e:
            raise PermissionDenied(f"net.fetch: {f.url} redirects to a URL that cannot be "
                                   f"fetched: {e.message}") from None
        if f.url.scheme == "https" and nxt.scheme == "http":
            raise PermissionDenied(f"net.fetch: {f.url} redirects from https to plain http "
                                   f"({nxt})")
        f.followed.append(nxt.text)
        method = _redirect_method(resp.status, f.method)
        if method != f.method:
            f.method, f.body = method, b""
        f.url = nxt
        try:
            # The redirect is checked as if the agent had asked for it: capability,
            # policy, audit. A rule that would ask a human refuses instead -- the call
            # already holds its answer slot, and an approval here would be for a URL the
            # operator never saw asked for.
            self._authz.authorize(f.caller, "net.fetch", Request("net", "fetch", nxt.text))
        except NeedsApproval as need:
            raise PermissionDenied(
                f"net.fetch: the redirect to {nxt} needs a human's approval "
                f"({need.decision.reason}); redirects are not asked about -- fetch it "
                "directly", request=f"net:fetch:{nxt}") from None
        self._start(f)

    def _secret_headers(self, url: Url) -> tuple[list[tuple[str, str]], tuple[bytes, ...]]:
        headers: list[tuple[str, str]] = []
        values: list[bytes] = []
        for rule in self._secrets:
            if not rule.matches(url.text):
                continue
            raw = self._environ.get(rule.value_env)
            if not raw:
                raise Unavailable(f"net.fetch: the operator's secret {rule.name!r} applies "
                                  f"to {url}, but {rule.value_env} is not set for the "
                                  "supervisor")
            value = rule.prefix + raw
            if any(c in value for c in "\r\n\0") or not value.isascii():
                raise Unavailable(f"net.fetch: the operator's secret {rule.name!r} is not a "
                                  "valid header value")
            headers.append((rule.header, value))
            values += [value.encode(), raw.encode()]
        # Redact the longest first, so a value that contains another goes whole.
        return headers, tuple(sorted((v for v in values if len(v) >= 4), key=len,
                                     reverse=True))

    def _audit(self, f: _Fetch, verdict: str, **detail: Any) -> None:
        self._authz.audit(f.caller, "net.fetch", f"net:fetch:{f.url}", verdict,
                          {"method": f.method, "url": f.url.text, **detail})


def _exchange(client: HttpClient, resolver: Resolver, url: Url, method: str,
              headers: tuple[tuple[str, str], ...], body: bytes, deadline: float,
              max_response_bytes: int, host_named: bool) -> HttpResponse:
    """One hop, on a worker thread: resolve, check every address, send to a checked one."""
    addresses = resolver(url.host, url.port)
    if not host_named:
        for a in addresses:
            why = address_refusal(a)
            if why is not None:
                raise PermissionDenied(
                    f"net.fetch: {url.host} resolves to {a}, {why}; only a capability that "
                    f"names the host (net:fetch:{url.scheme}://{url.host}...) allows it",
                    request=f"net:fetch:{url}")
    last: LibOSError | None = None
    for a in addresses:
        try:
            return client.send(HttpRequest(method, url.scheme, url.host, url.port,
                                           url.target, a, headers, body, deadline,
                                           max_response_bytes))
        except Unavailable as e:
            if not e.details.get("connect"):
                raise
            last = e  # nothing was sent to this address: try the next checked one
    assert last is not None
    raise last


def _redacted(resp: HttpResponse, secrets: tuple[bytes, ...]) -> HttpResponse:
    if not secrets:
        return resp
    headers = tuple((k, redact(v.encode("latin-1", "replace"), secrets).decode("latin-1"))
                    for k, v in resp.headers)
    return HttpResponse(resp.status, headers, redact(resp.body, secrets))


def _header(resp: HttpResponse, name: str) -> str | None:
    return next((v for k, v in resp.headers if k == name), None)


def _header_dict(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out
