"""Who may use the console, decided in pure code: token, session cookie, CSRF, Origin, Host.

The threats, each with its answer:

- *another local user or a page in the operator's browser finds the port*: nothing is
  served without the random token the console printed, or the session cookie that the
  token bought (401);
- *a page on another site makes the operator's browser POST an approval* (CSRF): the
  cookie is ``SameSite=Strict`` so a cross-site request does not carry it; every change
  must also carry the session's CSRF token, which only the console's own page knows,
  and an ``Origin`` (or ``Referer``) that is the console's own (403);
- *DNS rebinding* (evil.example resolving to 127.0.0.1 so that its page is same-origin
  with us): the ``Host`` header must name the address we listen on (400);
- *a script reading the cookie*: it is ``HttpOnly``;
- *clickjacking the approve button*: the app sends ``frame-ancestors 'none'``.

:class:`Guard` holds the token and the sessions; the web app asks it questions and
does what it answers.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

COOKIE: Final = "agentlibos_console"
CSRF_HEADER: Final = "x-csrf-token"
# Each visit of the printed URL opens a session; old ones are forgotten past this many.
MAX_SESSIONS: Final = 64
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Session:
    id: str  # the cookie's value
    csrf: str  # put in the page; every change carries it back


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status to answer with
    reason: str  # one line for the person (never echoes what the request sent)


class Guard:
    def __init__(self, token: str, hosts: frozenset[str]) -> None:
        """``hosts``: the ``Host`` header values that name us (``127.0.0.1:8470``...)."""
        self.token = token
        self.hosts = hosts
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @classmethod
    def fresh(cls, hosts: frozenset[str]) -> Guard:
        return cls(secrets.token_urlsafe(32), hosts)

    def check_host(self, host: str | None) -> Refusal | None:
        if host is None or host.lower() not in self.hosts:
            return Refusal(400, "this console does not answer to that Host name")
        return None

    def login(self, token: str) -> Session | None:
        """A new session for the right token, else None."""
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            return None
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self._sessions[s.id] = s
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return s

    def session(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        for sid, s in self._sessions.items():
            # Compare against each in constant time; a dict lookup would leak by timing.
            if secrets.compare_digest(sid.encode(), cookie.encode()):
                return s
        return None

    def check_change(
        self, session: Session, *, host: str, csrf: str | None, origin: str | None,
        referer: str | None,
    ) -> Refusal | None:
        """May this session's non-GET request go on? ``host`` has passed check_host."""
        own = f"http://{host.lower()}"
        if origin is not None:
            if origin.lower() != own:
                return Refusal(403, "cross-site request refused (Origin is not this console)")
        elif referer is not None:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() != own:
                return Refusal(403, "cross-site request refused (Referer is not this console)")
        else:
            # Browsers send Origin on every POST; a request with neither is not from our
            # page, so fail closed.
            return Refusal(403, "request refused: no Origin or Referer")
        if not csrf or not secrets.compare_digest(csrf.encode(), session.csrf.encode()):
            return Refusal(403, "request refused: missing or wrong CSRF token")
        return None


def host_names(listen_host: str, port: int, *, loopback: bool) -> frozenset[str]:
    """The Host header values that name a console listening on ``listen_host:port``."""
    names = {f"[{listen_host}]" if ":" in listen_host else listen_host}
    if loopback:
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{n.lower()}:{port}" for n in names)
