"""``agentlibos caps PID`` and ``caps revoke PID CAP``: what a process holds; take it back
(through the supervisor, or with none running, in the store a resume reads)."""

from __future__ import annotations

import argparse
from typing import Any

from agentlibos.cli.common import (
    EXIT_OK,
    add_command,
    control,
    note,
    paths_of,
    positive_id,
    print_json,
    query,
)
from agentlibos.cli.offline import RESUMED_BY, locked_store
from agentlibos.config import Paths
from agentlibos.errors import NoSuchProcess, UsageError
from agentlibos.store import Store
from agentlibos.supervisor.control import ping
from agentlibos.supervisor.control.op_caps import revoke as revoke_caps
from agentlibos.supervisor.control.op_caps import stored_caps
from agentlibos.ui import printable

USAGE = "caps PID | caps revoke PID CAP"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # `caps PID` and `caps revoke PID CAP` share one parser: argparse cannot have both a
    # positional PID and a subcommand at the same place.
    p = add_command(sub, "caps", help="show a process's capabilities, or revoke one",
                    func=cmd_caps, example="""
        agentlibos caps 7                      # one resolved capability a line
        agentlibos caps 7 --json               # ["fs:read:/home/me/project/**", ...]
        agentlibos caps revoke 7 'fs:write:/home/me/project/out/**'
                                               # from 7 and all its descendants, at once
    """)
    p.add_argument("words", nargs="+", metavar="PID | revoke PID CAP",
                   help="a pid to show; or `revoke`, a pid and a capability as `caps` "
                        "prints it (absolute paths), which is taken with everything it "
                        "covers from the process and its descendants")


def _pid(text: str) -> int:
    try:
        return positive_id(text)
    except argparse.ArgumentTypeError:
        raise UsageError(f"{text!r} is not a pid (usage: {USAGE})") from None


def cmd_caps(ns: argparse.Namespace) -> int:
    words: list[str] = ns.words
    if words[0] == "revoke":
        if len(words) != 3:
            raise UsageError(f"caps revoke takes a pid and a capability (usage: {USAGE})")
        return revoke(ns, _pid(words[1]), words[2])
    if len(words) != 1:
        raise UsageError(f"caps takes one pid (usage: {USAGE})")
    pid = _pid(words[0])
    def offline(store: Store) -> dict[str, Any]:
        store.get_process(pid)  # NoSuchProcess when there is none
        return {"pid": pid, **stored_caps(store, pid), "live": False}

    reply = query(paths_of(ns), {"op": "caps", "pid": pid}, offline)
    held = [str(c) for c in reply.get("caps") or []]
    # What `approve --always` granted it is held too, for the rest of its life.
    always = [a for a in map(str, reply.get("approved") or []) if a not in held]
    if ns.json:
        print_json(held + always)
    elif held or always:
        print("\n".join([*(printable(c) for c in held),
                         *(f"{printable(a)}  (approved --always)" for a in always)]),
              flush=True)
    else:
        note(f"process {pid} holds no capabilities")
    return EXIT_OK


def revoke(ns: argparse.Namespace, pid: int, cap: str) -> int:
    paths = paths_of(ns)
    if (pong := ping(paths.control_endpoint)) is not None:
        reply = control(paths, {"op": "caps_revoke", "pid": pid, "cap": cap}, pong)
    else:
        reply = revoke_offline(paths, pid, cap)
    if ns.json:
        print_json(reply)
        return EXIT_OK
    changed = reply.get("changed") or []
    pids = ", ".join(str(c.get("pid")) for c in changed) or str(pid)
    note(f"revoked {cap} from process {pids}")
    return EXIT_OK


def revoke_offline(paths: Paths, pid: int, cap: str) -> dict[str, Any]:
    """With no supervisor running: the same revocation (``op_caps.revoke``, with no live
    process to narrow) written straight into the store, where a resume reads the
    capabilities back from."""
    if not paths.db.exists():
        raise NoSuchProcess(f"no process {pid}: nothing has run in {paths.home}")
    with locked_store(paths) as store:
        cut, changed = revoke_caps(store, pid, cap, {})
    note(f"no supervisor is running: {cut} is revoked in the store, from process "
         f"{', '.join(str(c['pid']) for c in changed)}; a resumed process does not hold it "
         f"({RESUMED_BY})")
    return {"pid": pid, "cap": cut, "changed": changed, "supervisor": False}
