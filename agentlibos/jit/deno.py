"""Finding Deno and deciding how it runs. Nothing is downloaded: the binary comes from the
PyPI package ``deno`` (pinned in pyproject.toml), installed beside this package.

Every Deno process -- a tool runner or a type check -- runs with these flags and no
``--allow-*`` at all:

* ``--no-prompt``   a missing permission is an error, never a question;
* ``--no-remote``   no http(s) imports;
* ``--no-npm``      no ``npm:`` specifiers (which would fetch from the registry);
* ``--cached-only`` nothing may be fetched into the cache either;
* ``--no-config``   no deno.json/package.json discovered next to the tool (a type check
  names ours instead, ``check.json``: TypeScript's defaults, not ``strict``, so a tool
  written as DESIGN shows it -- ``async function (args, libos)``, ``let err = null``
  assigned later, ``catch (e) { e.message }`` -- passes, and real type errors fail).

Local modules are another matter: Deno loads statically analysable imports (including a
literal ``import("/etc/passwd")``, and JSON imports) while building the module graph,
without asking for read permission. That is closed by the OS sandbox, not by Deno: the
process's mount tree holds only the Deno binary and its libraries, the runner and the
tool's own directory, and Landlock allows reading nothing else.

``image add`` type-checks an image's tools on the host, as the operator, with no
supervisor to sandbox it (:func:`check_on_host`). The same holes are closed the same
way, with less: a short-lived helper (this module run as ``__main__``) applies Landlock
-- read the Deno binary and its libraries, the contract types and the tool's own
directory (what it sees when it runs); write a
fresh temporary directory; no TCP -- and execs ``deno check`` with no permissions, no
remote or npm modules, no config, no lock file, nothing fetched into the cache, and an
environment of its own. Without Landlock the check is refused, never run unconfined:
otherwise a tool's ``import "/etc/shadow"`` would show the file in the compiler's
message to whoever registered it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from agentlibos.errors import LibOSError, Unavailable

JIT_DIR: Final = Path(__file__).resolve().parent
# JavaScript (JSDoc-typed), so every cold start is spared transpiling it.
RUNNER: Final = JIT_DIR / "runner.js"
TYPES: Final = JIT_DIR / "libos.d.ts"
# A pooled worker's entry (docs/jit.md, "The pool"): the runner, waiting for its tool.
POOL_ENTRY: Final = JIT_DIR / "pool.js"

FLAGS: Final = ("--no-prompt", "--no-remote", "--no-npm", "--cached-only", "--no-config")
# Strict TypeScript, except that parameters left untyped are `any` (not an error): the
# contract's form is `export default async function (args, libos)`. Our config file,
# never one found next to the tool; "lock": false, so nothing is written beside it.
CHECK_CONFIG: Final = JIT_DIR / "check.json"
CHECK_FLAGS: Final = ("--no-remote", "--no-npm", "--config", str(CHECK_CONFIG), "--quiet")
# On the host (image add) also: no lock file written into the image, no remote import
# allowed even by a flag added later, and nothing fetched into the cache.
HOST_CHECK_FLAGS: Final = (*CHECK_FLAGS, "--no-lock", "--deny-import", "--cached-only")
HOST_CHECK_TIMEOUT_S: Final = 120.0


def deno_binary() -> str:
    """The Deno binary of the installed ``deno`` package; Unavailable if there is none."""
    env = os.environ.get("AGENTLIBOS_DENO")
    if env:
        return env
    try:
        from deno._find_deno import find_deno_bin  # noqa: PLC0415 - optional at import

        return str(Path(find_deno_bin()).resolve())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("deno")
    if found:
        return str(Path(found).resolve())
    raise Unavailable("Deno is not installed: pip install the pinned 'deno' package "
                      "(it ships the binary)")


@cache
def deno_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                         check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.strip() or f"unknown ({out.stderr.strip()[:100]})"


@dataclass(frozen=True)
class DenoView:
    """What a Deno process must be able to see: the binary, its loader and libraries."""

    exe: str
    files: tuple[str, ...]  # bound read-only at these paths (symlink-free parents)
    symlinks: tuple[tuple[str, str], ...]  # top-level links such as /lib64 -> usr/lib64


_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def _loader_paths(binary: str) -> list[str]:
    """The dynamic loader and shared libraries ``binary`` needs, from ldd (run here, in
    the trusted supervisor, on the binary of a package it installed)."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [m.group(1) for m in _LDD_LINE.finditer(out.stdout)]


def _bind_path(path: str) -> str:
    """The path to mount ``path`` at: its directory without symlinks, its own name kept
    (so a loader named /lib64/ld-linux-x86-64.so.2 is found through the /lib64 link)."""
    d, name = os.path.split(path)
    return os.path.join(os.path.realpath(d), name)


