"""The ``agentlibos`` command line.

Every error the user can cause (a missing image, a malformed image.toml, a bad --arg,
an unknown capability kind) is a :class:`LibOSError`; :func:`main` prints it as one line
and exits non-zero. A traceback here is always a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final, NoReturn

from agentlibos import __version__
from agentlibos.config import Paths
from agentlibos.errors import (
    Conflict,
    InvalidArgument,
    LibOSError,
    NotFound,
    Unavailable,
    UsageError,
)
from agentlibos.kernel.image import load_image
from agentlibos.kernel.policy import Policy, load_policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.store import SQLiteStore
from agentlibos.kernel.units import format_duration, format_size

EXIT_OK: Final = 0
EXIT_AGENT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_ARG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _err(msg: str) -> None:
    print(f"agentlibos: error: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------ helpers


def parse_args_kv(items: Sequence[str]) -> dict[str, Any]:
    """``--arg k=v`` pairs; a value that parses as JSON is used as JSON, else as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not _ARG_KEY.match(key):
            raise UsageError(f"bad --arg {item!r}: expected KEY=VALUE with KEY like 'n' or "
                           "'max_words'")
        if key in out:
            raise UsageError(f"--arg {key!r} given twice")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _paths(ns: argparse.Namespace) -> Paths:
    return Paths.from_env(ns.home)


def _readonly_store(paths: Paths) -> SQLiteStore | None:
    if not paths.db.exists():
        return None
    return SQLiteStore(paths.db, readonly=True)


def _supervisor_alive(paths: Paths) -> bool:
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


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- run


def _resolve_image_arg(ref: str) -> str:
    """A directory becomes an absolute path (validated now); a name stays a name."""
    p = Path(ref)
    if "/" in ref or ref.startswith(".") or p.is_dir():
        img = load_image(p)  # raises ImageError with the file and the problem
        return str(img.path)
    return ref


def run_image(
    paths: Paths,
    image: str,
    args: dict[str, Any],
    *,
    cwd: str | None = None,
    policy: Policy | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ProcessRecord | dict[str, Any]:
    """Run an image to completion, on the daemon if one is up, else on an embedded one."""
    from agentlibos.supervisor import Supervisor
    from agentlibos.supervisor.control import control_call, ping

    paths.ensure()
    deadline = time.monotonic() + 10
    while True:
        if ping(paths.control_endpoint) is not None:
            req: dict[str, Any] = {"op": "run", "image": image, "args": args, "cwd": cwd,
                                   "wait": True}
            if policy is not None:
                req["policy_text"], req["policy_source"] = policy.text, policy.source
            return dict(control_call(paths.control_endpoint, req, timeout_s=None)["record"])
        sup = Supervisor(paths, mode="embedded")
        try:
            sup.start()
        except Conflict:
            # Another supervisor holds the lock; it binds its control socket right after
            # taking the lock, so wait for it to answer.
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"another supervisor holds {paths.lock} but does not answer on "
                    f"{paths.control_endpoint}"
                ) from None
            time.sleep(0.05)
            continue
        break
    interrupted = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        sup.request_stop()

    try:
        with _signals(on_signal):
            pid = sup.submit_run(image, args, cwd=cwd, policy=policy)
            if on_start is not None:
                on_start(pid)
            # Serve until this tree is done and nobody else (a `run` that found us via
            # the control socket) still has a live process here.
            sup.run_until(lambda: not sup.live)
            if interrupted:
                for p in list(sup.live):
                    sup.terminate(p, "killed", "interrupted by the operator")
                sup.settle(timeout_s=sup.config.kill_grace_s + 5)
            return sup.store.get_process(pid)
    finally:
        sup.stop()
        if interrupted:
            raise KeyboardInterrupt


def _record_dict(rec: ProcessRecord | dict[str, Any]) -> dict[str, Any]:
    return rec.public() if isinstance(rec, ProcessRecord) else rec


def cmd_run(ns: argparse.Namespace) -> int:
    paths = _paths(ns)
    args = parse_args_kv(ns.arg or [])
    image = _resolve_image_arg(ns.image)
    policy = load_policy(ns.policy) if ns.policy else None
    cwd = None
    if ns.cwd is not None:
        cwd = os.path.realpath(ns.cwd)
        if not os.path.isdir(cwd):
            raise UsageError(f"--cwd {ns.cwd!r} is not a directory")
    rec = _record_dict(run_image(paths, image, args, cwd=cwd, policy=policy))
    if ns.json:
        print(json.dumps(rec))
    elif rec.get("exit_reason") == "returned":
        print(json.dumps(rec.get("result"), indent=2))
    if rec.get("exit_reason") != "returned":
        if not ns.json:
            _err(f"process {rec['pid']} {rec['state']} ({rec['exit_reason']}): "
                 f"{rec.get('error') or 'no details'}; log: {paths.logs / str(rec['pid'])}.log")
        return EXIT_AGENT_FAILED
    return EXIT_OK


