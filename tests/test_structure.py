"""The package's structure: no two modules import each other, directly or around a circle.

Every import counts: at the top of a module, inside a function, under ``TYPE_CHECKING``. A lazy
import inside a function still ties the two modules together for anyone reading or changing them,
so a circle through one is a circle (``options`` once imported ``validation`` for a type while
``validation`` imported ``options`` for its options).
"""

from __future__ import annotations

import ast
from pathlib import Path

import bnfold

ROOT = Path(bnfold.__file__).parent


def module_name(path: Path) -> str:
    parts = ["bnfold", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The bnfold modules ``name`` imports (a package's own submodules do not count its package)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_walk_finds_a_circle_where_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_bnfold_is_in_an_import_circle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert sum(len(v) for v in graph.values()) > 150  # the walk saw the package's imports
    assert {"bnfold.validation", "bnfold.child"} <= graph["bnfold.pipeline"] | graph["bnfold.validation"]
    assert circles(graph) == []
