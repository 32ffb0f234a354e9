"""Serve the console: bind first, then print the URL once uvicorn is accepting.

Binding the socket ourselves means ``--listen 127.0.0.1:0`` works (the printed URL names
the port the kernel chose) and the URL is printed only when a browser can connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from agentlibos.console.app import build_app
from agentlibos.console.guard import Guard, host_names
from agentlibos.console.link import ControlLink
from agentlibos.console.listen import Listen
from agentlibos.errors import UsageError


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the stopping signal once it has shut down; for the console
        # SIGTERM and Ctrl-C are its normal end (status 0, as for `agentlibos serve`).
        def stop(signum: int, frame: FrameType | None) -> None:
            self.should_exit = True

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {listen.url_host()}:{listen.port}: "
                         f"{e.strerror}") from None
    sock.listen(128)
    return sock


def _print_url(url: str, port: int) -> None:
    print(url, flush=True)


def serve(link: ControlLink, listen: Listen, *,
          on_ready: Callable[[str, int], None] = _print_url) -> None:
    """Serve until SIGINT or SIGTERM; ``on_ready(url, port)`` once a browser can connect.

    ``url`` carries the token; ``port`` is the one bound (the kernel's choice for port 0).
    """
    sock = bind(listen)
    port = int(sock.getsockname()[1])
    guard = Guard.fresh(host_names(listen.host, port, loopback=listen.loopback))
    config = uvicorn.Config(build_app(guard, link), log_level="warning", access_log=False,
                            lifespan="off", server_header=False, proxy_headers=False,
                            # A browser's open poll must not hold a stop for long.
                            timeout_graceful_shutdown=3)
    server = _Server(config)
    url = f"http://{listen.url_host()}:{port}/?token={guard.token}"

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            on_ready(url, port)
        await task

    try:
        asyncio.run(run())
    finally:
        sock.close()
