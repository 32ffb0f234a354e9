"""``image.*``: register an image directory from the caller's cwd, at run time.

Registering grants nothing: the image's ``[capabilities] request`` stays a ceiling,
and spawning it still needs ``proc:spawn:<name>`` and attenuates. What is checked here,
in order, before any byte is copied: the path (resolved against the caller's cwd like
any fs path, and lying under that cwd), ``fs:read`` on it, that it is an image, the name
(the image's own, or ``name=``), ``image:register:<name>``.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import ImageError, LibOSError, NotFound, PermissionDenied
from agentlibos.kernel.image import MAX_IMAGE_TOML_BYTES, NAME_RE
from agentlibos.kernel.policy import Request
from agentlibos.providers.base import FileProvider
from agentlibos.providers.fs import MAX_PATH


class ImageRegistry(Protocol):
    def register(self, caller: Caller, source: str, name: str) -> Result: ...


class ImageServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def fs(self) -> FileProvider: ...
    @property
    def images(self) -> ImageRegistry: ...


def under(real: str, root: str) -> bool:
    """Whether the real path ``real`` is ``root`` or lies below it."""
    root = root.rstrip("/") or "/"
    return real == root or real.startswith(root if root == "/" else root + "/")


def declared_name(fs: FileProvider, real: str) -> str:
    """The ``[image] name`` of the image directory ``real``: only what is needed to
    authorize, read on the loop through the fs provider (no link followed, and a FIFO
    planted as image.toml is refused instead of stopping the loop). Everything else
    ``image add`` validates runs off the loop, on what is copied."""
    toml = os.path.join(real, "image.toml")
    try:
        data = tomllib.loads(fs.read(toml, MAX_IMAGE_TOML_BYTES).decode("utf-8"))
    except NotFound:
        raise ImageError(f"{real!r} is not an image: it has no image.toml") from None
    except (LibOSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ImageError(f"{toml}: cannot read it as an image.toml: {e}") from None
    table = data.get("image")
    name = table.get("name") if isinstance(table, dict) else None
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ImageError(f"{toml}: [image] name must be 1-64 of a-z, 0-9, '.', '_', '-' "
                         "starting with a letter or digit")
    return name


@syscall("image.register", path=Param(str, max_len=MAX_PATH),
         name=Param(str, required=False, max_len=64))
def image_register(svc: ImageServices, caller: Caller, args: dict[str, Any],
                   blobs: list[bytes]) -> Result:
    """Copy the image directory ``path`` (under the cwd) into the registry as ``name``
    (default: its image.toml's). Needs fs:read on it and image:register:<name>."""
    if args["name"] is not None and not NAME_RE.match(args["name"]):
        raise ImageError(f"image.register: {args['name']!r} is not a valid image name (1-64 "
                         "of a-z, 0-9, '.', '_', '-', starting with a letter or digit)")
    r = svc.fs.resolve(caller.cwd, args["path"])
    # Only the caller's own tree: the cwd is what it was given to work on, and a
    # registered copy outlives the process (checked on real paths, so a symlink out of
    # the cwd does not pass).
    if not under(r.real, os.path.realpath(caller.cwd)):
        raise PermissionDenied(
            f"image.register: {args['path']!r} ({r.real}) is outside the process's working "
            f"directory {caller.cwd}; only a directory under it can be registered",
            path=r.real)
    svc.authz.authorize(caller, "image.register", Request("fs", "read", r.real))
    declared = declared_name(svc.fs, r.real)
    name = args["name"] if args["name"] is not None else declared
    svc.authz.authorize(caller, "image.register", Request("image", "register", name))
    return svc.images.register(caller, r.real, name)