@cache
def deno_view(binary: str) -> DenoView:
    exe = str(Path(binary).resolve())
    files = [exe]
    libs = _loader_paths(exe)
    if not libs:
        # No ldd: fall back to the library directories themselves.
        libs = [p for p in ("/usr/lib", "/lib64", "/usr/lib64") if os.path.isdir(p)]
    files += [_bind_path(p) for p in libs]
    if os.path.exists("/etc/ld.so.cache"):
        files.append("/etc/ld.so.cache")
    links = tuple((top, os.readlink(top)) for top in ("/lib", "/lib64", "/bin")
                  if os.path.islink(top))
    return DenoView(exe=exe, files=tuple(dict.fromkeys(files)), symlinks=links)


def entry_source(tool_path: str) -> str:
    """The module Deno runs for a tool: static imports, so neither needs read permission."""
    return (
        f'import tool from "{Path(tool_path).as_uri()}";\n'
        f'import {{ serve }} from "{RUNNER.as_uri()}";\n'
        "await serve(tool);\n"
    )


def check_source(tool_path: str) -> str:
    """The module `deno check` type-checks: the tool against the contract."""
    return (
        f'/// <reference path="{TYPES.as_uri()}" />\n'
        f'import tool from "{Path(tool_path).as_uri()}";\n'
        "// The contract: the default export is (args, libos) => a JSON value (or a promise).\n"
        "const _contract: (args: any, libos: Libos) => unknown = tool;\n"
    )


def run_argv(exe: str, entry: str, *, heap_mb: int) -> list[str]:
    return [exe, "run", *FLAGS, f"--v8-flags=--max-old-space-size={heap_mb}", entry]


def pool_argv(exe: str, *, heap_mb: int) -> list[str]:
    """A pooled worker: the same flags, no tool named (it arrives on stdin)."""
    return run_argv(exe, str(POOL_ENTRY), heap_mb=heap_mb)


def check_argv(exe: str, entry: str) -> list[str]:
    return [exe, "check", *CHECK_FLAGS, entry]


def host_check_argv(exe: str, entry: str) -> list[str]:
    return [exe, "check", *HOST_CHECK_FLAGS, entry]


_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_output(text: str, limit: int = 8000) -> str:
    """Compiler output for a human: no colour codes, bounded."""
    text = _ANSI.sub("", text).strip()
    return text if len(text) <= limit else text[:limit] + "\n..."


def check_on_host(tool_path: str | Path, *,
                  timeout_s: float = HOST_CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """Type-check the tool at ``tool_path`` against the contract, as the supervisor's
    ``JitManager.check`` does, but here, confined by Landlock (see the module's
    docstring). It sees what the tool sees when it runs: its own directory, not the rest
    of the image, so a tool that passes here loads there. Returns (passed, the compiler's
    output). Raises Unavailable when Deno is missing or the check cannot be confined."""
    exe = deno_binary()
    view = deno_view(exe)
    with tempfile.TemporaryDirectory(prefix="alos-check-") as tmp:
        entry = Path(tmp) / "check.ts"
        entry.write_text(check_source(str(tool_path)), encoding="utf-8")
        rules = {"read_only": [*view.files, str(JIT_DIR),
                              str(Path(tool_path).resolve().parent)],
                 "read_write": [tmp]}
        env = {"HOME": tmp, "DENO_DIR": str(Path(tmp) / "deno"), "TMPDIR": tmp,
               "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1",
               "PATH": "/usr/bin:/bin"}
        argv = [sys.executable, "-I", "-m", __name__, json.dumps(rules),
                *host_check_argv(view.exe, str(entry))]
        try:
            out = subprocess.run(argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return False, f"`deno check` did not finish within {timeout_s:g} s"
    text = clean_output(out.stdout.decode("utf-8", errors="replace"))
    if out.returncode == CONFINE_FAILED:
        raise Unavailable(f"cannot type-check {tool_path} safely: {text}")
    if out.returncode == 0:
        return True, text
    return False, text or f"`deno check` exited with status {out.returncode}"


CONFINE_FAILED: Final = 125  # the helper could not apply Landlock; deno never ran


def _confine_and_exec(rules_json: str, argv: list[str]) -> None:
    """The helper: Landlock first, then exec ``argv``; on any failure exit 125."""
    from agentlibos.sandbox import landlock  # noqa: PLC0415 - only the helper needs it

    try:
        rules = json.loads(rules_json)
        landlock.apply(landlock.LandlockRules(read_only=tuple(rules["read_only"]),
                                              read_write=tuple(rules["read_write"])))
    except (LibOSError, ValueError, KeyError) as e:
        print(f"Landlock could not be applied: {e}", flush=True)
        sys.exit(CONFINE_FAILED)
    os.execve(argv[0], argv, os.environ)  # noqa: S606 - argv only, no shell: deno check


def describe() -> str:
    try:
        b = deno_binary()
    except Unavailable as e:
        return e.message
    return f"{deno_version(b)} at {b}"


if __name__ == "__main__":
    _confine_and_exec(sys.argv[1], sys.argv[2:])
