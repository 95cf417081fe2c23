"""The product's import graph: it stands without ``tests`` and its packages point one way.

Read from the source with ``ast`` (every ``import``, those inside functions too), so a lazy
import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from worker.sandbox.stack import ROOT

PRODUCT = ("web", "worker", "schemas")
#: Who may import whom: web → worker → schemas; schemas imports nothing of ours.
ALLOWED = {"web": {"worker", "schemas"}, "worker": {"schemas"}, "schemas": set()}


def modules() -> Iterator[tuple[str, Path]]:
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(p for p in parts if p != "__init__"), path


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def top(module: str) -> str:
    return module.split(".", 1)[0]


def test_product_imports_nothing_from_tests() -> None:
    # given every module of web, worker and schemas
    found = [
        f"{name} imports {target}"
        for name, path in modules()
        for target in imports(name, path)
        if top(target) == "tests"
    ]
    # then none of them imports the test package (it is not installed)
    assert found == []


def test_product_packages_import_one_way() -> None:
    # given every edge between the product's top-level packages
    edges = {
        (top(name), top(target), name, target)
        for name, path in modules()
        for target in imports(name, path)
        if top(target) in PRODUCT and top(target) != top(name)
    }
    # then each points down the layers web → worker → schemas, so there is no cycle
    against = sorted(f"{n} imports {t}" for a, b, n, t in edges if b not in ALLOWED[a])
    assert against == []


def module_level_imports(name: str, path: Path) -> set[str]:
    """The product modules ``name`` imports when it is imported (not inside functions, not
    for type checking only)."""
    known = {n for n, _ in modules()}
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in imports_of(node, name, path):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
    return found


def imports_of(node: ast.Import | ast.ImportFrom, name: str, path: Path) -> Iterator[str]:
    holder = ast.Module(body=[node], type_ignores=[])
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for inner in ast.walk(holder):
        if isinstance(inner, ast.Import):
            yield from (alias.name for alias in inner.names)
        elif isinstance(inner, ast.ImportFrom):
            base = inner.module or package
            yield base
            yield from (f"{base}.{alias.name}" for alias in inner.names)


def test_no_import_cycle_between_modules() -> None:
    # given what each product module imports as it is imported
    graph = {name: module_level_imports(name, path) for name, path in modules()}
    # then following those imports never leads back to where it started
    cycles = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join([*trail[trail.index(node) :], node]))
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
