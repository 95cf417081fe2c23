"""``oppsync``: the operators' command line. Every command reads the service's environment."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from schemas.mapping import VENDORS
from worker import __version__
from worker.errors import ConfigError
from worker.terminal import printable


def echo(text: str = "") -> None:
    """Print one output of a command: every output may carry vendor data, so control
    characters are escaped (``worker.terminal``)."""
    click.echo(printable(text))


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oppsync")
def main() -> None:
    """oppsync keeps sales opportunities in sync across SIRO, Leadway, iVvy, Salescaling and
    iCloudReady. See docs/configuration.md for configuration, docs/operations.md for these
    commands."""


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


@main.command()
@click.argument("ref")
def show(ref: str) -> None:
    """Show one opportunity in every vendor: REF is a canonical key or VENDOR:ID."""
    from worker.overview import describe, resolve

    rt = _runtime()
    key = resolve(rt, ref)
    if key is None:
        raise click.ClickException(f"no opportunity known as {ref!r}")
    echo(describe(rt, key))


@main.group()
def deadletters() -> None:
    """List, show, replay or purge dead letters."""


@deadletters.command("list")
@click.option("--vendor", type=click.Choice(VENDORS))
@click.option("--limit", default=50, show_default=True)
def deadletters_list(vendor: str | None, limit: int) -> None:
    """The newest dead letters first."""
    from worker.deadletters import DeadLetters

    letters = DeadLetters(_runtime().redis).list(vendor=vendor, limit=limit)
    if not letters:
        echo("No dead letters.")
        return
    for letter in letters:
        echo(
            f"{letter.id}  {_when(letter.at)}  {letter.kind:6} {letter.vendor:12} "
            f"attempts={letter.attempts}  {letter.reason}: {letter.message[:80]}"
        )


@deadletters.command("show")
@click.argument("letter_id")
def deadletters_show(letter_id: str) -> None:
    """Everything a dead letter holds."""
    from dataclasses import asdict

    from worker.deadletters import DeadLetters

    letter = DeadLetters(_runtime().redis).get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id}")
    echo(json.dumps(asdict(letter), indent=2, default=str))


@deadletters.command("replay")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def deadletters_replay(letter_ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead letters back on their queues (idempotent: replaying twice runs once)."""
    from worker.deadletters import DeadLetters
    from worker.tasks import replay_dead_letter

    ids = list(letter_ids)
    if replay_all:
        ids = [x.id for x in DeadLetters(_runtime().redis).list(limit=1_000_000)]
    if not ids:
        raise click.ClickException("name dead letters to replay, or --all")
    for letter_id in ids:
        letter = replay_dead_letter(letter_id)
        echo(f"{letter_id}: " + ("replayed" if letter else "not found (already replayed?)"))


@deadletters.command("purge")
@click.argument("letter_ids", nargs=-1)
@click.option("--vendor", type=click.Choice(VENDORS), help="Every dead letter of this vendor.")
@click.option("--all", "purge_all", is_flag=True, help="Every dead letter.")
@click.confirmation_option(prompt="Delete these dead letters for good?")
def deadletters_purge(letter_ids: tuple[str, ...], vendor: str | None, purge_all: bool) -> None:
    """Delete dead letters without replaying them: the ones named, a vendor's, or --all."""
    from worker.deadletters import DeadLetters

    letters = DeadLetters(_runtime().redis)
    if letter_ids:
        for letter_id in letter_ids:
            gone = letters.take(letter_id) is not None
            echo(f"{letter_id}: " + ("purged" if gone else "not found"))
        return
    if not (vendor or purge_all):
        raise click.UsageError("name dead letters to purge, or --vendor V, or --all")
    count = letters.purge(vendor=vendor)
    echo(f"Purged {count} dead letters.")


@main.group()
def config() -> None:
    """Configuration commands."""


@config.command("check")
def config_check() -> None:
    """Validate configuration and mapping, then make one harmless read per vendor. Exit
    status 2 when the configuration is refused, 1 when Redis or a vendor fails."""
    from worker.configcheck import check

    sys.exit(check(click.echo))


@main.command()
@click.option("--vendor", type=click.Choice(VENDORS), help="Compare and repair this vendor only.")
def reconcile(vendor: str | None) -> None:
    """Compare every linked opportunity with what each vendor really holds, and repair drift
    (a missed webhook, a manual edit); prints what it changed. Exit status 1 on errors."""
    from worker.reconcile import Reconciler, exclusive
    from worker.tasks import ingest_now, push_now

    rt = _interactive_runtime()
    if vendor and not rt.settings.enabled(vendor):
        raise click.ClickException(f"{vendor} is not enabled (OPPSYNC_VENDORS)")
    with _config_errors(), exclusive(rt) as keep_alive:
        if keep_alive is None:
            raise click.ClickException("a reconciliation is already running; try again later")
        reconciler = Reconciler(
            rt, feed=ingest_now, push=push_now, vendor=vendor, keep_alive=keep_alive
        )
        with _progress() as progress:
            listing = progress.add_task("Listing", total=len(reconciler.vendors))
            for name in reconciler.vendors:
                progress.update(listing, description=f"Listing {name}")
                reconciler.list_vendor(name)
                progress.advance(listing)
            keys = reconciler.keys()
            comparing = progress.add_task("Comparing", total=len(keys))
            for key in keys:
                reconciler.reconcile(key)
                progress.advance(comparing)
    echo(reconciler.report.summary())
    sys.exit(1 if reconciler.report.errors else 0)


@main.command()
@click.option(
    "--from", "source", type=click.Choice(VENDORS), required=True, help="The vendor to link from."
)
@click.option("--dry-run", is_flag=True, help="Decide and print, change nothing.")
def backfill(source: str, dry_run: bool) -> None:
    """Link the opportunities that already exist in one vendor to the others: records of the
    same deal (name, and contact where both hold one) are linked before anything is created."""
    from worker.backfill import Backfill
    from worker.tasks import enqueue_ingest, push_now

    rt = _interactive_runtime()
    if not rt.settings.enabled(source):
        raise click.ClickException(f"{source} is not enabled (OPPSYNC_VENDORS)")
    run = Backfill(rt, source, push=push_now, enqueue=enqueue_ingest, dry_run=dry_run)
    with _config_errors(), _progress() as progress:
        listing = progress.add_task("Listing", total=len(run.vendors))
        for name in run.vendors:
            progress.update(listing, description=f"Listing {name}")
            run.list_vendor(name)
            progress.advance(listing)
        linking = progress.add_task("Deciding" if dry_run else "Linking", total=len(run.records))
        for record in run.records:
            run.apply(run.decide(record))
            progress.advance(linking)
    echo(run.report.summary())


def _progress() -> Any:
    """A progress display on stderr (stdout keeps the summary)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _interactive_runtime() -> Any:
    """The runtime, with info logs held back so they do not break the progress display."""
    from worker.logs import configure

    rt = _runtime()
    level = rt.settings.log_level
    configure(rt.settings.secret_values(), "WARNING" if level in ("INFO", "DEBUG") else level)
    return rt


def _runtime() -> Any:
    from worker.runtime import get_runtime

    with _config_errors():
        return get_runtime()


@contextmanager
def _config_errors() -> Iterator[None]:
    """A configuration problem, met at start or while running (a vendor's setting read
    when first used), ends the command as the pre-flight check does: every line, exit 2."""
    from worker.preflight import EXIT_CONFIG, explain

    try:
        yield
    except ConfigError as exc:
        click.echo(explain(list(exc.problems)), err=True)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":  # ``python -m worker.cli``: the same commands without the script
    main()
