"""The shell provider: where an authorized ``shell.exec`` command actually runs.

By the time a provider sees a :class:`ShellRequest`, the broker has checked the argv,
resolved ``argv[0]`` and matched it against the caller's ``shell:exec`` capabilities,
and the shell service (``supervisor/shell.py``) has decided the command's view of the
user's files from the caller's ``fs`` capabilities and the policy (``read_only``,
``read_write``). The provider only performs it: the default one
(``supervisor/sandbox_shell.py``) in a sandbox of its own with exactly those mounts; a
test's recording shell in a list. Whatever it returns, the service caps the output,
audits the command and answers the agent -- so a provider changes where a command
lands, never whether it may run.

A provider is asynchronous, because the default one is served by the supervisor's
loop: :meth:`ShellProvider.start` returns at once and calls ``done`` exactly once, on
the loop thread, when the command has ended (it may call it before returning).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from agentlibos.errors import LibOSError

# Per stream, what the agent gets at most (DESIGN: 1 MiB, then truncated and said so).
MAX_OUTPUT: Final = 1 << 20


@dataclass(frozen=True)
class ShellRequest:
    """One authorized command, fully decided: a provider needs nothing else."""

    pid: int  # the calling AgentProcess
    argv: tuple[str, ...]
    exe: str  # argv[0] resolved on the sandbox's PATH, as the capability check saw it
    cwd: str  # where it runs: the caller's libOS cwd (a host path), or its private /tmp
    stdin: bytes
    timeout_s: float
    env: Mapping[str, str]  # complete: PATH, HOME, LANG and the call's own variables
    read_only: tuple[str, ...]  # host paths the command may read (and nothing else)
    read_write: tuple[str, ...]  # host paths it may also write
    run_as: tuple[int, int]  # uid, gid: the owner of the cwd
    # Why the command runs in its private /tmp rather than ``cwd`` (no bind holds the
    # cwd: the caller may not read it); empty when it runs in its cwd.
    unseen: str = ""


@dataclass(frozen=True)
class ShellResult:
    """How a command ended. ``stdout``/``stderr`` are what was kept (the service keeps
    at most :data:`MAX_OUTPUT` of each); the totals and digests cover everything the
    command wrote, when the provider knows more than it kept."""

    exit_code: int | None  # negative: killed by that signal; None: never ran
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    stdout_total: int | None = None  # None: len(stdout)
    stderr_total: int | None = None
    stdout_sha256: str | None = None  # None: the digest of stdout
    stderr_sha256: str | None = None
    # The command could not run or be confined: the agent's call fails with this.
    error: LibOSError | None = None
    # The provider's own facts for the audit record (isolation layers, uid, limits hit).
    detail: Mapping[str, Any] = field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        return (len(self.stdout) if self.stdout_total is None else self.stdout_total,
                len(self.stderr) if self.stderr_total is None else self.stderr_total)

    def digests(self) -> tuple[str, str]:
        return (self.stdout_sha256 or hashlib.sha256(self.stdout).hexdigest(),
                self.stderr_sha256 or hashlib.sha256(self.stderr).hexdigest())


ShellDone = Callable[[ShellResult], None]


class ShellProvider(Protocol):
    """Performs authorized commands (``Providers(shell=...)``)."""

    def start(self, request: ShellRequest, done: ShellDone) -> None:
        """Begin the command; ``done(result)`` once it has ended, on the loop thread.
        Raises a typed error (``Unavailable``...) if it cannot begin at all."""
        ...

    def end_process(self, pid: int) -> None:
        """Process ``pid`` ended: stop its commands (their ``done`` still follows)."""
        ...


__all__ = ["MAX_OUTPUT", "ShellDone", "ShellProvider", "ShellRequest", "ShellResult"]
