"""Every Redis key name is written in one module, ``worker/store/keys.py``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from worker.sandbox.stack import ROOT

KEYS_MODULE = ROOT / "worker" / "store" / "keys.py"
#: A key name or prefix: ``oppsync:<word>`` (a message "oppsync: ..." is not one).
KEY = re.compile(r"oppsync:\w")


def key_literals(path: Path) -> list[str]:
    """String literals (docstrings aside) that spell an ``oppsync:`` key name or its start."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and KEY.match(node.value)
    ]


def test_redis_key_names_are_spelled_only_in_the_keys_module() -> None:
    # given every module of the product but the keys module
    paths = [
        path
        for package in ("web", "worker", "schemas")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != KEYS_MODULE
    ]
    # then none spells a key name of its own
    assert [hit for path in paths for hit in key_literals(path)] == []
