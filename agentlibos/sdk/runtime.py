"""The in-sandbox runtime: connect, fetch the entry point, run it, report the result."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import traceback
from types import FrameType
from typing import Any

from agentlibos.errors import InvalidArgument, LibOSError, LimitExceeded
from agentlibos.kernel.text import json_size
from agentlibos.protocol.zmtp import Dealer
from agentlibos.sdk import Context
from agentlibos.sdk.client import Client

# The most a report can carry: it travels in one message header, at most 1 MiB
# (protocol/wire.py), which is also the most [supervisor] max_result may be. The
# operator's max_result, when lower, is the broker's to enforce.
MAX_RESULT_BYTES = 1 << 20

# rehearse(): a directory of ours that is not a package, holding one module.
REHEARSAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rehearsal")
REHEARSAL_MODULE = "_alos_rehearsal"


class Terminated(BaseException):
    """Raised in the agent on SIGTERM (a kill with a grace period): clean up and leave."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("terminated by the supervisor")


def _describe(e: BaseException) -> str:
    if isinstance(e, LibOSError):
        text = f"{type(e).__name__} [{e.code}]: {e.message}"
    else:
        text = f"{type(e).__name__}: {e}"
    # An exception's text may hold lone surrogates (bytes decoded with surrogateescape,
    # or an agent's own "\udc80"), which the broker refuses as not text: spell them out.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_agent(endpoint: str, pid: int, token: bytes, *, dealer: Dealer | None = None) -> int:
    """Run the agent's entry function; return the process exit status. ``dealer``: a
    connection to the broker made earlier (a pooled process's)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    # stdout goes to a file (the process's log), so Python buffers it in blocks while
    # stderr is line-buffered: the log would show what the agent printed out of order.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    client = Client(endpoint, pid, token, dealer=dealer)
    status, result, error = "returned", None, None
    try:
        # Bounded: if the supervisor died between our fork and now, do not wait forever.
        info = client.call("proc.start", timeout_s=30)[0]
        if info.get("replay"):
            client.load_replay(int(info["replay"]))  # resumed: replay its journal
        sys.path.insert(0, info["image_path"])
        ctx = Context(client, info)
        module = importlib.import_module(info["entry_module"])
        entry = getattr(module, info["entry_function"])
        if not callable(entry):  # said plainly, not as "'int' object is not callable"
            raise TypeError(f"the image's entry {info['entry_module']}:"
                            f"{info['entry_function']} is not a function (its type is "
                            f"{type(entry).__name__!r})")
        result = entry(ctx, info.get("args") or {})
        try:
            size = json_size(result)
        except (TypeError, ValueError) as e:
            raise TypeError(f"the entry function returned a non-JSON value: {e}") from None
        if size > MAX_RESULT_BYTES:
            # Refused as the broker refuses one over max_result, with the same words.
            status, result = "error", None
            error = ("its result was refused: " + _describe(LimitExceeded(
                f"proc.exit: result of {size} bytes exceeds {MAX_RESULT_BYTES}")))
    except SystemExit as e:
        if e.code not in (0, None):
            status, error = "error", f"SystemExit({e.code!r})"
    except BaseException as e:  # noqa: BLE001 - the agent's failure is reported, not re-raised
        if isinstance(e, Terminated):  # a stop, not a bug: its stack says nothing
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: report, leave
            print(f"agentlibos: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
        status, result, error = "error", None, _describe(e)
    try:
        args: dict[str, Any] = {"status": status, "result": result}
        if error is not None:
            args["error"] = error[:60000]
        try:
            client.call("proc.exit", args, timeout_s=30)
        except (InvalidArgument, LimitExceeded) as e:
            # A report the broker will never take (a non-finite number or a lone
            # surrogate in the result, nesting too deep, over [supervisor] max_result):
            # the run failed, and says why. Leaving without a report would count as a
            # crash, and a crashed process is resumed, only to be refused again.
            traceback.print_exc()
            refused = f"its {'result' if status == 'returned' else 'error'} was refused"
            status = "error"
            args = {"status": status, "result": None,
                    "error": f"{refused}: {_describe(e)}"[:60000]}
            client.call("proc.exit", args, timeout_s=30)
    except BaseException as e:  # noqa: BLE001 - nothing more can be reported; exit status says it
        if not isinstance(e, Terminated):
            traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0 if status == "returned" else 1


def rehearse() -> bool:
    """For a pooled process while it waits (docs/sandbox.md, "The warm pool"): what
    run_agent does first, once, on a module of ours, then forgotten -- a path entry of
    its own (a new finder, its listdir and stats), the loader, the compiler, a Context.
    True if it ran through.

    Why: in a process just forked from the preloaded zygote, the first run of that code
    is mostly copy-on-write page faults (every object it touches has its reference
    count written): importing a four-line entry module took 1.6-2.0 ms and 160 faults
    in a fresh fork, 0.7 ms and 30 faults after a rehearsal (docs/benchmarks.md,
    issue 14's eleventh pass). Paid here, they are off the spawn's path; the pages
    would have been the agent's anyway. Best effort: a failure leaves nothing behind."""
    sys.path.insert(0, REHEARSAL_DIR)
    try:
        module = importlib.import_module(REHEARSAL_MODULE)
        # Compiled from its source as well: an installed package has its .pyc, an
        # agent's image usually has none.
        path = module.__file__ or ""
        with open(path, encoding="utf-8") as f:
            compile(f.read(), path, "exec")
        Context(Client.__new__(Client), {"pid": 0})
    except Exception:  # noqa: BLE001 - a rehearsal that fails costs the spawn its time, no more
        return False
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(REHEARSAL_DIR)
        sys.path_importer_cache.pop(REHEARSAL_DIR, None)
        sys.modules.pop(REHEARSAL_MODULE, None)
    return True
