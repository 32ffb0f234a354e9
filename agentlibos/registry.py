"""Registering images by name: a validated, immutable copy under ``$AGENTLIBOS_HOME/images``.

A registered image is copied, not referenced, so that later edits to the source
directory (by its author, or by an agent with write access to it) cannot change what
runs under that name; re-registering replaces it atomically.

What registering validates, in order, before anything is recorded (docs/images.md):
``image.toml`` and the files it names (:func:`load_image`), that the agent's uid can
read every file of the image, only regular files and directories (no symbolic links),
the size and depth limits, and that every JIT
tool in ``[tools]`` passes ``deno check`` -- the check ``ctx.jit.register`` makes, run
here on the copy, confined (``jit/deno.py``, :func:`check_on_host`).

This module does I/O (it copies, checks and removes directories), so it lives outside
the pure ``kernel``.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentlibos.errors import Conflict, ImageError, LimitExceeded, NotFound
from agentlibos.jit import deno
from agentlibos.kernel.image import (
    DEFAULT_AGENT_IDS,
    IGNORED_DIRS,
    NAME_RE,
    AgentImage,
    load_image,
)
from agentlibos.providers.fs import remove_tree, safe_open
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import ImageRecord, Store

MAX_IMAGE_BYTES: Final = 64 << 20
MAX_IMAGE_FILES: Final = 10_000
MAX_IMAGE_DEPTH: Final = 64
_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def agent_ids(config: SandboxConfig) -> tuple[int, int] | None:
    """The (uid, gid) agent code reads its image as under ``config``; None when it runs
    as the supervisor's own uid (no agent_uid, no mount namespace, or a user namespace
    that maps the supervisor). Mirrors the choice ``sandbox.profile`` makes."""
    if (config.agent_uid is None or config.layer_mode("namespaces") == "disabled"
            or config.user_namespace == "always"):
        return None
    gid = config.agent_gid if config.agent_gid is not None else config.agent_uid
    return (config.agent_uid, gid)


def _check_tree(root: Path) -> None:
    total = files = 0
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS]
        if dirs and len(Path(top).relative_to(root).parts) >= MAX_IMAGE_DEPTH:
            # Before os.walk recurses (it does, in 3.11): a 1,500-level chain would
            # otherwise end in RecursionError rather than in this refusal.
            raise LimitExceeded(f"image {root} nests directories deeper than "
                                f"{MAX_IMAGE_DEPTH} levels")
        for n in dirs + names:
            p = Path(top) / n
            if p.is_symlink():
                raise ImageError(
                    f"{p}: images may not contain symbolic links (a link could point "
                    "outside the image once it is copied)"
                )
        for n in names:
            st = (Path(top) / n).lstat()
            if not stat.S_ISREG(st.st_mode):
                # A FIFO would stop the copy (or the loop) waiting for a writer; a device
                # would copy what it yields. An image is code and data: regular files.
                raise ImageError(f"{Path(top) / n}: images may hold only regular files "
                                 "and directories")
            files += 1
            total += st.st_size
        if files > MAX_IMAGE_FILES or total > MAX_IMAGE_BYTES:
            raise _too_large(root, files, total)


def _too_large(root: Path, files: int, total: int) -> LimitExceeded:
    """Which of the two limits it passed, and by how much it was counted so far."""
    if files > MAX_IMAGE_FILES:
        return LimitExceeded(f"image {root} holds more than {MAX_IMAGE_FILES:,} files "
                             f"(the limit of an image)", limit=MAX_IMAGE_FILES)
    return LimitExceeded(f"image {root} is larger than {MAX_IMAGE_BYTES >> 20} MiB "
                         f"(the limit of an image; {total:,} bytes counted so far)",
                         limit=MAX_IMAGE_BYTES)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy the image ``src`` to the new directory ``dst`` without following any link.

    Threat: the source lies in a directory an agent may write (``image.register``
    copies from the caller's cwd, as root). ``shutil.copytree`` goes by path: a
    directory swapped for a symlink between its listing and its copy would be followed,
    and whatever it points at copied into an image the agent can then read. Here every
    entry is opened relative to its parent's descriptor with ``O_NOFOLLOW`` and checked
    on the open descriptor, so a swap makes the copy fail instead. The limits are
    counted on what is actually copied (a file that grows meanwhile is caught), and
    set-id bits are dropped: the copy is owned by the supervisor's user.
    """
    files = total = 0
    root = safe_open(str(src), _DIR)
    stack: list[tuple[int, Path, int]] = [(root, dst, 0)]
    try:
        os.mkdir(dst, 0o700)
        os.chmod(dst, stat.S_IMODE(os.fstat(root).st_mode) & 0o777)
        while stack:
            dfd, out, depth = stack.pop()
            try:
                names = sorted(os.listdir(dfd))
                for name in names:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        if name in IGNORED_DIRS:
                            continue
                        if depth + 1 >= MAX_IMAGE_DEPTH:
                            raise LimitExceeded(f"image {src} nests directories deeper "
                                                f"than {MAX_IMAGE_DEPTH} levels")
                        sub = os.open(name, _DIR, dir_fd=dfd)
                        stack.append((sub, out / name, depth + 1))
                        os.mkdir(out / name, 0o700)
                        os.chmod(out / name, stat.S_IMODE(os.fstat(sub).st_mode) & 0o777)
                        continue
                    fd = os.open(name, _FILE, dir_fd=dfd)
                    try:
                        fst = os.fstat(fd)
                        if not stat.S_ISREG(fst.st_mode):
                            raise ImageError(f"{src}: {name} is not a regular file; images "
                                             "may hold only regular files and directories")
                        files += 1
                        if files > MAX_IMAGE_FILES:
                            raise _too_large(src, files, total)
                        with open(out / name, "xb") as w:
                            while chunk := os.read(fd, 1 << 20):
                                total += len(chunk)
                                if total > MAX_IMAGE_BYTES:
                                    raise _too_large(src, files, total)
                                w.write(chunk)
                            os.fchmod(w.fileno(), stat.S_IMODE(fst.st_mode) & 0o777)
                    finally:
                        os.close(fd)
            finally:
                os.close(dfd)
    except BaseException:
        for dfd, _, _ in stack:
            os.close(dfd)
        raise


