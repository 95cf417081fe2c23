"""``oppsync show``: one opportunity as every vendor holds it, with provenance."""

from __future__ import annotations

import click

from worker.cli.group import main
from worker.cli.output import echo, runtime


@main.command()
@click.argument("ref")
def show(ref: str) -> None:
    """Show one opportunity in every vendor: REF is a canonical key or VENDOR:ID."""
    from worker.overview import describe, resolve

    rt = runtime()
    key = resolve(rt, ref)
    if key is None:
        raise click.ClickException(f"no opportunity known as {ref!r}")
    echo(describe(rt, key))
