"""``open_store(url)``: the one way callers get a :class:`~agentlibos.store.base.Store`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from agentlibos.errors import InvalidArgument, UnsupportedStore
from agentlibos.store.base import Store
from agentlibos.store.sqlite import SQLiteStore

_FORMS = "a file path, or sqlite:///absolute/path"


def open_store(url: str | Path, *, readonly: bool = False) -> Store:
    """Open the store ``url`` names: a path or ``sqlite:///abs/path`` (SQLite).

    ``postgresql://...`` is reserved for the multi-host store and refused as not yet
    supported (:class:`UnsupportedStore`); any other form is an :class:`InvalidArgument`.
    ``readonly`` opens without writing anything, migrations included (docs/store.md).
    """
    if isinstance(url, Path):
        return SQLiteStore(url, readonly=readonly)
    if not url.strip():
        raise InvalidArgument(f"empty store URL: expected {_FORMS}")
    if "://" not in url:
        return SQLiteStore(Path(url).expanduser(), readonly=readonly)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        raise UnsupportedStore(
            f"store {_redact(url)}: PostgreSQL stores are not supported yet; use {_FORMS}"
        )
    if scheme != "sqlite":
        raise InvalidArgument(f"store URL {_redact(url)}: unknown scheme {parts.scheme!r}; "
                              f"expected {_FORMS}")
    if parts.netloc or not parts.path.startswith("/"):
        # sqlite://rel/path would silently mean a host named "rel": refuse it.
        raise InvalidArgument(f"store URL {url!r} must name an absolute path after "
                              "sqlite:// (three slashes: sqlite:///abs/path)")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"store URL {url!r}: sqlite URLs take no options")
    return SQLiteStore(Path(unquote(parts.path)), readonly=readonly)


def _redact(url: str) -> str:
    """The URL without its password, for messages (PostgreSQL URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())
