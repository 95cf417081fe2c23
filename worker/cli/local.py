"""Commands that start things on this machine: ``run``, ``demo`` and ``bench``."""

from __future__ import annotations

import sys

import click

from worker.cli.group import main


@main.command()
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Start simulated vendors and use them / never: refuse to start without real vendors "
    "configured. Default: the sandbox only when no vendor is configured.",
)
@click.option("--port", default=8000, show_default=True, help="Port of the web receiver.")
def run(sandbox: bool | None, port: int) -> None:
    """Run web, worker, beat and Flower locally (Redis is started when REDIS_URL is unset).
    The configuration is checked first: every problem is listed, exit status 2."""
    from worker.sandbox.localrun import run_stack

    sys.exit(run_stack(sandbox=sandbox, port=port))


@main.command()
@click.option("--port", default=8000, show_default=True, help="Port of the web receiver.")
@click.option(
    "--exit-when-converged",
    is_flag=True,
    help="Stop everything once every vendor holds every sample deal (for scripts and CI).",
)
def demo(port: int, exit_when_converged: bool) -> None:
    """Run the stack on five simulated vendors, send a sample deal from each, and show a live
    table of every deal in every vendor until they agree; then keep running until Ctrl-C."""
    from worker.sandbox.demo import demo as run_demo

    sys.exit(run_demo(port=port, exit_when_converged=exit_when_converged))


@main.command()
@click.option("--quick", is_flag=True, help="A short run (under a minute): fewer events.")
@click.option(
    "--latency-ms",
    default=50.0,
    show_default=True,
    help="How long each simulated vendor takes to answer.",
)
@click.option(
    "--json",
    "json_path",
    default="bench-results.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write every figure as JSON.",
)
@click.option("--events", type=int, help="End-to-end events (default 10000; quick: 200).")
@click.option(
    "--soak-events",
    type=int,
    help="Events in all when memory is read again (default 100000; quick: none).",
)
@click.option(
    "--page",
    "page_path",
    type=click.Path(dir_okay=False),
    help="Where to write the tables, between the page's markers. Default: the repository's "
    "docs/performance.md for a full run; a --quick run writes no page unless given one.",
)
def bench(
    quick: bool,
    latency_ms: float,
    json_path: str,
    events: int | None,
    soak_events: int | None,
    page_path: str | None,
) -> None:
    """Start the real stack against the vendor simulators, load it over HTTP, and print every
    performance figure next to a ceiling measured in the same run (docs/performance.md)."""
    from pathlib import Path

    from worker.bench.benchmark import run_benchmark

    run_benchmark(
        quick=quick,
        latency_ms=latency_ms,
        json_path=Path(json_path),
        events=events,
        soak_events=soak_events,
        page_path=Path(page_path) if page_path else None,
    )
