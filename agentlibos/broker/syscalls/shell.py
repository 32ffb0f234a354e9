"""``shell.exec``: run a program for the agent, in a sandbox of its own.

argv only -- a list of strings, never a shell string (``sh -c`` needs ``shell:exec:sh``).
The program is named by ``argv[0]``, which must be allowed by a ``shell:exec:<glob>``
capability twice: as given, and as resolved on the sandbox's PATH. A capability for
``git`` allows ``git`` (found as ``/usr/bin/git``), not ``/tmp/x/git``. The checks here
are pure; running it is the shell service's (``supervisor/shell.py``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Final, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument, PermissionDenied
from agentlibos.kernel.caps import CapPattern
from agentlibos.kernel.policy import Request

# The sandbox's PATH: every directory in it is a read-only system directory, so what a
# bare name resolves to is the same in the supervisor and inside the command's tree.
SHELL_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
MAX_ARGV: Final = 4096
MAX_ARGV_BYTES: Final = 1 << 20
MAX_TIMEOUT_S: Final = 3600.0
MAX_STDIN: Final = 16 << 20
# Variables the call may not set: PATH is what argv[0] was checked against; the
# loader's variables would run other code inside the authorised program.
_FIXED_ENV: Final = ("PATH",)
_FIXED_ENV_PREFIXES: Final = ("LD_",)


class ShellService(Protocol):
    def resolve(self, argv0: str, cwd: str) -> str: ...
    def run(self, caller: Caller, argv: list[str], exe: str, stdin: bytes | None,
            timeout_s: float, env: dict[str, str]) -> Result: ...


class ShellServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def shell(self) -> ShellService: ...


def check_argv(argv: object) -> list[str]:
    """A non-empty list of strings without NUL; InvalidArgument otherwise."""
    if not isinstance(argv, list) or not argv:
        raise InvalidArgument("shell.exec: argv must be a non-empty list of strings "
                              "(no shell string: use ['sh', '-c', ...] with shell:exec:sh)")
    if len(argv) > MAX_ARGV:
        raise InvalidArgument(f"shell.exec: argv has more than {MAX_ARGV} arguments")
    size = 0
    for i, a in enumerate(argv):
        if not isinstance(a, str):
            raise InvalidArgument(f"shell.exec: argv[{i}] must be a string, got "
                                  f"{type(a).__name__}")
        if "\x00" in a:
            raise InvalidArgument(f"shell.exec: argv[{i}] contains a NUL byte")
        size += len(a.encode("utf-8", "surrogateescape")) + 1
    if not argv[0]:
        raise InvalidArgument("shell.exec: argv[0] is empty")
    if size > MAX_ARGV_BYTES:
        raise InvalidArgument(f"shell.exec: argv is larger than {MAX_ARGV_BYTES} bytes")
    return list(argv)


def check_timeout(timeout: object) -> float:
    """A positive finite number of seconds, at most an hour."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument("shell.exec: timeout must be a number of seconds")
    t = float(timeout)
    if not math.isfinite(t) or t <= 0 or t > MAX_TIMEOUT_S:
        raise InvalidArgument(f"shell.exec: timeout must be a positive finite number of "
                              f"seconds, at most {MAX_TIMEOUT_S:g}; got {timeout!r}")
    return t


def check_env(env: object) -> dict[str, str]:
    """Extra variables: names and values are strings, no NUL, no '=' in a name, not
    PATH or LD_*."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidArgument("shell.exec: env must be an object of strings")
    out: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument("shell.exec: env names and values must be strings")
        if not k or "=" in k or "\x00" in k or "\x00" in v:
            raise InvalidArgument(f"shell.exec: env name {k[:64]!r} or its value is not "
                                  "a valid environment entry")
        if k in _FIXED_ENV or k.startswith(_FIXED_ENV_PREFIXES):
            raise InvalidArgument(f"shell.exec: env may not set {k} (the program was "
                                  f"checked against the sandbox's PATH={SHELL_PATH})")
        out[k] = v
    return out


def program_allowed(cap: CapPattern, given: str, resolved: str,
                    path: str = SHELL_PATH) -> bool:
    """Does ``shell:exec`` capability ``cap`` allow the program, both as ``given`` and
    as ``resolved``? Pure.

    A glob without ``/`` (``git``, ``python3*``) names programs on the sandbox's PATH:
    the resolved path matches when it is in a PATH directory and its name matches. A
    glob with ``/`` (or ``*``) is matched against the resolved path as it is.
    """
    if not cap.allows("shell", "exec", given):
        return False
    if cap.allows("shell", "exec", resolved):
        return True
    if "/" in cap.resource:
        return False
    folder, name = os.path.split(resolved)
    return folder in path.split(":") and cap.allows("shell", "exec", name)


def program_names(given: str, resolved: str, real: str, path: str = SHELL_PATH
                  ) -> tuple[str, ...]:
    """Every name of the program policy rules must see, besides ``given``: its resolved
    path, that path with symlinks resolved (``/bin`` is a link to ``/usr/bin`` on most
    hosts, ``python3`` to ``python3.11``), and the bare name of each that lies in a PATH
    directory -- so a rule that denies or asks for ``rm`` also covers ``/usr/bin/rm``,
    ``/bin/rm`` and ``//usr/bin/../bin/rm``, as capabilities already read it. Pure."""
    names = [resolved, real]
    for p in (resolved, real):
        folder, name = os.path.split(p)
        if folder in path.split(":"):
            names.append(name)
    return tuple(dict.fromkeys(n for n in names if n != given))


@syscall("shell.exec", argv=Param(list, max_len=MAX_ARGV),
         stdin=Param(str, required=False, max_len=MAX_STDIN),
         timeout=Param(float, required=False, default=60.0),
         env=Param(dict, required=False, max_len=256))
def shell_exec(svc: ShellServices, caller: Caller, args: dict[str, Any],
               blobs: list[bytes]) -> Result:
    """Run ``argv`` in a sandbox of its own (needs shell:exec:<argv[0]>); returns
    exit_code, stdout, stderr, truncated, timed_out."""
    argv = check_argv(args["argv"])
    timeout = check_timeout(args["timeout"])
    env = check_env(args["env"])
    stdin = args["stdin"]
    exe = svc.shell.resolve(argv[0], caller.cwd)
    request = Request("shell", "exec", argv[0],
                      aliases=program_names(argv[0], exe, os.path.realpath(exe)))
    svc.authz.authorize(caller, "shell.exec", request)
    held = [*caller.caps, *caller.approved]
    if not any(program_allowed(c, argv[0], exe) for c in held if c.kind == "shell"):
        why = (f"shell.exec: {argv[0]!r} resolves to {exe!r}, which no shell:exec "
               f"capability this process holds allows")
        svc.authz.audit(caller, "shell.exec", f"shell:exec:{exe}", "deny", {"reason": why})
        raise PermissionDenied(why, request=f"shell:exec:{exe}")
    return svc.shell.run(caller, argv, exe, None if stdin is None else stdin.encode(),
                         timeout, env)
