"""Finding an image: a directory, a registered name, or a sibling of the spawner's."""

from __future__ import annotations

from agentlibos.errors import ImageError, NotFound
from agentlibos.kernel.image import NAME_RE, AgentImage, load_image
from agentlibos.store import Store


class Images:
    def __init__(self, store: Store) -> None:
        self._store = store

    def resolve(self, ref: str, near: AgentImage | None = None) -> AgentImage:
        """An image by directory path, registered name, or sibling of ``near``'s directory."""
        if "/" in ref or ref.startswith("."):
            return load_image(ref)
        if not NAME_RE.match(ref):
            raise ImageError(f"{ref!r} is neither an image directory nor a valid image name")
        reg = self._store.get_image(ref)
        if reg is not None:
            return load_image(reg.path)
        if near is not None and near.name == ref:
            return load_image(near.path)  # a process may spawn copies of its own image
        if near is not None:
            sibling = near.path.parent / ref
            if (sibling / "image.toml").is_file():
                img = load_image(sibling)
                if img.name != ref:
                    raise ImageError(
                        f"directory {str(sibling)!r} holds image {img.name!r}, not {ref!r}"
                    )
                return img
        raise NotFound(f"no image named {ref!r}: not registered (agentlibos image add DIR)"
                       + (f" and not a sibling of {near.path}" if near else ""))
