"""``agentlibos run IMAGE``: start an AgentProcess, wait for it, print its result."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from agentlibos.cli.asking import Notifier, Prompter
from agentlibos.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_command,
    config_policy,
    describe_end,
    err,
    log_path,
    note,
    parse_args_kv,
    paths_of,
    positive_id,
    print_json,
    readonly_store,
)
from agentlibos.cli.serve import ensure_daemon
from agentlibos.config import Paths, operator_config
from agentlibos.errors import Unavailable, UsageError
from agentlibos.kernel.policy import Policy, load_policy
from agentlibos.kernel.text import json_size
from agentlibos.launcher import (
    ASK_MODES,
    RunOutcome,
    resolve_image_arg,
    run_image,
    start_on_daemon,
)
from agentlibos.ui import json_text, printable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = add_command(sub, "run", help="start an AgentProcess and wait for it", func=cmd_run,
                    example="""
        agentlibos run ./my-image --arg topic=lighthouses --cwd ~/project
        agentlibos run my-image --json        # {"pid", "state", "exit_reason", "result"}
        pid=$(agentlibos run ./my-image --detach) && agentlibos wait "$pid"
        agentlibos run ./my-image --ask deny  # CI: every policy `ask` is refused at once
    """)
    r.add_argument("image", help="an image directory or a registered image name")
    r.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="an argument for the entry function (VALUE is JSON or text)")
    r.add_argument("--cwd", help="the process's libOS working directory "
                                 "(default: a fresh $AGENTLIBOS_HOME/work/<pid>)")
    r.add_argument("--policy", help="operator policy TOML (default: config.toml's [policy], "
                                    "else the built-in policy)")
    r.add_argument("--tokens", type=positive_id, metavar="N",
                   help="the model token budget of the whole process tree (over the "
                        "image's [limits] tokens)")
    r.add_argument("--detach", "-d", action="store_true",
                   help="print the pid and return; `agentlibos wait PID` waits. It runs "
                        "on the daemon, started first (and named on stderr) if none is up")
    r.add_argument("--ask", choices=ASK_MODES,
                   help="how a policy `ask` reaches a human: prompt on this terminal "
                        "(default when stdin and stderr are a terminal), queue for "
                        "`agentlibos approve`/`deny` (default otherwise), or deny at once")


def resolve_image(paths: Paths, ref: str) -> str:
    """A directory (validated) or a registered name; anything else is bad input (exit 2)."""
    if not ref:
        raise UsageError("the image '' names nothing: give a directory or a registered name")
    image = resolve_image_arg(ref)
    if image != ref or Path(image).is_absolute():
        return image
    store = readonly_store(paths)
    try:
        if store is not None and store.get_image(ref) is not None:
            return ref
    finally:
        if store is not None:
            store.close()
    raise UsageError(f"no image named {ref!r} is registered (`agentlibos image ls` lists "
                     f"them) and there is no directory {ref!r} here; give a path such as "
                     f"./{ref}")


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as `run --json` prints it."""
    public = {k: rec.get(k) for k in ("pid", "state", "exit_reason", "result")}
    if rec.get("error") is not None:
        public["error"] = rec["error"]
    return public


def held_up(pid: int, outcome: RunOutcome, *, as_json: bool) -> int | None:
    """EXIT_FAILED, said on stderr, when ``pid`` or what it waits for needs attention
    (an embedded supervisor stopped for the operator: Embedded.stuck); None otherwise."""
    stuck, attention = outcome.stuck, outcome.record.get("state") == "attention"
    if not attention and not stuck:
        return None
    if as_json:
        print_json(_public(outcome.record))
    if attention:
        err(f"process {pid} needs attention: a crash left an effect unsettled "
            f"(`agentlibos attention`); answer with `agentlibos resolve {pid} "
            "--retry|--skip|--fail`, then resume it again")
    else:
        err(f"process {pid} waits for {', '.join(map(str, stuck))}, which "
            f"need{'s' if len(stuck) == 1 else ''} attention: a crash left an effect "
            "unsettled (`agentlibos attention`); answer with `agentlibos resolve PID "
            "--retry|--skip|--fail`, then resume it again")
    return EXIT_FAILED


