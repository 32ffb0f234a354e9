"""Names a package exports but loads only when first used (PEP 562's module ``__getattr__``).

The CLI starts a fresh interpreter for every command; a package whose ``__init__``
imported everything it exports made a command that needs one small module pay for all
of them (the whole supervisor, every provider, ``ssl``). A package keeps its public
names, typed for mypy under ``TYPE_CHECKING``, and its ``__getattr__`` comes from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<where[name]>`` to find ``name``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
