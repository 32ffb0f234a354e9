"""The ``agentlibos`` console script.

Ctrl-C at any moment is exit 130 with one line, as docs/cli.md says: also while the
command line's modules are still loading (the first ~0.2 s of every command), which is
before :func:`agentlibos.cli.main.main` can catch it. This module imports nothing of
ours until it holds that ``try``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_INTERRUPTED = 130  # agentlibos.cli.common.EXIT_INTERRUPTED, not imported: see above


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        from agentlibos.cli import main as run  # noqa: PLC0415 - inside the try, see above

        run(argv)
    except KeyboardInterrupt:
        try:
            print("agentlibos: error: interrupted", file=sys.stderr)
        finally:
            sys.exit(EXIT_INTERRUPTED)