def check_tools(image: AgentImage, *, shown_as: Path | None = None) -> None:
    """Type-check every JIT tool of ``image`` as ``ctx.jit.register`` would; the first
    that fails raises ImageError with the compiler's output. ``shown_as``: the directory
    to name in messages when ``image`` is a staging copy of it."""
    shown = shown_as or image.path
    for tool in image.tools:
        if tool.kind != "jit":
            continue
        ok, output = deno.check_on_host(image.path / tool.ref)
        if not ok:
            output = output.replace(str(image.path), str(shown))
            raise ImageError(
                f"{shown / 'image.toml'}: tool {tool.name!r} ({tool.ref}) does not pass "
                f"`deno check`:\n{output}", tool=tool.name, path=str(shown / tool.ref),
                compiler=output)


@dataclass(frozen=True)
class Staged:
    """A validated copy of an image, beside its final place, not yet installed."""

    image: AgentImage  # the source, as loaded
    name: str          # the name it will be registered under
    staging: Path
    final: Path


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ImageError(f"{name!r} is not a valid image name (1-64 of a-z, 0-9, '.', "
                         "'_', '-', starting with a letter or digit)")
    return name


def stage_image(images_dir: Path, source: str | Path, *, name: str | None = None,
                ids: tuple[int, int] | None = DEFAULT_AGENT_IDS) -> Staged:
    """Validate ``source`` and copy it into a staging directory in ``images_dir``.

    It touches no store and no runtime state, so it may run off the supervisor's loop
    (``image.register``: a copy of 64 MiB and `deno check` must not stop other agents).
    The staged copy is removed again if any check fails.
    """
    image = load_image(source, agent_ids=ids)
    name = check_name(name if name is not None else image.name)
    _check_tree(image.path)
    images_dir.mkdir(parents=True, exist_ok=True)
    final = images_dir / name
    if image.path == final.resolve():
        raise ImageError(f"{source} is already the registered copy of {name!r}")
    staging = images_dir / f".{name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        _copy_tree(image.path, staging)
        # The copy must be as valid as the original, and it is the copy that will run:
        # checked again, so a link raced into the source after the first check is
        # refused here instead of being installed.
        _check_tree(staging)
        check_tools(load_image(staging, agent_ids=ids), shown_as=image.path)
    except BaseException:
        remove_tree(str(staging))
        raise
    return Staged(image, name, staging, final)


