"""Where the console listens: ``HOST:PORT`` parsed, and whether it is loopback only.

The console speaks plain HTTP and carries a bearer token; on anything but loopback the
token (and every approval) would cross a network in clear text. So a non-loopback
address is refused unless the operator says ``--allow-remote`` (and then should put a
TLS proxy or an SSH tunnel in front).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from agentlibos.errors import UsageError

DEFAULT_LISTEN: Final = "127.0.0.1:8470"


@dataclass(frozen=True)
class Listen:
    host: str  # an IP address or "localhost", without brackets
    port: int  # 0: any free port (the printed URL says which)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: we cannot know where it resolves, so not loopback

    def url_host(self) -> str:
        """The host as a URL spells it: IPv6 in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host


def parse_listen(text: str, *, allow_remote: bool = False) -> Listen:
    """``127.0.0.1:8470``, ``[::1]:8470``, ``localhost:0``; refuses non-loopback unless allowed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"bad --listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"bad --listen {text!r}: write an IPv6 address in brackets, "
                         "e.g. [::1]:8470")
    listen = Listen(host, int(port_text))
    if not listen.loopback and not allow_remote:
        raise UsageError(f"--listen {text!r} is not a loopback address: the console is plain "
                         "HTTP with a bearer token; listen on 127.0.0.1 and reach it through "
                         "an SSH tunnel, or pass --allow-remote behind a TLS proxy")
    return listen
