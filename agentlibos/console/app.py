"""The web app: the page, its JSON endpoints, and the guard in front of all of them.

Routes (all behind :class:`GuardMiddleware`):

- ``GET /`` the page, with this session's CSRF token in a ``<meta>``;
- ``GET /static/console.js``, ``/static/console.css``;
- ``GET /api/state`` what the page shows (polled every second);
- ``POST /api/approve`` ``{"id", "always"}``, ``/api/deny`` ``{"id", "reason"}``,
  ``/api/answer`` ``{"id", "text"}``: passed to the supervisor's control op of that name.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentlibos.console.guard import COOKIE, CSRF_HEADER, SAFE_METHODS, Guard, Refusal, Session
from agentlibos.console.link import ControlLink
from agentlibos.errors import InvalidArgument, LibOSError, PermissionDenied, ProtocolError, to_wire

# The supervisor's error codes as HTTP statuses; anything else is 500 with the message.
STATUS_OF_CODE: Final = {
    "ENOENT": 404, "ESRCH": 404, "ECONFLICT": 409, "EINVAL": 400, "EUSAGE": 400,
    "EPERM": 403, "EUNAVAIL": 503, "ETIMEDOUT": 504,
}
MAX_BODY_BYTES: Final = 64 << 10
MAX_TEXT_CHARS: Final = 4000

# No inline script or style, nothing from elsewhere, never in a frame.
SECURITY_HEADERS: Final = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # Same-origin requests keep their Referer (the guard's fallback to Origin); nothing
    # leaks to another site.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

UNAUTHORIZED_TEXT: Final = ("401: this is the agentlibos console; open the URL that "
                            "`agentlibos console` printed (it carries ?token=...)\n")


def _static(name: str) -> str:
    return (resources.files("agentlibos.console") / "static" / name).read_text()


class GuardMiddleware:
    """Host check, token login, session cookie, then CSRF and Origin for every change."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        request = Request(scope)
        response = self._decide(request)
        if response is not None:
            await response(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _decide(self, request: Request) -> Response | None:
        """A response that ends the request here, or None to go on to the app."""
        g = self.guard
        host = request.headers.get("host")
        refused = g.check_host(host)
        if refused is not None or host is None:
            return _refusal(refused or Refusal(400, "no Host header"))
        token = parse_qs(request.url.query).get("token")
        if token is not None:
            session = g.login(token[0]) if request.method in SAFE_METHODS else None
            if session is None:
                return PlainTextResponse(UNAUTHORIZED_TEXT, status_code=401)
            # Drop the token from the address bar (and from what a screenshot shows).
            # One leading slash: "//evil.example" would be a redirect to another site.
            response = RedirectResponse("/" + request.url.path.lstrip("/"), status_code=303)
            response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict",
                                path="/")
            return response
        session = g.session(request.cookies.get(COOKIE))
        if session is None:
            return PlainTextResponse(UNAUTHORIZED_TEXT, status_code=401)
        request.scope.setdefault("state", {})["session"] = session
        if request.method not in SAFE_METHODS:
            refused = g.check_change(session, host=host,
                                     csrf=request.headers.get(CSRF_HEADER),
                                     origin=request.headers.get("origin"),
                                     referer=request.headers.get("referer"))
            if refused is not None:
                return _refusal(refused)
        return None


def _refusal(r: Refusal) -> Response:
    # The same error shape as every other answer (to_wire's: type, code, message, details).
    e = PermissionDenied(r.reason) if r.status == 403 else ProtocolError(r.reason)
    return JSONResponse({"ok": False, "error": to_wire(e)}, status_code=r.status)


def _error(e: LibOSError) -> Response:
    return JSONResponse({"ok": False, "error": to_wire(e)},
                        status_code=STATUS_OF_CODE.get(e.code, 500))


def build_app(guard: Guard, link: ControlLink) -> ASGIApp:
    """The console's ASGI app: ``link`` is its only way to the supervisor."""
    page = _static("index.html")

    async def index(request: Request) -> Response:
        session: Session = request.scope["state"]["session"]
        # The CSRF token is URL-safe base64: nothing to escape.
        return Response(page.replace("{{CSRF_TOKEN}}", session.csrf),
                        media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        types = {"console.js": "text/javascript; charset=utf-8",
                 "console.css": "text/css; charset=utf-8"}
        if name not in types:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(_static(name), media_type=types[name])

    async def state(request: Request) -> Response:
        try:
            snap = await run_in_threadpool(link.snapshot)
        except LibOSError as e:
            return _error(e)
        return JSONResponse({"ok": True, **snap})

    def change(op: str) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                req = _change_request(op, await _json_body(request))
                reply = await run_in_threadpool(link.change, req)
            except LibOSError as e:
                return _error(e)
            return JSONResponse(reply)

        return endpoint

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask; a 404 would litter their console

    app = Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/favicon.ico", no_icon, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/approve", change("approve"), methods=["POST"]),
        Route("/api/deny", change("deny"), methods=["POST"]),
        Route("/api/answer", change("answer"), methods=["POST"]),
    ])
    return GuardMiddleware(app, guard)


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise InvalidArgument("send the change as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InvalidArgument("request body too large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


_FIELDS: Final = {"approve": {"id", "always"}, "deny": {"id", "reason"},
                  "answer": {"id", "text"}}


def _change_request(op: str, body: dict[str, Any]) -> dict[str, Any]:
    """The control request for ``op``, its fields checked by type (not just presence);
    a field it does not take is refused, not ignored (a typo would act otherwise)."""
    unknown = set(body) - _FIELDS[op]
    if unknown:
        raise InvalidArgument(f"{op} takes {', '.join(sorted(_FIELDS[op]))}; not "
                              f"{', '.join(sorted(map(str, unknown)))}")
    rid = body.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 1:
        raise InvalidArgument("'id' must be a positive integer")
    if op == "approve":
        always = body.get("always", False)
        if not isinstance(always, bool):
            raise InvalidArgument("'always' must be true or false")
        return {"op": "approve", "id": rid, "always": always}
    if op == "deny":
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise InvalidArgument("'reason' must be text")
        reason = (reason or "").strip()[:MAX_TEXT_CHARS] or None
        return {"op": "deny", "id": rid, "reason": reason}
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("'text' must be a non-empty answer")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"an answer is at most {MAX_TEXT_CHARS} characters")
    return {"op": "answer", "id": rid, "text": text}
