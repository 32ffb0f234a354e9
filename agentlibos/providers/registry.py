"""Which provider each effect goes through, chosen by the operator's ``[providers]``.

Policy as data: each key of the table maps names to factories (:data:`REGISTRY`); a
value is a registered name, a name with an argument (``"fixed:1700000000"``), or an
embedder's own factory as an import path (``"package.module:factory"``, called with no
arguments, returning the provider). ``config.py`` parses the table with
:func:`parse_providers` (unknown keys and names are refused naming the file and the
key); the supervisor builds the bundle with :func:`build_providers` when it is not
handed one (an explicit ``Supervisor(..., providers=...)`` wins)::

    [providers]
    files = "local"      # "memory": an in-memory file system, for tests and embedding
    clock = "system"     # "fixed:<unix-seconds>": a clock that never moves
    shell = "sandbox"    # each command in a sandbox of its own
    http  = "httpx"      # net.fetch's client
    human = "queue"      # no channel beyond the durable queue (CLI, console, prompt)
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agentlibos.errors import PolicyError
from agentlibos.providers.base import FixedClock, Providers, SystemClock
from agentlibos.providers.fs import LocalFs
from agentlibos.providers.memory import MemoryFs
from agentlibos.providers.net import HttpxClient


@dataclass(frozen=True)
class Builtin:
    """A registered provider: ``make(arg)`` builds it (None: the supervisor's own)."""

    make: Callable[[str | None], object | None]
    arg: str | None = None  # what the argument after ':' is, if it takes one
    doc: str = ""


def _fixed(arg: str | None) -> FixedClock:
    try:
        at = float(arg or "")
    except ValueError:
        at = math.nan
    if not math.isfinite(at) or at < 0:
        raise ValueError(f"fixed:<unix-seconds> takes a number of seconds >= 0, not {arg!r}")
    return FixedClock(at)


REGISTRY: Final[dict[str, dict[str, Builtin]]] = {
    "files": {"local": Builtin(lambda _: LocalFs(), doc="the host's files, symlink-safe"),
              "memory": Builtin(lambda _: MemoryFs(), doc="a dict in memory (tests, "
                                "embedding): nothing reaches the disk")},
    "clock": {"system": Builtin(lambda _: SystemClock(), doc="the host's clock"),
              "fixed": Builtin(_fixed, arg="unix-seconds", doc="a clock that never moves")},
    "shell": {"sandbox": Builtin(lambda _: None, doc="each command in a sandbox of its own")},
    "http": {"httpx": Builtin(lambda _: HttpxClient(), doc="net.fetch over httpx")},
    "human": {"queue": Builtin(lambda _: None, doc="the durable queue only (CLI, console, "
                               "inline prompt)")},
}
# What an embedder's object must have for each key: checked when it is built, so a
# wrong factory fails the supervisor's start, not some agent's call days later.
_METHODS: Final[dict[str, tuple[str, ...]]] = {
    "files": ("resolve", "read", "write", "stat", "listdir", "mkdir", "walk", "delete"),
    "clock": ("time",),
    "shell": ("start", "end_process"),
    "http": ("send", "close"),
    "human": ("opened", "closed"),
}
DEFAULTS: Final = {"files": "local", "clock": "system", "shell": "sandbox", "http": "httpx",
                   "human": "queue"}
_IMPORT_PATH: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class ProviderChoices:
    """The ``[providers]`` table, checked: each key's value as written."""

    chosen: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    source: str | None = None  # the config file (None: the built-in defaults)

    def where(self, key: str) -> str:
        return f"{self.source or 'the built-in defaults'}: [providers] {key}"


def _builtin(key: str, value: str) -> tuple[Builtin, str | None] | None:
    """The registered provider ``value`` names for ``key`` and its argument, or None
    when ``value`` is an import path. PolicyError when it is neither."""
    name, sep, arg = value.partition(":")
    entry = REGISTRY[key].get(name)
    if entry is not None and (entry.arg is not None) == bool(sep):
        return entry, arg if sep else None
    if entry is None and _IMPORT_PATH.fullmatch(value):
        return None
    known = ", ".join(f'"{n}:<{b.arg}>"' if b.arg else f'"{n}"'
                      for n, b in REGISTRY[key].items())
    raise PolicyError(f"unknown {key} provider {value!r} (known: {known}, or an import "
                      "path \"package.module:factory\")")


def parse_providers(table: object, source: str) -> ProviderChoices:
    """The ``[providers]`` table of config.toml; errors name the file and the key."""
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [providers] must be a table")
    unknown = set(table) - set(REGISTRY)
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) in [providers]: "
                          f"{', '.join(sorted(unknown))} (known: {', '.join(REGISTRY)})")
    chosen = dict(DEFAULTS)
    for key, value in table.items():
        where = f"{source}: [providers] {key}"
        if not isinstance(value, str):
            raise PolicyError(f"{where} must be a string, not {value!r}")
        try:
            found = _builtin(key, value)
            if found is not None and found[0].arg:  # an argument is checked now
                found[0].make(found[1])
        except (PolicyError, ValueError) as e:
            raise PolicyError(f"{where}: {e}") from None
        chosen[key] = value
    return ProviderChoices(chosen, source)


def _make(choices: ProviderChoices, key: str) -> Any:
    value = choices.chosen.get(key, DEFAULTS[key])
    where = choices.where(key)
    try:
        found = _builtin(key, value)
        if found is not None:
            return found[0].make(found[1])
        module, _, attr = value.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        made = factory()
    except PolicyError as e:
        raise PolicyError(f"{where}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - the embedder's import or factory: say which
        raise PolicyError(f"{where} = {value!r}: cannot build it: "
                          f"{type(e).__name__}: {e}") from None
    missing = [m for m in _METHODS[key] if not callable(getattr(made, m, None))]
    if missing:
        raise PolicyError(f"{where} = {value!r}: the factory returned a "
                          f"{type(made).__name__}, which lacks {', '.join(missing)}")
    return made


def build_providers(choices: ProviderChoices) -> Providers:
    """The bundle the operator's ``[providers]`` names (models: ``[models.NAME]``)."""
    return Providers(files=_make(choices, "files"), http=_make(choices, "http"),
                     clock=_make(choices, "clock"), shell=_make(choices, "shell"),
                     human=_make(choices, "human"))


__all__ = ["DEFAULTS", "REGISTRY", "Builtin", "ProviderChoices", "build_providers",
           "parse_providers"]
