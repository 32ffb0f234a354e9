"""What every command shares, said once: exit codes, errors, paths, --json, stores."""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import logging
import math
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from agentlibos.config import OperatorConfig, Paths, load_operator_config, operator_config
from agentlibos.errors import NoSuchProcess, Unavailable, UsageError
from agentlibos.kernel.policy import Policy
from agentlibos.kernel.process import INT64_MAX
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import Store, open_store
from agentlibos.supervisor.control import control_call, ping
from agentlibos.ui import printable

# The exit statuses of every command (docs/cli.md).
EXIT_OK: Final = 0  # success
EXIT_FAILED: Final = 1  # the agent or the operation failed
EXIT_USAGE: Final = 2  # bad usage or bad input (argparse uses 2 as well)
EXIT_INTERRUPTED: Final = 130  # Ctrl-C (SIGINT) or SIGTERM, as a shell reports 128+2

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one ``agentlibos: error:`` line (docs/cli.md):
    the command, what is wrong, and where the usage is."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        # Left-over arguments are found by the top parser: name the command they follow.
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            words = [w for w in (getattr(ns, "command", None), getattr(ns, "event_command",
                     None), getattr(ns, "image_command", None)) if w]
            _usage_error(" ".join([self.prog, *words]),
                         f"unrecognized arguments: {' '.join(extra)}")
        return ns


def _usage_error(prog: str, message: str) -> NoReturn:
    command = prog.removeprefix("agentlibos").strip()
    where = f"{command}: " if command else ""
    hint = f"`{prog} --help` shows the usage"
    sys.stderr.write(f"agentlibos: error: {where}{printable(message)} ({hint})\n")
    sys.exit(EXIT_USAGE)

_ARG_KEY: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def err(msg: str) -> None:
    """One line on stderr, agent-chosen text escaped."""
    print(f"agentlibos: error: {printable(msg)}", file=sys.stderr, flush=True)


def note(msg: str) -> None:
    """A progress line on stderr (stdout stays the command's output)."""
    print(f"agentlibos: {printable(msg)}", file=sys.stderr, flush=True)


class _StderrLog(logging.Handler):
    """What the library logs (a stale cgroup removed, no warm pool, the zygote
    restarted) as the command's other stderr lines: ``agentlibos: note: ...``, or
    ``agentlibos: warning: ...`` from ERROR up (the command's own failure is the one
    ``error:`` line), escaped to one line. A traceback (log.exception: a bug) follows."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)  # as much as Python shows with no handler

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning" if record.levelno >= logging.ERROR else "note"
        line = f"agentlibos: {kind}: {printable(record.getMessage())}"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # sys.stderr when the record comes, not when the handler was made.
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


def log_to_stderr() -> None:
    """Route the ``agentlibos`` loggers to stderr in the CLI's form (once per process)."""
    logger = logging.getLogger("agentlibos")
    if not any(isinstance(h, _StderrLog) for h in logger.handlers):
        logger.addHandler(_StderrLog())


def print_json(value: Any) -> None:
    """JSON on stdout. ``json.dumps`` escapes control characters, so this is always safe."""
    print(json.dumps(value, default=str), flush=True)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str,
    example: str, func: Handler, json_flag: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example; --json where it prints something."""
    p = sub.add_parser(
        name, help=help, description=help[0].upper() + help[1:] + ".",
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=func)
    return p


def paths_of(ns: argparse.Namespace) -> Paths:
    """--home and --config: every supervisor a command starts reads the named config."""
    return Paths.from_env(ns.home, getattr(ns, "config", None))


def readonly_store(paths: Paths) -> Store | None:
    """The state database opened read-only, or None when nothing has run here yet."""
    if not paths.db.exists():
        return None
    return open_store(paths.db, readonly=True)


def supervisor_alive(paths: Paths) -> bool:
    """True if some process holds the supervisor lock."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@functools.cache
def _config_file(path: str) -> OperatorConfig:
    """--config's file, read once per command (its sandbox part and its policy)."""
    return load_operator_config(path)


def sandbox_config(ns: argparse.Namespace) -> SandboxConfig:
    """The sandbox tables of the operator's config this command uses (--config, else
    $AGENTLIBOS_HOME/config.toml, else the defaults), for a command that reads them
    itself. A supervisor reads them from ``paths_of(ns)`` on its own."""
    return operator_config(paths_of(ns)).sandbox


