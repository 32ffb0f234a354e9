"""The parser and the dispatch: every command lives in its own module beside this one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from agentlibos import __version__
from agentlibos.cli import (
    answer,
    approvals,
    approve,
    attention,
    audit,
    caps,
    checkpoint,
    console,
    demo,
    deny,
    doctor,
    event,
    image,
    kill,
    logs,
    prune,
    ps,
    resolve,
    restore,
    resume,
    run,
    serve,
    wait,
)
from agentlibos.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    err,
    log_to_stderr,
)
from agentlibos.errors import InvalidArgument, LibOSError, LimitExceeded, NotFound

COMMANDS = (run, wait, logs, serve, ps, kill, approvals, approve, deny, answer, event, caps,
            checkpoint, restore, resume, attention, resolve, image, audit, prune, doctor,
            demo, console)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="agentlibos",
        description="Run LLM agents as sandboxed processes behind a capability broker.",
        epilog="exit status: 0 success, 1 the agent or operation failed, 2 bad usage or "
               "input, 130 interrupted (docs/cli.md)\n\nexample:\n"
               "  agentlibos run ./my-image --arg topic=lighthouses --cwd ~/project",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"agentlibos {__version__}")
    p.add_argument("--home", help="state directory (default: $AGENTLIBOS_HOME or "
                                  "~/.local/state/agentlibos)")
    p.add_argument("--config", help="the operator's config TOML, all of it, for every "
                                    "supervisor this command starts (default: "
                                    "$AGENTLIBOS_HOME/config.toml if present)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run one command; every error the user can cause is one line and an exit status."""
    log_to_stderr()
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        code = int(ns.func(ns))
    except (InvalidArgument, NotFound) as e:
        # Bad input of every kind: UsageError, ImageError, PolicyError, a pid or a
        # name that does not exist.
        err(e.message)
        code = EXIT_USAGE
    except LibOSError as e:
        err(e.message)
        # An image that asks for more than the operator's [limits.ceiling] is bad input
        # as well (its author asks for less, or the operator raises the ceiling); its
        # details say so, through a daemon's answer too.
        code = EXIT_USAGE if isinstance(e, LimitExceeded) and "ceiling" in e.details \
            else EXIT_FAILED
    except KeyboardInterrupt:
        err("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`agentlibos audit | head`): not an error of ours.
        sys.stderr.close()
        code = EXIT_OK
    sys.exit(code)
