"""The ``agentlibos`` command line.

Every error the user can cause (a missing image, a malformed image.toml, a bad --arg,
an unknown capability kind) is a :class:`LibOSError`; :func:`main` prints it as one line
and exits non-zero. A traceback here is always a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final, NoReturn

from agentlibos import __version__
from agentlibos.config import Paths
from agentlibos.demo import run_demo
from agentlibos.errors import (
    Conflict,
    InvalidArgument,
    LibOSError,
    NotFound,
    UsageError,
)
from agentlibos.kernel.policy import load_policy
from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.registry import register_image
from agentlibos.launcher import resolve_image_arg, run_image, signals
from agentlibos.sandbox import doctor
from agentlibos.sandbox.profile import SandboxConfig, load_config
from agentlibos.store.sqlite import SQLiteStore
from agentlibos.supervisor import Supervisor
from agentlibos.supervisor.control import control_call, ping
from agentlibos.ui import format_ps

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


# ---------------------------------------------------------------------------- run


def _record_dict(rec: ProcessRecord | dict[str, Any]) -> dict[str, Any]:
    return rec.public() if isinstance(rec, ProcessRecord) else rec


def cmd_run(ns: argparse.Namespace) -> int:
    paths = _paths(ns)
    args = parse_args_kv(ns.arg or [])
    image = resolve_image_arg(ns.image)
    policy = load_policy(ns.policy) if ns.policy else None
    cwd = None
    if ns.cwd is not None:
        cwd = os.path.realpath(ns.cwd)
        if not os.path.isdir(cwd):
            raise UsageError(f"--cwd {ns.cwd!r} is not a directory")
    rec = _record_dict(run_image(paths, image, args, cwd=cwd, policy=policy,
                                 sandbox=_sandbox_config(ns)))
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
    paths = _paths(ns)
    sup = Supervisor(paths, mode="daemon", sandbox=_sandbox_config(ns))
    sup.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.request_stop()

    try:
        with signals(on_signal):
            print(f"agentlibos: supervisor {os.getpid()} serving {paths.home}", flush=True)
            while not sup.stop_requested:
                sup.step(1.0)
    finally:
        sup.stop()
    print("agentlibos: supervisor stopped", flush=True)
    return EXIT_OK


# ----------------------------------------------------------------------------- ps


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


# ------------------------------------------------------------------------- doctor


def _sandbox_config(ns: argparse.Namespace) -> SandboxConfig | None:
    """--config if given; None lets the supervisor read $AGENTLIBOS_HOME/config.toml."""
    return load_config(ns.config) if ns.config else None


def cmd_doctor(ns: argparse.Namespace) -> int:
    config = _sandbox_config(ns)
    if config is None:
        cfg = _paths(ns).home / "config.toml"
        config = load_config(cfg if cfg.exists() else None)
    report = doctor.run(config)
    if ns.json:
        print(json.dumps(dataclasses.asdict(report) | {"ok": report.ok}))
    else:
        print(doctor.format_report(report))
    return EXIT_OK if report.ok else EXIT_AGENT_FAILED


# --------------------------------------------------------------------------- demo


def cmd_demo(ns: argparse.Namespace) -> int:
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
    p.add_argument("--config", help="operator config TOML: sandbox layers and limits "
                                    "(default: $AGENTLIBOS_HOME/config.toml if present)")
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

    dr = sub.add_parser("doctor", help="which isolation layers this host can enforce")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)

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
