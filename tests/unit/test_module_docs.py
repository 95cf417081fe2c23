"""Every product module opens with one line naming its job, and none grows past the limit."""

from __future__ import annotations

import ast
from pathlib import Path

from worker.sandbox.stack import ROOT

#: Lines a module may have before it is split (issue 17: no module over ~400 lines).
MAX_LINES = 400


def product_modules() -> list[Path]:
    return [p for pkg in ("web", "worker", "schemas") for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_every_module_opens_with_a_one_line_job() -> None:
    # given every module of web, worker and schemas
    missing = []
    for path in product_modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        lines = (doc or "").splitlines()
        # then its docstring's first line stands alone (a summary, then a blank line)
        if not lines or not lines[0].strip() or (len(lines) > 1 and lines[1].strip()):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_no_module_grows_past_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in product_modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
