"""``agentlibos event post NAME [--data JSON]``: wake every agent waiting on an event;
with no supervisor running, record the post for the waiters to find when resumed."""

from __future__ import annotations

import argparse
from typing import Any

from agentlibos.cli.common import (
    EXIT_OK,
    NotJSON,
    add_command,
    control,
    note,
    parse_json,
    paths_of,
    print_json,
)
from agentlibos.cli.offline import RESUMED_BY, locked_store
from agentlibos.config import Paths
from agentlibos.errors import Unavailable, UsageError
from agentlibos.kernel.approvals import EVENT_NAME_RE
from agentlibos.supervisor.control import ping
from agentlibos.supervisor.control.op_event_post import audit_operator_post


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("event", help="post events that agents wait for",
                        description="Post events that agents wait for.",
                        epilog="example:\n  agentlibos event post build-done --data '\"ok\"'",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    evsub = ev.add_subparsers(dest="event_command", metavar="SUBCOMMAND", required=True)
    post = add_command(evsub, "post", help="post an event: every agent waiting on NAME wakes",
                       func=cmd_event_post, example="""
        agentlibos event post build-done
        agentlibos event post deploy/eu --data '{"version": "1.4.2", "ok": true}'
    """)
    post.add_argument("name", help="1-128 characters of A-Z a-z 0-9 _ . : / -, starting "
                                   "with a letter or a digit")
    post.add_argument("--data", metavar="JSON",
                      help="the payload the waiters receive, as JSON (default: null)")


def parse_data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_json(text)
    except NotJSON as e:
        raise UsageError(f"--data is not JSON ({e}); quote text as JSON: "
                         "--data '\"text\"'") from None


def cmd_event_post(ns: argparse.Namespace) -> int:
    # The supervisor checks the name too; this answers sooner, without one. fullmatch,
    # because the pattern's `$` would let a trailing newline through.
    if not EVENT_NAME_RE.fullmatch(ns.name):
        raise UsageError(f"{ns.name!r} is not a valid event name: 1-128 characters of "
                         "A-Z a-z 0-9 _ . : / -, starting with a letter or a digit")
    data = parse_data(ns.data)  # before anything is sent: bad input changes nothing
    paths = paths_of(ns)
    if (pong := ping(paths.control_endpoint)) is not None:
        reply = control(paths, {"op": "event_post", "name": ns.name, "data": data}, pong)
    else:
        reply = post_offline(paths, ns.name, data)
    if ns.json:
        print_json(reply)
    else:
        woken = reply.get("woken")
        note(f"posted {ns.name} (event {reply.get('id')}); "
             f"{woken} waiter{'' if woken == 1 else 's'} woken")
    return EXIT_OK


def post_offline(paths: Paths, name: str, data: Any) -> dict[str, Any]:
    """With no supervisor running: the post and its audit record, as the supervisor
    writes them, straight into the store. Nobody is woken now; a waiter (evicted, or
    left by a supervisor that died) finds the post when it is resumed, because its wait
    reads the posts made after it began (``Events.wait``)."""
    if not paths.db.exists():
        # No store: nothing ever ran here, so no agent waits on it (and a wait begun
        # later would not see this post). Most likely the wrong home.
        raise Unavailable(f"no supervisor is running in {paths.home}, and nothing has run "
                          "there (no agent can be waiting): start one with `agentlibos "
                          "serve --detach`")
    with locked_store(paths) as store, store.transaction():
        rec = store.event_append(name, data, None)
        audit_operator_post(store, name, rec.id, 0)
    note(f"no supervisor is running: {name} (event {rec.id}) is recorded in the store; "
         f"the agents waiting on it get it when they are resumed ({RESUMED_BY})")
    return {"name": name, "id": rec.id, "woken": 0, "supervisor": False}