def report(paths: Paths, outcome: RunOutcome, *, as_json: bool) -> int:
    """Print what became of a process this command started or waited for; its exit status."""
    rec = outcome.record
    if as_json:
        print_json(_public(rec))
    elif outcome.returned:
        # The result as JSON, readable: its control and format characters escaped.
        print(json_text(rec.get("result"), indent=2), flush=True)
    log = log_path(paths, outcome.pid)
    if outcome.lost:
        err(f"{outcome.lost} while pid {outcome.pid} ran; its host processes died with it "
            f"(agents cannot outlive their supervisor). It is recorded as "
            f"{rec.get('state')}: the next `agentlibos serve` (or `agentlibos resume "
            f"{outcome.pid}`) resumes it from its journal, and `agentlibos wait "
            f"{outcome.pid}` then waits for its end; log: {log}")
        return EXIT_FAILED
    if outcome.interrupted:
        note(f"interrupted: {describe_end(rec)}; log: {log}")
        return EXIT_INTERRUPTED
    if outcome.returned:
        note(f"{describe_end(rec)}; output: {log}")
        return EXIT_OK
    err(f"{describe_end(rec)}; log: {log}")
    return EXIT_FAILED


def ask_mode(ns: argparse.Namespace) -> str:
    """--ask, or its default: prompt on a terminal, else queue (with --detach: queue)."""
    if ns.ask is not None:
        if ns.ask == "prompt" and ns.detach:
            raise UsageError("--ask prompt needs `run` to wait on this terminal; with "
                             "--detach use --ask queue (then `agentlibos approve`) or deny")
        return str(ns.ask)
    if not ns.detach and sys.stdin.isatty() and sys.stderr.isatty():
        return "prompt"
    return "queue"


def detach(paths: Paths, ns: argparse.Namespace, image: str, args: dict[str, Any], *,
           cwd: str | None, policy: Policy | None, ask: str) -> int:
    """Submit the run to the daemon, started first if none is up, and print its pid.

    Called only once every argument was checked: bad input must leave no daemon behind."""
    serving = ensure_daemon(paths)
    if serving.mode == "embedded":
        # Not handed to it: that supervisor ends with its own command's tree, and a run
        # given to it would hold that command open until this one ends too.
        raise UsageError(f"--detach needs a running daemon, and another command (pid "
                         f"{serving.pid}) serves {paths.home} now: a foreground "
                         f"`agentlibos run` serves only its own tree; once it has ended, "
                         f"`run --detach` starts a daemon (so does `agentlibos serve "
                         f"--detach`)")
    if serving.started:
        # A background process nobody asked for by name: say what it is and how to end it.
        note(f"started daemon {serving.pid} serving {paths.home} (log: {serving.log}; "
             f"stop it with kill {serving.pid})")
    started = start_on_daemon(paths, image, args, cwd=cwd, policy=policy, ask=ask,
                              tokens=ns.tokens, daemon_only=True)
    if started is None:
        raise Unavailable(f"the daemon (pid {serving.pid}) serving {paths.home} stopped "
                          f"before it took the run (log: {paths.logs / 'serve.log'})")
    pid = started[0]
    if ns.json:
        print_json({"pid": pid})
    else:
        print(pid, flush=True)
    return EXIT_OK


def check_args_size(paths: Paths, args: dict[str, Any]) -> None:
    """Refuse --arg values the supervisor would refuse, before a daemon is started."""
    limit = operator_config(paths).supervisor.max_args_bytes
    size = json_size(args)
    if size > limit:
        raise UsageError(f"the --arg values make {size} bytes of args, more than the "
                         f"{limit} the supervisor accepts ([supervisor] max_args in "
                         "config.toml)")


def cmd_run(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    args = parse_args_kv(ns.arg or [])
    image = resolve_image(paths, ns.image)
    policy = load_policy(ns.policy) if ns.policy else config_policy(ns)
    check_args_size(paths, args)
    cwd = None
    if ns.cwd is not None:
        if not ns.cwd:
            raise UsageError("--cwd '' names no directory")
        cwd = os.path.realpath(ns.cwd)
        if not os.path.isdir(cwd):
            raise UsageError(f"--cwd {ns.cwd!r} is not a directory")
    ask = ask_mode(ns)
    if ns.detach:
        return detach(paths, ns, image, args, cwd=cwd, policy=policy, ask=ask)

    prompters: list[Prompter] = []

    def on_start(pid: int) -> None:
        print(f"agentlibos: started pid {pid} (log: {printable(log_path(paths, pid))})",
              file=sys.stderr, flush=True)
        if ask in ("prompt", "queue"):
            prompter = (Prompter if ask == "prompt" else Notifier)(paths, pid)
            prompters.append(prompter)
            prompter.start()

    try:
        outcome = run_image(paths, image, args, cwd=cwd, policy=policy, on_start=on_start,
                            ask=ask, tokens=ns.tokens)
    finally:
        for prompter in prompters:
            prompter.stop()
    return held_up(outcome.pid, outcome, as_json=ns.json) or report(paths, outcome,
                                                                   as_json=ns.json)
