"""``oppsync reconcile`` and ``oppsync backfill``: compare the vendors and repair or adopt."""

from __future__ import annotations

import sys

import click

from schemas.mapping import VENDORS
from worker.cli.group import main
from worker.cli.output import config_errors, echo, interactive_runtime, progress_bars


@main.command()
@click.option("--vendor", type=click.Choice(VENDORS), help="Compare and repair this vendor only.")
def reconcile(vendor: str | None) -> None:
    """Compare every linked opportunity with what each vendor really holds, and repair drift
    (a missed webhook, a manual edit); prints what it changed. Exit status 1 on errors."""
    from worker.tasks import ingest_now, push_now
    from worker.upkeep.reconcile import Reconciler, exclusive

    rt = interactive_runtime()
    if vendor and not rt.settings.enabled(vendor):
        raise click.ClickException(f"{vendor} is not enabled (OPPSYNC_VENDORS)")
    with config_errors(), exclusive(rt) as keep_alive:
        if keep_alive is None:
            raise click.ClickException("a reconciliation is already running; try again later")
        reconciler = Reconciler(
            rt, feed=ingest_now, push=push_now, vendor=vendor, keep_alive=keep_alive
        )
        with progress_bars() as progress:
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
    from worker.tasks import enqueue_ingest, push_now
    from worker.upkeep.backfill import Backfill

    rt = interactive_runtime()
    if not rt.settings.enabled(source):
        raise click.ClickException(f"{source} is not enabled (OPPSYNC_VENDORS)")
    run = Backfill(rt, source, push=push_now, enqueue=enqueue_ingest, dry_run=dry_run)
    with config_errors(), progress_bars() as progress:
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
