"""A small OpenAI-compatible Chat Completions server on loopback, for tests and benches.

Real sockets, real HTTP: the supervisor's client code (httpx) talks to it exactly as it
would to OpenAI or vLLM. Behaviour per request is chosen by a queue of planned answers
(``plan``) or, when the queue is empty, by ``default``; every request received is kept
in ``received`` (body and headers), so a test can check what reached the "model".
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    """What the server does with one request."""

    content: str | None = "ok"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None  # sent as the body as is (bad JSON, say)
    usage: dict[str, int] | None = None  # default: a fixed small usage
    headers: dict[str, str] = field(default_factory=dict)
    # A request header whose value the answer repeats (in the content, a tool call's
    # arguments and the model's name), as a debugging proxy or a parroting model might.
    echo: str | None = None


class FakeOpenAI:
    def __init__(self, *, key: str | None = None) -> None:
        self.key = key  # when set, requests without "Bearer KEY" get 401
        self.plan: deque[Answer] = deque()
        self.default = Answer()
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle and the
                # client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server.lock:
                    server.received.append({"path": self.path, "body": body,
                                            "headers": dict(self.headers.items())})
                    answer = server.plan.popleft() if server.plan else server.default
                if server.key is not None and \
                        self.headers.get("Authorization") != f"Bearer {server.key}":
                    err = {"error": {"message": "Incorrect API key provided"}}
                    self._send(401, json.dumps(err).encode(), {})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "no such route"}}', {})
                    return
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                if answer.raw is not None:
                    self._send(answer.status, answer.raw, answer.headers)
                    return
                if answer.status != 200:
                    err = {"error": {"message": f"planned failure {answer.status}"}}
                    self._send(answer.status, json.dumps(err).encode(), answer.headers)
                    return
                msg: dict[str, Any] = {"role": "assistant", "content": answer.content}
                model = body.get("model") if isinstance(body, dict) else None
                if answer.echo is not None:
                    said = self.headers.get(answer.echo, "")
                    msg["content"] = f"{answer.content or ''} {said}"
                    model = f"{model} {said}"
                    answer.tool_calls = [{"name": "echo", "arguments": {said: said}}]
                if answer.tool_calls:
                    msg["tool_calls"] = [
                        {"id": f"call_{i}", "type": "function",
                         "function": {"name": c["name"],
                                      "arguments": c["arguments"] if isinstance(
                                          c["arguments"], str) else json.dumps(c["arguments"])}}
                        for i, c in enumerate(answer.tool_calls)]
                usage = answer.usage or {"prompt_tokens": 11, "completion_tokens": 5}
                usage = {**usage, "total_tokens": usage["prompt_tokens"]
                         + usage["completion_tokens"]}
                out = {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": msg,
                                    "finish_reason": "tool_calls" if answer.tool_calls
                                    else "stop"}],
                       "usage": usage}
                self._send(200, json.dumps(out).encode(), answer.headers)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
