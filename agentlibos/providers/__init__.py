"""Resource providers: how the broker performs effects for agents.

``Providers`` is the bundle a ``Supervisor`` performs effects through; each member is
typed by a Protocol (``FileProvider``, ``HttpClient``, ``ClockProvider``,
``ShellProvider``, ``ModelProvider``, ``HumanChannel``) so that a test or an embedding
application can inject its own, or the operator can choose one by name in
``[providers]`` (``registry.py``). See docs/providers.md.

The names are loaded on first use (PEP 562): importing one provider module (the
config parser needs ``providers.models``) must not import them all, ``ssl`` among them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentlibos.lazy import lazy_exports

if TYPE_CHECKING:
    from agentlibos.providers.base import (
        ClockProvider,
        FileProvider,
        FixedClock,
        Providers,
        SystemClock,
    )
    from agentlibos.providers.fs import LocalFs
    from agentlibos.providers.human import HumanAnswers, HumanChannel
    from agentlibos.providers.memory import MemoryFs
    from agentlibos.providers.models import ModelAnswer, ModelConfig, ModelProvider, ModelRequest
    from agentlibos.providers.net import HttpClient, HttpRequest, HttpResponse
    from agentlibos.providers.registry import ProviderChoices, build_providers, parse_providers
    from agentlibos.providers.shell import ShellDone, ShellProvider, ShellRequest, ShellResult

__all__ = [
    "ClockProvider",
    "FileProvider",
    "FixedClock",
    "HttpClient",
    "HttpRequest",
    "HttpResponse",
    "HumanAnswers",
    "HumanChannel",
    "LocalFs",
    "MemoryFs",
    "ModelAnswer",
    "ModelConfig",
    "ModelProvider",
    "ModelRequest",
    "ProviderChoices",
    "Providers",
    "ShellDone",
    "ShellProvider",
    "ShellRequest",
    "ShellResult",
    "SystemClock",
    "build_providers",
    "parse_providers",
]

_WHERE = {
    "ClockProvider": "base",
    "FileProvider": "base",
    "FixedClock": "base",
    "HttpClient": "net",
    "HttpRequest": "net",
    "HttpResponse": "net",
    "HumanAnswers": "human",
    "HumanChannel": "human",
    "LocalFs": "fs",
    "MemoryFs": "memory",
    "ModelAnswer": "models",
    "ModelConfig": "models",
    "ModelProvider": "models",
    "ModelRequest": "models",
    "ProviderChoices": "registry",
    "Providers": "base",
    "ShellDone": "shell",
    "ShellProvider": "shell",
    "ShellRequest": "shell",
    "ShellResult": "shell",
    "SystemClock": "base",
    "build_providers": "registry",
    "parse_providers": "registry",
}

__getattr__ = lazy_exports(__name__, _WHERE)
