"""Agent-controlled text made safe to store. Pure code.

Threat: Python strings may hold lone surrogates (``"\\udc80"``): JSON's ``\\u`` escapes
produce them, and so does ``os.fsdecode`` of a file name that is not UTF-8. They cannot
be encoded as UTF-8, so writing one to SQLite, a log or a socket raises
``UnicodeEncodeError`` -- in the supervisor, on the thread every process shares. An
agent raising ``RuntimeError("bad \\udc80")`` took a shared daemon down that way.

The wire refuses such strings in arguments (:mod:`agentlibos.protocol.wire`); what
reaches the store by other ways (an exception's message, a result, a log line) goes
through :func:`storable` or :func:`storable_json` first: surrogates become U+FFFD (a
correctly paired one becomes the character it encodes), and length is bounded with a
marker saying how much was cut.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_TEXT_CHARS", "is_text", "json_size", "storable", "storable_json"]

MAX_TEXT_CHARS: Final = 64 * 1024
# Deeper than this, a value is replaced by a marker: json.dumps and sqlite3 adapters
# recurse, and the wire already refuses requests nested deeper than 64.
MAX_DEPTH: Final = 100
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_DEEP_MARKER: Final = "[nested too deeply]"


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def json_size(value: Any) -> int:
    """The size of a JSON value as it is sent and stored: compact, UTF-8. Every limit on
    a value's size (args, results, objects, event payloads) counts this, so a CJK
    character is 3 bytes, not the 6 of its ``\\u`` escape. A lone surrogate counts as the
    escape the wire sends it as. Raises TypeError/ValueError for what is not JSON."""
    return len(_COMPACT.encode(value).encode("utf-8", "backslashreplace"))


def is_text(s: str) -> bool:
    """True when ``s`` can be encoded as UTF-8 (it holds no surrogate code point)."""
    return _SURROGATE.search(s) is None


def _marker(cut: int) -> str:
    return f"...[{cut} more characters]"


def storable(s: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``s`` with surrogates replaced by U+FFFD and at most ``max_chars`` characters.

    A string that is cut ends with a marker (``...[N more characters]``) that counts
    within ``max_chars``; the result always encodes as UTF-8.
    """
    if not is_text(s):
        # Through UTF-16: a well-formed surrogate pair becomes its character, a lone
        # surrogate the replacement character.
        s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if len(s) <= max_chars:
        return s
    keep = max(0, max_chars - len(_marker(len(s))))
    marker = _marker(len(s) - keep)
    if len(marker) > max_chars:
        return s[:max_chars]
    return s[:keep] + marker


def _leaf(v: Any, max_chars: int) -> Any:
    if isinstance(v, str):
        return storable(v, max_chars)
    if v is None or isinstance(v, bool | int | float):
        return v
    # Not a JSON value (bytes, a set, an object): store what it says, as text.
    return storable(str(v), max_chars)


def _key(k: object, max_chars: int) -> str:
    return storable(k if isinstance(k, str) else str(k), max_chars)


def storable_json(value: Any, max_chars: int = MAX_TEXT_CHARS,
                  max_depth: int = MAX_DEPTH) -> Any:
    """A copy of a JSON value with every string and key made :func:`storable`.

    Walks iteratively (no recursion, whatever the depth); tuples become lists, values
    that are not JSON become their text, and containers deeper than ``max_depth`` are
    replaced by a marker string. Keys that become equal after replacement keep the
    last value.
    """
    if not isinstance(value, dict | list | tuple):
        return _leaf(value, max_chars)
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, dict | list | tuple):
                if depth >= max_depth:
                    out: Any = _DEEP_MARKER
                else:
                    out = {} if isinstance(v, dict) else []
                    stack.append((v, out, depth + 1))
            else:
                out = _leaf(v, max_chars)
            if isinstance(dst, dict):
                dst[_key(k, max_chars)] = out
            else:
                dst.append(out)
    return root