# -------------------------------------------------------------------------- serve


def cmd_serve(ns: argparse.Namespace) -> int:
    from agentlibos.supervisor import Supervisor

    paths = _paths(ns)
    sup = Supervisor(paths, mode="daemon")
    sup.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.request_stop()

    try:
        with _signals(on_signal):
            print(f"agentlibos: supervisor {os.getpid()} serving {paths.home}", flush=True)
            while not sup.stop_requested:
                sup.step(1.0)
    finally:
        sup.stop()
    print("agentlibos: supervisor stopped", flush=True)
    return EXIT_OK


# ----------------------------------------------------------------------------- ps


def _limits_text(limits: dict[str, Any]) -> str:
    parts = []
    if limits.get("memory_max_bytes"):
        parts.append(f"mem={format_size(int(limits['memory_max_bytes']))}")
    if limits.get("pids_max"):
        parts.append(f"pids={limits['pids_max']}")
    if limits.get("cpu_max_cores"):
        parts.append(f"cpu={limits['cpu_max_cores']:g}")
    if limits.get("wall_limit_s"):
        parts.append(f"wall={format_duration(float(limits['wall_limit_s']))}")
    return ",".join(parts) or "-"


def _layers_text(rec: ProcessRecord) -> str:
    text = ",".join(rec.layers) or "none"
    if rec.missing_layers:
        text += " (missing: " + ",".join(rec.missing_layers) + ")"
    return text


def _tree_order(recs: list[ProcessRecord]) -> list[tuple[int, ProcessRecord]]:
    by_parent: dict[int | None, list[ProcessRecord]] = {}
    pids = {r.pid for r in recs}
    for r in recs:
        parent = r.ppid if r.ppid in pids else None
        by_parent.setdefault(parent, []).append(r)
    out: list[tuple[int, ProcessRecord]] = []

    def walk(parent: int | None, depth: int) -> None:
        for r in by_parent.get(parent, []):
            out.append((depth, r))
            walk(r.pid, depth + 1)

    walk(None, 0)
    return out