def config_policy(ns: argparse.Namespace) -> Policy | None:
    """--config's [policy] if given; None lets the supervisor use its own (the home's
    config.toml [policy], else the built-in policy)."""
    return _config_file(ns.config).policy if ns.config else None


def parse_args_kv(items: Sequence[str]) -> dict[str, Any]:
    """``--arg k=v`` pairs; a value that parses as JSON is used as JSON, else as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not _ARG_KEY.match(key):
            raise UsageError(f"bad --arg {item!r}: expected KEY=VALUE, KEY an ASCII letter "
                             "or _ then letters, digits, _, . or - (like 'n' or 'max_words')")
        if key in out:
            raise UsageError(f"--arg {key!r} given twice")
        try:
            out[key] = parse_json(raw)
        except NotJSON:
            out[key] = raw
    return out


class NotJSON(ValueError):
    """Text given where JSON is wanted does not parse as JSON; ``str()`` says why."""


def _constant(name: str) -> NoReturn:
    raise NotJSON(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSON(f"the number {text} is out of range")
    return value


def parse_json(text: str) -> Any:
    """``text`` as JSON, strictly: every JSON value the user gives goes through here.

    Python's ``json.loads`` also takes ``NaN``, ``Infinity`` and ``-Infinity``, which are
    not JSON, and reads ``1e999`` as infinity; the broker refuses non-finite numbers
    (protocol/wire.py), so an agent could never be handed them or send them back. They
    are not JSON here either. Raises :class:`NotJSON` (also for what ``json`` itself
    refuses, such as an integer of more than 4300 digits or nesting too deep to parse).
    """
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except NotJSON:
        raise
    except json.JSONDecodeError as e:
        raise NotJSON(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise NotJSON("nested too deeply") from None
    except ValueError as e:  # int() of more digits than Python converts
        raise NotJSON(str(e)) from None


def log_path(paths: Paths, pid: int) -> str:
    return str(paths.logs / f"{pid}.log")


def describe_end(rec: dict[str, Any]) -> str:
    """``pid 7 exited (returned)`` or ``pid 7 failed (error): RuntimeError: boom``."""
    text = f"pid {rec['pid']} {rec.get('state')} ({rec.get('exit_reason') or 'no reason'})"
    if rec.get("error"):
        text += f": {rec['error']}"
    return text


def control(paths: Paths, request: dict[str, Any],
            pong: dict[str, Any] | None = None) -> dict[str, Any]:
    """One control operation on the supervisor serving ``paths``; its reply without ``ok``.

    No supervisor answering is an operation failure (exit 1) that says how to start one;
    the supervisor's own refusals come back as the typed errors it raised.
    """
    if pong is None:  # the caller's own ping, when it made one, is not made again
        pong = ping(paths.control_endpoint)
    if pong is None:
        raise Unavailable(f"no supervisor is running in {paths.home}: start one with "
                          "`agentlibos serve --detach` (or keep an `agentlibos run` going)")
    # Its pid: a supervisor that dies with the request in hand is said so at once.
    holder = pong.get("pid") if isinstance(pong.get("pid"), int) else None
    reply = control_call(paths.control_endpoint, request, holder=holder)
    return {k: v for k, v in reply.items() if k != "ok"}


def query(paths: Paths, request: dict[str, Any],
          offline: Callable[[Store], dict[str, Any]],
          empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """A read-only control operation: the supervisor's answer when one runs, else the
    same read of the store (``offline``), read-only. Where nothing has run yet: ``empty``,
    or NoSuchProcess when there is no empty answer (a question about a pid)."""
    if (pong := ping(paths.control_endpoint)) is not None:
        return control(paths, request, pong)
    store = readonly_store(paths)
    if store is None:
        if empty is None:
            raise NoSuchProcess(f"no process {request.get('pid')}: nothing has run in "
                                f"{paths.home}")
        return empty
    try:
        reply = offline(store)
    finally:
        store.close()
    note(f"no supervisor is running in {paths.home}: read from its store")
    return reply


def positive_id(text: str) -> int:
    """An argparse type for approval ids and pids: a positive integer (else exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    if value > INT64_MAX:  # past what the store can look up
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (at most {INT64_MAX})")
    return value
