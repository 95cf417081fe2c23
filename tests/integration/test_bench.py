"""``oppsync bench --quick`` keeps working: it runs, prints every figure of the table, writes
its JSON and the page it is given, and loses or duplicates none of the events it sends.

Speeds are the benchmark's output, never asserted here: on a shared CI machine they say
nothing about the code. What is asserted holds at any speed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.bench.report import BEGIN, END
from worker.sandbox.stack import ROOT

pytestmark = pytest.mark.integration

#: The first words of each row of the table (issue 8, "The benchmark"; issue 18, "Targets").
FIGURES = (
    "ingest rate",
    "ingest latency p50 / p99",
    "end-to-end throughput",
    "end-to-end latency p50 / p99 at 20 events/s",
    "end-to-end latency p50 / p99 at 50 %",
    "correctness under load",
    "CPU per 1,000 events",
    "CPU while a backlog waits",
    "vendor calls per synced event beyond its writes",
    "quota use",
    "two worker processes vs one",
    "lost / duplicated under faults",
    "memory: RSS web / worker",
    "Redis bytes per linked opportunity",
    "dedup / intent keys expire",
    "Redis commands per event",
)


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    page = out.with_name("performance.md")  # never the repository's docs
    command = ["bench", "--quick", "--json", str(out), "--page", str(page)]
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    return done, out


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The first table's rows by figure: its cells after the name."""
    rows: dict[str, list[str]] = {}
    for line in stdout.split("\n\n")[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_bench_quick_prints_every_figure(quick_run: tuple[Any, Path]) -> None:
    done, _ = quick_run
    # given `oppsync bench --quick` ran to the end
    assert done.returncode == 0, done.stderr[-4000:]
    rows = table_rows(done.stdout)
    # then the table has one row per figure, each with a measured value and a verdict
    for figure in FIGURES:
        (row,) = [cells for name, cells in rows.items() if name.startswith(figure)]
        measured, *_, verdict = row
        assert measured and not re.search(r"\bn/a\b|\bnan\b", measured), (figure, row)
        assert verdict in ("yes", "**no**", "—"), (figure, row)
    # and each machine-dependent figure stands next to its ceiling from the same run
    for figure in ("ingest rate", "end-to-end throughput", "CPU per 1,000 events"):
        (row,) = [cells for name, cells in rows.items() if name.startswith(figure)]
        assert row[1] and row[2].endswith("×"), (figure, row)


def test_bench_quick_writes_its_json(quick_run: tuple[Any, Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    # then the JSON holds the table printed and the figures behind it, all numbers
    results = json.loads(out.read_text())
    assert results["table"].strip() == done.stdout.strip()
    for phase in ("ingest_ceiling", "ingest", "noop_ceiling", "throughput", "latency_light",
                  "latency_half"):  # fmt: skip
        assert math.isfinite(results[phase]["rate"]) and results[phase]["rate"] > 0, phase
        assert results[phase]["cpu"]["machine_capacity"] > 0, phase
    assert results["throughput"]["commands"]
    assert results["machine"]["cores"] >= 1
    # the simulators' CPU per request, the two-worker rate, the backlog's figures
    assert results["throughput"]["cpu"]["simulators"] > 0
    assert sum(n for by in results["throughput"]["calls"]["siro"].values() for n in by.values())
    assert results["scale"]["workers"] == 2 and results["scale"]["rate"] > 0
    backlog = results["backlog"]
    assert backlog["backlog"] > 0 and math.isfinite(backlog["waiting_cores"])
    for vendor, figures in backlog["vendors"].items():
        assert figures["requests"] > 0, vendor
        assert 0 < figures["used"] <= 1.5 or figures["backlog_left"] == 0, (vendor, figures)
        assert figures["quota"], vendor


def test_bench_quick_writes_its_tables_into_the_page(quick_run: tuple[Any, Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    # then the page given holds the tables printed, between the markers, under the command
    page = out.with_name("performance.md").read_text()
    section = page.split(BEGIN, 1)[1].split(END, 1)[0]
    assert "Written by `oppsync bench --quick`" in section
    assert done.stdout.strip() in section


def test_bench_quick_loses_and_duplicates_nothing(quick_run: tuple[Any, Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    # then every event sent reached each of the four other vendors exactly once
    correctness = results["correctness"]
    assert correctness["events"] > 0
    assert correctness["targets"] == ["siro", "leadway", "ivvy", "icloudready"]
    assert correctness["lost"] == 0, correctness
    assert correctness["duplicated"] == 0, correctness
    # and the backlog phase wrote no deal twice
    assert results["backlog"]["duplicated"] == 0
    assert sum(v["deals_held"] for v in results["backlog"]["vendors"].values()) > 0


def test_bench_quick_loses_and_duplicates_nothing_under_faults(
    quick_run: tuple[Any, Path],
) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    faults = json.loads(out.read_text())["faults"]
    # given vendors that failed requests, throttled them and lost answers after committing
    injected = faults["injected"]
    assert sum(v.get("error", 0) for v in injected.values()) > 0, injected
    assert sum(v.get("lost", 0) + v.get("throttle", 0) for v in injected.values()) > 0, injected
    # then every event still reached each of the four other vendors exactly once
    correctness = faults["correctness"]
    assert correctness["events"] == faults["accepted"] > 0
    assert correctness["lost"] == 0, correctness
    assert correctness["duplicated"] == 0, correctness


def test_bench_quick_logs_stay_one_json_object_per_line(quick_run: tuple[Any, Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    # given the service's logs from a run that kept every thread of it busy
    logs = sorted(Path(json.loads(out.read_text())["logs"]).glob("*.log"))
    assert logs
    # then no two lines were written into one: each line that starts a JSON object is one,
    # and is whole (log shippers split on newlines)
    for log in logs:
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if line.startswith("{"):
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    pytest.fail(f"{log.name}:{number} is not one JSON object: {line[:300]}")
