"""The code's shape: every package has a public face, no import cycles, no giant modules.

As Trio's test_exports does: what a package's ``__all__`` names must exist, so a face
cannot rot silently. The import graph is read from the source (top-level imports, not
those under ``TYPE_CHECKING`` or inside functions), so a cycle fails here before it
fails at some user's first import in an unlucky order.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import agentlibos

ROOT = Path(agentlibos.__file__).parent
MAX_LINES = 600
# Why a module may be longer lives at its top, in a line starting with this.
LONG_REASON = "Long because"


def _packages() -> list[str]:
    names = ["agentlibos"]
    for info in pkgutil.walk_packages([str(ROOT)], prefix="agentlibos."):
        if info.ispkg and ".images." not in info.name + ".":
            names.append(info.name)
    return names


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent)
        if rel.parts[1] == "images":
            continue  # agent code of the shipped images, not the runtime
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@pytest.mark.parametrize("package", _packages())
def test_every_package_names_its_public_face(package: str) -> None:
    mod = importlib.import_module(package)
    face = getattr(mod, "__all__", None)
    assert isinstance(face, list) and face, f"{package} has no __all__"
    assert len(face) == len(set(face)), f"{package}.__all__ repeats a name"
    for name in face:
        assert not name.startswith("_") or name == "__version__", name
        if not hasattr(mod, name):
            # A face may name submodules without importing them eagerly.
            importlib.import_module(f"{package}.{name}")


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module, modname: str, is_pkg: bool) -> set[str]:
    found: set[str] = set()
    package = modname if is_pkg else modname.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def test_there_is_no_import_cycle_inside_agentlibos() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = _top_level_imports(tree, name, path.name == "__init__.py")
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name
                       and t not in ancestors}
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root, edges in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(edges)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_over_600_lines_without_a_reason_at_its_top() -> None:
    too_long = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(LONG_REASON in ln for ln in lines[:40]):
            too_long.append(f"{name} ({len(lines)} lines)")
    assert not too_long, too_long


def test_the_supervisor_module_only_wires() -> None:
    lines = (ROOT / "supervisor" / "supervisor.py").read_text().splitlines()
    assert len(lines) <= 300
