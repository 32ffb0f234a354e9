"""``agentlibos console``: serve the web console (approvals, questions, processes, audit)."""

from __future__ import annotations

import argparse

from agentlibos.cli.common import EXIT_OK, add_command, note, paths_of, print_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "console", func=cmd_console,
                    help="serve the web console: approve, deny and answer; see processes "
                         "and the audit", example="""
        agentlibos console                      # prints http://127.0.0.1:8470/?token=...
        agentlibos console --listen 127.0.0.1:0 # any free port
        agentlibos console --json               # {"url": ..., "host": ..., "port": ...}
    """)
    p.add_argument("--listen", default="127.0.0.1:8470", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8470; loopback only "
                        "unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen (plain HTTP: put TLS in front)")


def cmd_console(ns: argparse.Namespace) -> int:
    # Imported here: the web stack is needed by this command only, and every other
    # command should not pay for importing it.
    from agentlibos.console import ControlLink, parse_listen, serve  # noqa: PLC0415
    from agentlibos.supervisor.control import ping  # noqa: PLC0415

    listen = parse_listen(ns.listen, allow_remote=ns.allow_remote)
    paths = paths_of(ns)
    if not listen.loopback:
        note(f"warning: listening on {listen.host}, which is not loopback; the token and "
             "every approval cross the network in clear text unless TLS is in front")
    link = ControlLink(paths)
    if ping(paths.control_endpoint) is None:
        note(f"no supervisor is running for {paths.home} yet; the page says so until "
             "`agentlibos serve` starts")

    def ready(url: str, port: int) -> None:
        if ns.json:
            print_json({"url": url, "host": listen.host, "port": port})
        else:
            print(url, flush=True)

    serve(link, listen, on_ready=ready)
    return EXIT_OK
