"""The documentation's relative links lead somewhere: each file exists, each heading anchor
is a heading of that file, and the README links every page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.sandbox.stack import ROOT

DOCS = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "CONTRIBUTING.md", *ROOT.glob("docs/*.md")]
)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def anchors(doc: Path) -> set[str]:
    """GitHub's ids for the headings of ``doc``: lower case, punctuation dropped, spaces to
    hyphens; a repeated heading gets ``-1``, ``-2``."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", doc.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(doc: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", doc.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_links_lead_to_files_and_headings_that_exist(doc: Path) -> None:
    # given a documentation page
    # then every relative link names a file of the repository and, with #, one of its headings
    assert broken_links(doc) == []


def test_doc_links_check_finds_a_broken_file_and_anchor(tmp_path: Path) -> None:
    # given a page linking a missing file, a missing heading and two that exist
    (tmp_path / "other.md").write_text("# Title\n\n## The `run` command\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](missing.md) [b](other.md#nowhere) [c](other.md#the-run-command) "
        "[d](other.md#twice-1) `[e](in-code.md)` [f](https://example.com/x)\n"
    )
    # then exactly the two broken ones are reported
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading #nowhere in other.md",
    ]


def test_readme_links_every_page_under_docs() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    missing = [d.name for d in (ROOT / "docs").glob("*.md") if d.resolve() not in linked]
    assert missing == []
