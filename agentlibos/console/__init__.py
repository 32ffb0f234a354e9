"""The web console: the approval and question queue, the process tree, the audit tail.

Its own process (``agentlibos console``), acting only through the supervisor's control
channel (:class:`ControlLink`); :class:`Guard` decides who may use it (token, cookie,
CSRF, Origin, Host) in pure code; :func:`serve` runs it. See docs/console.md.
"""

from agentlibos.console.app import build_app
from agentlibos.console.guard import Guard, Refusal, Session, host_names
from agentlibos.console.link import ControlLink
from agentlibos.console.listen import DEFAULT_LISTEN, Listen, parse_listen
from agentlibos.console.server import serve

__all__ = ["DEFAULT_LISTEN", "ControlLink", "Guard", "Listen", "Refusal", "Session",
           "build_app", "host_names", "parse_listen", "serve"]