def format_ps(recs: list[ProcessRecord], *, tree: bool) -> str:
    rows = [("PID", "PPID", "IMAGE", "STATE", "REASON", "LIMITS", "LAYERS")]
    ordered = _tree_order(recs) if tree else [(0, r) for r in recs]
    for depth, r in ordered:
        image = ("  " * depth + ("└ " if depth else "")) + r.image
        rows.append((str(r.pid), "-" if r.ppid is None else str(r.ppid), image, r.state,
                     r.exit_reason or "-", _limits_text(r.limits), _layers_text(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def cmd_ps(ns: argparse.Namespace) -> int:
    paths = _paths(ns)
    store = _readonly_store(paths)
    recs = store.list_processes(live_only=not ns.all) if store else []
    stale = bool([r for r in recs if r.live]) and not _supervisor_alive(paths)
    if ns.json:
        print(json.dumps([r.table_row() for r in recs]))
    else:
        print(format_ps(recs, tree=ns.tree))
    if stale:
        print("agentlibos: note: no supervisor is running; the live-looking processes above "
              "were left by one that stopped and will be marked failed when one starts",
              file=sys.stderr)
    if store:
        store.close()
    return EXIT_OK


# --------------------------------------------------------------------------- kill


def cmd_kill(ns: argparse.Namespace) -> int:
    from agentlibos.supervisor.control import control_call, ping

    paths = _paths(ns)
    if ping(paths.control_endpoint) is None:
        store = _readonly_store(paths)
        if store is None:
            raise NotFound(f"no process {ns.pid}: nothing has run in {paths.home}")
        rec = store.get_process(ns.pid)
        raise Conflict(f"process {ns.pid} is not running (it is {rec.state}; no supervisor "
                       "is up)")
    control_call(paths.control_endpoint, {"op": "kill", "pid": ns.pid})
    print(f"agentlibos: process {ns.pid} and its descendants are being stopped")
    return EXIT_OK


# -------------------------------------------------------------------------- image


def cmd_image_add(ns: argparse.Namespace) -> int:
    from agentlibos.kernel.registry import register_image

    paths = _paths(ns)
    paths.ensure()
    store = SQLiteStore(paths.db)
    try:
        rec, img = register_image(store, paths.images, ns.dir)
    finally:
        store.close()
    print(f"registered {rec.name} {rec.version} ({len(img.tools)} tools, "
          f"{len(img.requested)} capabilities requested) at {rec.path}")
    return EXIT_OK


def cmd_image_ls(ns: argparse.Namespace) -> int:
    paths = _paths(ns)
    store = _readonly_store(paths)
    recs = store.list_images() if store else []
    if ns.json:
        print(json.dumps([r.__dict__ for r in recs]))
    else:
        rows = [("NAME", "VERSION", "DESCRIPTION", "PATH")]
        rows += [(r.name, r.version, r.description, r.path) for r in recs]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


# -------------------------------------------------------------------------- audit


def cmd_audit(ns: argparse.Namespace) -> int:
    paths = _paths(ns)
    store = _readonly_store(paths)
    if store is None:
        raise NotFound(f"no audit log: nothing has run in {paths.home}")
    try:
        if ns.verify:
            res = store.verify_audit()
            if ns.json:
                print(json.dumps(res.__dict__))
            elif res.ok:
                print(f"audit chain OK: {res.count} records verified")
            else:
                print(f"audit chain BROKEN at record {res.first_bad_seq}: {res.problem}")
            return EXIT_OK if res.ok else EXIT_AGENT_FAILED
        recs = store.audit_records(pid=ns.pid)
        if ns.limit is not None:
            recs = recs[-ns.limit:]
        if ns.json:
            print(json.dumps([r.public() for r in recs]))
            return EXIT_OK
        for r in recs:
            when = time.strftime("%H:%M:%S", time.localtime(r.ts)) + f".{int(r.ts % 1 * 1000):03d}"
            pid = "-" if r.pid is None else str(r.pid)
            why = r.detail.get("reason") or r.detail.get("exit_reason") or ""
            tool = f" [tool {r.detail['tool']}]" if r.detail.get("tool") else ""
            print(f"{r.seq:>6} {when} pid={pid:<4} {r.verdict:<5} {r.call:<12} "
                  f"{r.request}{tool}" + (f"  -- {why}" if why else ""))
        return EXIT_OK
    finally:
        store.close()


# --------------------------------------------------------------------------- demo


def cmd_demo(ns: argparse.Namespace) -> int:
    from agentlibos.demo import run_demo

    return run_demo(keep=ns.keep)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentlibos",
        description="Run LLM agents as sandboxed processes behind a capability broker.",
    )
    p.add_argument("--version", action="version", version=f"agentlibos {__version__}")
    p.add_argument("--home", help="state directory (default: $AGENTLIBOS_HOME or "
                                  "~/.local/state/agentlibos)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="start an AgentProcess and wait for it")
    r.add_argument("image", help="an image directory or a registered image name")
    r.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="an argument for the entry function (VALUE is JSON or text)")
    r.add_argument("--cwd", help="the process's libOS working directory "
                                 "(default: a fresh $AGENTLIBOS_HOME/work/<pid>)")
    r.add_argument("--policy", help="operator policy TOML (default: the built-in policy)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="run the supervisor and broker as a daemon")
    s.set_defaults(func=cmd_serve)

    ps = sub.add_parser("ps", help="the process table")
    ps.add_argument("--all", action="store_true", help="include processes that ended")
    ps.add_argument("--tree", action="store_true", help="indent children under parents")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_ps)

    k = sub.add_parser("kill", help="stop a process and its descendants")
    k.add_argument("pid", type=int)
    k.set_defaults(func=cmd_kill)

    im = sub.add_parser("image", help="register and list images")
    imsub = im.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    ia = imsub.add_parser("add", help="register the image in DIR under its name")
    ia.add_argument("dir")
    ia.set_defaults(func=cmd_image_add)
    il = imsub.add_parser("ls", help="list registered images")
    il.add_argument("--json", action="store_true")
    il.set_defaults(func=cmd_image_ls)

    a = sub.add_parser("audit", help="show or verify the audit log")
    a.add_argument("--pid", type=int, help="only records of this process")
    a.add_argument("--limit", type=int, help="only the last N records")
    a.add_argument("--verify", action="store_true", help="check the hash chain")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_audit)

    d = sub.add_parser("demo", help="a deterministic end-to-end demonstration")
    d.add_argument("--keep", action="store_true",
                   help="keep the demo's state directory instead of deleting it")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        code = int(ns.func(ns))
    except UsageError as e:
        _err(e.message)
        code = EXIT_USAGE
    except InvalidArgument as e:  # ImageError, PolicyError and bad input of every kind
        _err(e.message)
        code = EXIT_USAGE
    except LibOSError as e:
        _err(e.message)
        code = EXIT_AGENT_FAILED
    except KeyboardInterrupt:
        _err("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    sys.exit(code)
