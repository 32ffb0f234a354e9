"""``image.*``: register an image directory from the caller's cwd, at run time.

Registering grants nothing: the image's ``[capabilities] request`` stays a ceiling,
and spawning it still needs ``proc:spawn:<name>`` and attenuates. What is checked here,
in order, before any byte is copied: the path (resolved against the caller's cwd like
any fs path, and lying under that cwd), ``fs:read`` on it, that it is an image, the name
(the image's own, or ``name=``), ``image:register:<name>``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import ImageError, PermissionDenied
from agentlibos.kernel.image import NAME_RE, AgentImage
from agentlibos.kernel.policy import Request
from agentlibos.providers.fs import MAX_PATH, LocalFs


class ImageRegistry(Protocol):
    def inspect(self, real: str) -> AgentImage: ...
    def register(self, caller: Caller, image: AgentImage, name: str) -> Result: ...


class ImageServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def fs(self) -> LocalFs: ...
    @property
    def images(self) -> ImageRegistry: ...


def under(real: str, root: str) -> bool:
    """Whether the real path ``real`` is ``root`` or lies below it."""
    root = root.rstrip("/") or "/"
    return real == root or real.startswith(root if root == "/" else root + "/")


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
    image = svc.images.inspect(r.real)
    name = args["name"] if args["name"] is not None else image.name
    svc.authz.authorize(caller, "image.register", Request("image", "register", name))
    return svc.images.register(caller, image, name)
