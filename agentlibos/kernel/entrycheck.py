"""What an image's entry module can be seen to lack without running it.

The supervisor must never run an agent's code on the host, so an ``entry`` naming a
function the module does not define used to be found only when the agent started (its
run ended ``failed``, exit 1). Reading the module's syntax tree finds the two certain
cases at load, where a bad image is refused with exit 2 and nothing is forked: a module
that does not parse, and a name that appears nowhere in it.

It stays conservative: a name that appears anywhere (a def, an import, an assignment,
an attribute, even a string a module could ``setattr`` with) is taken as possibly
defined, and so is every name of a module with ``from x import *`` or a module-level
``__getattr__``. Only what cannot be defined by any means short of building the name
from pieces is refused.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

# A module larger than this is not parsed here (the agent's start will say); parsing
# is cheap, but the supervisor does not read unbounded files on an agent's behalf.
MAX_PARSED_BYTES: Final = 4 * 1024 * 1024


def entry_problem(path: Path, func: str) -> str | None:
    """Why ``func`` cannot be run from the module at ``path``, or None if it may be."""
    try:
        if path.stat().st_size > MAX_PARSED_BYTES:
            return None
        source = path.read_bytes()
    except OSError:
        return None  # unreadable here is reported by the image's readability check
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        return f"{path.name} does not parse: {e.msg} (line {e.lineno})"
    except ValueError as e:  # NUL bytes
        return f"{path.name} does not parse: {e}"
    if not _may_define(tree, func):
        return f"{path.name} defines no function {func!r}"
    return None


def _may_define(tree: ast.Module, func: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if _mentions(node, func):
            return True
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
               and n.name == "__getattr__" for n in tree.body)


def _mentions(node: ast.AST, name: str) -> bool:
    match node:
        case ast.Name(id=n) | ast.Attribute(attr=n) | ast.arg(arg=n):
            return n == name
        case ast.FunctionDef(name=n) | ast.AsyncFunctionDef(name=n) | ast.ClassDef(name=n):
            return n == name
        case ast.alias(name=n, asname=a):
            return name in (a, n, n.split(".")[0])
        case ast.MatchAs(name=str() as n) | ast.MatchStar(name=str() as n):
            return n == name
        case ast.ExceptHandler(name=str() as n):
            return n == name
        case ast.Global(names=ns) | ast.Nonlocal(names=ns):
            return name in ns
        case ast.Constant(value=str() as s):
            return name in s
    return False
