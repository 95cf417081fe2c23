"""The performance page is the benchmark's output: a run rewrites its generated part only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from worker.bench.benchmark import command_line
from worker.bench.report import BEGIN, END, page_section, write_page
from worker.sandbox.stack import ROOT

MACHINE = {"cores": 2, "cpu": "AMD EPYC 7B13", "load_average": [1.5, 1.25, 0.75]}
WHEN = datetime(2026, 12, 7, 4, 5, tzinfo=UTC)


def section(table: str, command: str = "oppsync bench") -> str:
    return page_section(table, command=command, finished=WHEN, machine=MACHINE, wall_seconds=2460)


def test_page_section_names_the_command_the_time_and_the_machine() -> None:
    # when a run's tables become the page's generated part
    text = section("| figure | measured |\n|---|---|\n| ingest rate | 799/s |")
    # then it says which command made them, when, for how long and on what
    assert text.startswith(BEGIN) and text.endswith(END)
    assert "Written by `oppsync bench`, finished 2026-12-07 04:05 UTC after 41 min" in text
    assert "on 2 cores (AMD EPYC 7B13); load average when it ended: 1.50, 1.25, 0.75." in text
    assert "| ingest rate | 799/s |" in text


def test_write_page_replaces_only_the_generated_part(tmp_path: Path) -> None:
    # given a page with prose written by hand around the last run's tables
    page = tmp_path / "performance.md"
    page.write_text(
        f"# Performance\n\nHow it works.\n\n{section('old table')}\n\n## Notes\n\nBy hand.\n"
    )
    # when a new run writes its tables
    write_page(page, section("new table", "oppsync bench --events 500"))
    # then the new tables replace the old ones, and the prose around them stays as it was
    text = page.read_text()
    assert "old table" not in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.startswith("# Performance\n\nHow it works.\n\n" + BEGIN)
    assert "Written by `oppsync bench --events 500`" in text and "new table" in text
    assert text.endswith(END + "\n\n## Notes\n\nBy hand.\n")


def test_write_page_starts_a_page_that_has_no_markers(tmp_path: Path) -> None:
    # given no page yet, in a folder that does not exist yet
    page = tmp_path / "docs" / "performance.md"
    # when a run writes its tables there
    write_page(page, section("the table"))
    # then the page is a title and the generated part, which the next run can find again
    assert page.read_text() == "# Performance\n\n" + section("the table") + "\n"
    write_page(page, section("next table"))
    assert "the table" not in page.read_text() and "next table" in page.read_text()


def test_bench_command_line_names_only_what_differs_from_the_default() -> None:
    assert command_line(quick=False, latency_ms=50, events=None, soak_events=None) == (
        "oppsync bench"
    )
    assert command_line(quick=True, latency_ms=20, events=300, soak_events=None) == (
        "oppsync bench --quick --latency-ms 20 --events 300"
    )


def test_repository_performance_page_has_one_generated_part() -> None:
    # the page `oppsync bench` rewrites must keep the markers it looks for, once each
    text = (ROOT / "docs" / "performance.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.index(BEGIN) < text.index(END)
