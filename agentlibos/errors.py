"""Typed errors and their wire codes, in one place.

Every error the runtime can hand to an agent is a :class:`LibOSError` subclass with a
stable, errno-like ``code``. The broker is the only place that turns an exception into
a reply (:func:`to_wire`); the SDK is the only place that turns a reply back into an
exception (:func:`from_wire`), so an agent catches exactly the class the broker raised.

Each docstring says whose fault the error is, which decides whether retrying can help.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar, Final

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "ImageError",
    "InternalError",
    "InvalidArgument",
    "LibOSError",
    "LimitExceeded",
    "NoSuchProcess",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "ProtocolError",
    "SandboxError",
    "Timeout",
    "ToolError",
    "Unavailable",
    "UnknownSyscall",
    "UsageError",
    "from_oserror",
    "from_wire",
    "to_wire",
]


class LibOSError(Exception):
    """Base of every error the runtime raises on purpose."""

    code: ClassVar[str] = "EIO"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        # Structured context (the request, the missing capability...) that survives the
        # wire; must be JSON-serialisable.
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message


class PermissionDenied(LibOSError):
    """The caller lacks a capability, policy denies it, or a human refused. Caller's side."""

    code = "EPERM"


class AuthenticationFailed(PermissionDenied):
    """A message did not carry valid credentials for the process it claims to be.

    Either a bug in a hand-rolled client or an attempt to act as another process.
    """

    code = "EAUTH"


class NotFound(LibOSError):
    """The named file, object, image or process does not exist. Caller's side."""

    code = "ENOENT"


class NoSuchProcess(NotFound):
    """No process with that pid is visible to the caller."""

    code = "ESRCH"


class InvalidArgument(LibOSError):
    """The request is well-formed on the wire but its arguments are wrong. Caller's side."""

    code = "EINVAL"


class UnknownSyscall(InvalidArgument):
    """No syscall by that name exists in this broker's table."""

    code = "ENOSYS"


class ImageError(InvalidArgument):
    """An AgentImage (its ``image.toml`` or entry point) is malformed. The image author's side."""

    code = "EIMAGE"


class UsageError(InvalidArgument):
    """A mistake on the command line (a bad --arg, a missing directory). The user's side."""

    code = "EUSAGE"


class PolicyError(InvalidArgument):
    """An operator policy file or capability string cannot be parsed. The operator's side."""

    code = "EPOLICY"


class ProtocolError(LibOSError):
    """A frame was malformed, truncated, of the wrong version or too large. Client's side."""

    code = "EPROTO"


class LimitExceeded(LibOSError):
    """A size, count, time or resource limit was hit. Caller's side; retrying won't help."""

    code = "ELIMIT"


class Conflict(LibOSError):
    """The state changed under the caller (compare-and-set lost, already exists, busy)."""

    code = "ECONFLICT"


class Timeout(LibOSError):
    """The operation did not finish within its time limit."""

    code = "ETIMEDOUT"


class Unavailable(LibOSError):
    """A service the call needs (supervisor, human channel, Deno) is not reachable."""

    code = "EUNAVAIL"


class SandboxError(LibOSError):
    """An isolation layer the profile requires could not be applied. The host's side.

    The process is not started (fail closed); the message names the layer and the reason.
    """

    code = "ESANDBOX"


class ToolError(LibOSError):
    """A tool (builtin or JIT) raised, returned malformed output, or was killed."""

    code = "ETOOL"


class InternalError(LibOSError):
    """A bug in the runtime. Never the caller's fault; the details are in the audit log."""

    code = "EINTERNAL"


_ALL: Final[tuple[type[LibOSError], ...]] = (
    LibOSError,
    PermissionDenied,
    AuthenticationFailed,
    NotFound,
    NoSuchProcess,
    InvalidArgument,
    UnknownSyscall,
    ImageError,
    UsageError,
    PolicyError,
    ProtocolError,
    LimitExceeded,
    Conflict,
    Timeout,
    Unavailable,
    SandboxError,
    ToolError,
    InternalError,
)

# The wire carries both the class name (most specific) and the code (stable contract).
# A client that does not know the name still gets the right family from the code.
BY_NAME: Final[dict[str, type[LibOSError]]] = {cls.__name__: cls for cls in _ALL}
BY_CODE: Final[dict[str, type[LibOSError]]] = {cls.code: cls for cls in _ALL}


def to_wire(exc: LibOSError) -> dict[str, Any]:
    """Encode an error for a reply frame."""
    return {
        "type": type(exc).__name__,
        "code": exc.code,
        "message": exc.message,
        "details": exc.details,
    }


def from_wire(data: object) -> LibOSError:
    """Rebuild the typed exception the broker raised; never raises itself."""
    if not isinstance(data, dict):
        return ProtocolError(f"malformed error payload: {data!r:.200}")
    name = data.get("type")
    code = data.get("code")
    message = data.get("message")
    details = data.get("details")
    cls = BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(code, str):
        cls = BY_CODE.get(code)
    if cls is None:
        cls = LibOSError
    exc = cls(message if isinstance(message, str) else f"{code}: (no message)")
    if isinstance(details, dict):
        exc.details = details
    return exc


def from_oserror(e: OSError, what: str) -> LibOSError:
    """Map a host OSError met while serving a syscall to the agent-facing error."""

    reason = e.strerror or str(e)
    table: dict[int, type[LibOSError]] = {
        errno.ENOENT: NotFound,
        errno.EACCES: PermissionDenied,
        errno.EPERM: PermissionDenied,
        errno.EROFS: PermissionDenied,
        errno.EEXIST: Conflict,
        errno.ENOTEMPTY: Conflict,
        errno.EBUSY: Conflict,
        errno.ENOTDIR: InvalidArgument,
        errno.EISDIR: InvalidArgument,
        errno.EINVAL: InvalidArgument,
        errno.ENAMETOOLONG: InvalidArgument,
        errno.ELOOP: PermissionDenied,
        errno.EFBIG: LimitExceeded,
        errno.ENOSPC: LimitExceeded,
        errno.EDQUOT: LimitExceeded,
        errno.EMFILE: LimitExceeded,
    }
    cls = table.get(e.errno or 0, LibOSError)
    return cls(f"{what}: {reason}", errno=errno.errorcode.get(e.errno or 0, str(e.errno)))


class UnsupportedStore(LibOSError):
    """This agentlibos cannot open that store. The operator's side; retrying won't help.

    Either the database was written by a newer agentlibos (its schema version is above
    the one this code knows: upgrade agentlibos), or the URL names a backend this build
    does not have yet (``postgresql://``). The message names both versions or the URL.
    """

    code = "ESTORE"


# Appended after the tables above were built: register it so it survives the wire.
__all__ += ["UnsupportedStore"]
BY_NAME[UnsupportedStore.__name__] = UnsupportedStore
BY_CODE[UnsupportedStore.code] = UnsupportedStore
