"""``oppsync``: the operators' command line. Every command reads the service's environment."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from schemas.mapping import VENDORS
from worker.errors import ConfigError


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """oppsync keeps sales opportunities in sync across SIRO, Leadway, iVvy, Salescaling and
    iCloudReady. See README.md for configuration."""


@main.command()
@click.option("--sandbox", is_flag=True, help="Also start simulated vendors and use them.")
@click.option("--port", default=8000, show_default=True, help="Port of the web receiver.")
def run(sandbox: bool, port: int) -> None:
    """Run web, worker, beat and Flower locally (Redis is started when REDIS_URL is unset)."""
    from worker.localrun import run_stack

    sys.exit(run_stack(sandbox=sandbox, port=port))


@main.command()
@click.argument("ref")
def show(ref: str) -> None:
    """Show one opportunity in every vendor: REF is a canonical key or VENDOR:ID."""
    from worker.overview import describe, resolve

    rt = _runtime()
    key = resolve(rt, ref)
    if key is None:
        raise click.ClickException(f"no opportunity known as {ref!r}")
    click.echo(describe(rt, key))


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
        click.echo("No dead letters.")
        return
    for letter in letters:
        click.echo(
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
    click.echo(json.dumps(asdict(letter), indent=2, default=str))


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
        click.echo(f"{letter_id}: " + ("replayed" if letter else "not found (already replayed?)"))


@deadletters.command("purge")
@click.option("--vendor", type=click.Choice(VENDORS))
@click.confirmation_option(prompt="Delete these dead letters for good?")
def deadletters_purge(vendor: str | None) -> None:
    """Delete dead letters without replaying them."""
    from worker.deadletters import DeadLetters

    count = DeadLetters(_runtime().redis).purge(vendor=vendor)
    click.echo(f"Purged {count} dead letters.")


@main.group()
def config() -> None:
    """Configuration commands."""


@config.command("check")
def config_check() -> None:
    """Validate configuration and mapping, then make one harmless read per vendor."""
    from worker.configcheck import check

    ok = check(click.echo)
    sys.exit(0 if ok else 1)


def _runtime() -> Any:
    from worker.runtime import get_runtime

    try:
        return get_runtime()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
