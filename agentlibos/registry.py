"""Registering images by name: a validated, immutable copy under ``$AGENTLIBOS_HOME/images``.

A registered image is copied, not referenced, so that later edits to the source
directory (by its author, or by an agent with write access to it) cannot change what
runs under that name; re-registering replaces it atomically.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Final

from agentlibos.errors import ImageError, LimitExceeded
from agentlibos.kernel.image import AgentImage, load_image
from agentlibos.store import ImageRecord, Store

MAX_IMAGE_BYTES: Final = 64 << 20
MAX_IMAGE_FILES: Final = 10_000
_SKIP: Final = frozenset({"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache"})


def _check_tree(root: Path) -> None:
    total = files = 0
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP]
        for n in dirs + names:
            p = Path(top) / n
            if p.is_symlink():
                raise ImageError(
                    f"{p}: images may not contain symbolic links (a link could point "
                    "outside the image once it is copied)"
                )
        for n in names:
            files += 1
            total += (Path(top) / n).stat().st_size
        if files > MAX_IMAGE_FILES or total > MAX_IMAGE_BYTES:
            raise LimitExceeded(
                f"image {root} is larger than {MAX_IMAGE_FILES} files or "
                f"{MAX_IMAGE_BYTES >> 20} MiB"
            )


def register_image(store: Store, images_dir: Path, source: str | Path,
                   *, by_pid: int | None = None) -> tuple[ImageRecord, AgentImage]:
    """Validate ``source``, copy it into ``images_dir/<name>``, record it, audit it."""
    image = load_image(source)
    _check_tree(image.path)
    images_dir.mkdir(parents=True, exist_ok=True)
    final = images_dir / image.name
    if image.path == final.resolve():
        raise ImageError(f"{source} is already the registered copy of {image.name!r}")
    staging = images_dir / f".{image.name}.{os.getpid()}.{time.monotonic_ns()}"
    shutil.copytree(image.path, staging, symlinks=True,
                    ignore=shutil.ignore_patterns(*_SKIP))
    try:
        load_image(staging)  # the copy must be as valid as the original
        old = None
        if final.exists():
            old = images_dir / f".{image.name}.old.{time.monotonic_ns()}"
            final.rename(old)
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rec = ImageRecord(image.name, image.version, str(final), image.description, time.time())
    with store.transaction():
        store.put_image(rec)
        store.append_audit(by_pid, "image.add", f"image:register:{image.name}", "info",
                           {"source": str(image.path), "path": str(final),
                            "version": image.version})
    return rec, load_image(final)