def install_image(store: Store, staged: Staged, *, by_pid: int | None = None,
                  call: str = "image.add", ids: tuple[int, int] | None = DEFAULT_AGENT_IDS,
                  ) -> tuple[ImageRecord, AgentImage]:
    """Move a staged copy into place (replacing an older one atomically), record it and
    audit it as ``call``. Runs where the store may be written (the loop, or the CLI)."""
    image, final, staging = staged.image, staged.final, staged.staging
    try:
        _refuse_in_use(store, staged.name, str(final), "replace")
        old = None
        if final.exists():
            old = final.parent / f".{staged.name}.old.{time.monotonic_ns()}"
            final.rename(old)
        staging.rename(final)
        if old is not None:
            remove_tree(str(old))
    except BaseException:
        remove_tree(str(staging))
        raise
    rec = ImageRecord(staged.name, image.version, str(final), image.description, time.time())
    with store.transaction():
        store.put_image(rec)
        store.append_audit(by_pid, call, f"image:register:{staged.name}", "info",
                           {"source": str(image.path), "path": str(final),
                            "version": image.version})
    return rec, load_image(final, agent_ids=ids)


def register_image(store: Store, images_dir: Path, source: str | Path, *,
                   by_pid: int | None = None,
                   ids: tuple[int, int] | None = DEFAULT_AGENT_IDS,
                   ) -> tuple[ImageRecord, AgentImage]:
    """Validate ``source``, copy it into ``images_dir/<name>``, record it, audit it.

    ``ids``: who the agent runs as (:func:`agent_ids`), who must be able to read it.
    Nothing is recorded and nothing replaced unless every check passes.
    """
    return install_image(store, stage_image(images_dir, source, ids=ids), by_pid=by_pid,
                         ids=ids)


def _refuse_in_use(store: Store, name: str, path: str, what: str) -> None:
    """Conflict while a live process (running, waiting, evicted) runs the registry's copy
    at ``path``: it would lose its code under it, or be resumed with other code (and
    diverge from its journal)."""
    users = [p.pid for p in store.list_processes(live_only=True) if p.image_path == path]
    if users:
        raise Conflict(f"image {name!r} is in use by process(es) "
                       f"{', '.join(map(str, users))}: cannot {what} it under them; stop "
                       f"them first (`agentlibos kill PID`) or register it under another "
                       f"name", pids=users)


def remove_image(store: Store, images_dir: Path, name: str, *,
                 by_pid: int | None = None) -> ImageRecord:
    """Forget the image registered as ``name`` and delete the registry's copy of it.

    NotFound (nothing changed) when no image has that name; Conflict (nothing changed)
    while a live process -- running, waiting, evicted -- runs this copy, as ``docker
    rmi`` refuses an image a container uses: it would lose its code under it, or on
    resume. The record goes first, in
    one transaction with its audit record: from then on nothing resolves the name, and
    the copy is renamed aside and removed. Only a directory inside ``images_dir`` is
    ever removed, whatever the record says.
    """
    check_name(name)
    with store.transaction():
        rec = store.get_image(name)
        if rec is None:
            raise NotFound(f"no image named {name!r} is registered (`agentlibos image ls`)")
        _refuse_in_use(store, name, rec.path, "remove")
        store.delete_image(name)
        store.append_audit(by_pid, "image.rm", f"image:register:{name}", "info",
                           {"path": rec.path, "version": rec.version})
    copy = Path(rec.path)
    if copy.parent.resolve() == images_dir.resolve() and copy.name == name:
        doomed = images_dir / f".{name}.rm.{time.monotonic_ns()}"
        try:
            copy.rename(doomed)
        except FileNotFoundError:
            return rec  # already gone: what was wanted
        remove_tree(str(doomed))
    return rec
