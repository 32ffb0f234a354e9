"""Finding an image: a directory, a registered name, or a sibling of the spawner's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from agentlibos.errors import ImageError, NotFound
from agentlibos.kernel.image import NAME_RE, AgentImage, image_stamp, load_image
from agentlibos.store import Store

# Images kept loaded, by real path; the oldest goes first.
CACHE_MAX: Final = 256


class Images:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[tuple[object, ...], AgentImage]] = {}

    def load(self, path: str | Path) -> AgentImage:
        """load_image, kept while the image's fingerprint (kernel/image.image_stamp) is
        unchanged: parsing and checking an image is most of a spawn's lookup (~0.5 ms
        of a ~7 ms pooled spawn), its fingerprint a few lstat calls. Any change to a
        file or directory load_image looks at -- contents, mode, owner, a rename --
        loads it again, with the same errors."""
        try:
            stamp = image_stamp(path)
        except OSError:
            stamp = None  # load_image says what is wrong
        key = os.path.realpath(path)
        hit = self._cache.get(key)
        if stamp is not None and hit is not None and hit[0] == stamp:
            return hit[1]
        image = load_image(path)
        if stamp is not None:
            self._cache.pop(key, None)
            if len(self._cache) >= CACHE_MAX:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (stamp, image)
        return image

    def resolve(self, ref: str, near: AgentImage | None = None) -> AgentImage:
        """An image by directory path, registered name, or sibling of ``near``'s directory."""
        if "/" in ref or ref.startswith("."):
            return self.load(ref)
        if not NAME_RE.match(ref):
            raise ImageError(f"{ref!r} is neither an image directory nor a valid image name")
        reg = self._store.get_image(ref)
        if reg is not None:
            return self.load(reg.path)
        if near is not None and near.name == ref:
            return self.load(near.path)  # a process may spawn copies of its own image
        if near is not None:
            sibling = near.path.parent / ref
            if (sibling / "image.toml").is_file():
                img = self.load(sibling)
                if img.name != ref:
                    raise ImageError(
                        f"directory {str(sibling)!r} holds image {img.name!r}, not {ref!r}"
                    )
                return img
        raise NotFound(f"no image named {ref!r}: not registered (agentlibos image add DIR)"
                       + (f" and not a sibling of {near.path}" if near else ""))
