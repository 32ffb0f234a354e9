"""Resource providers: how the broker performs effects for agents (files, HTTP, models).

``Providers`` is the bundle a ``Supervisor`` performs effects through; each member is
typed by a Protocol (``FileProvider``, ``HttpClient``, ``ClockProvider``) so that a test
or an embedding application can inject its own.
"""

from agentlibos.providers.base import ClockProvider, FileProvider, Providers, SystemClock
from agentlibos.providers.net import HttpClient

__all__ = ["ClockProvider", "FileProvider", "HttpClient", "Providers", "SystemClock"]
