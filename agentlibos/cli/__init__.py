"""The ``agentlibos`` command line: one module per command, dispatched by :mod:`.main`.

Every error the user can cause (a missing image, a malformed image.toml, a bad --arg,
an unknown capability kind) is a :class:`~agentlibos.errors.LibOSError`; :func:`main`
prints it as one line and exits with the status docs/cli.md lists. A traceback here is
always a bug.
"""

from agentlibos.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from agentlibos.cli.main import build_parser, main

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
