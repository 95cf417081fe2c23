"""``oppsync deadletters``: list, show, replay and purge what could not be synced."""

from __future__ import annotations

import json

import click

from schemas.mapping import VENDORS
from worker.cli.group import main
from worker.cli.output import echo, runtime, when


@main.group()
def deadletters() -> None:
    """List, show, replay or purge dead letters."""


@deadletters.command("list")
@click.option("--vendor", type=click.Choice(VENDORS))
@click.option("--limit", default=50, show_default=True)
def deadletters_list(vendor: str | None, limit: int) -> None:
    """The newest dead letters first."""
    from worker.store.deadletters import DeadLetters

    letters = DeadLetters(runtime().redis).list(vendor=vendor, limit=limit)
    if not letters:
        echo("No dead letters.")
        return
    for letter in letters:
        echo(
            f"{letter.id}  {when(letter.at)}  {letter.kind:6} {letter.vendor:12} "
            f"attempts={letter.attempts}  {letter.reason}: {letter.message[:80]}"
        )


@deadletters.command("show")
@click.argument("letter_id")
def deadletters_show(letter_id: str) -> None:
    """Everything a dead letter holds."""
    from dataclasses import asdict

    from worker.store.deadletters import DeadLetters

    letter = DeadLetters(runtime().redis).get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id}")
    echo(json.dumps(asdict(letter), indent=2, default=str))


@deadletters.command("replay")
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def deadletters_replay(letter_ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead letters back on their queues (idempotent: replaying twice runs once)."""
    from worker.store.deadletters import DeadLetters
    from worker.tasks import replay_dead_letter

    ids = list(letter_ids)
    if replay_all:
        ids = [x.id for x in DeadLetters(runtime().redis).list(limit=1_000_000)]
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
    from worker.store.deadletters import DeadLetters

    letters = DeadLetters(runtime().redis)
    if letter_ids:
        for letter_id in letter_ids:
            gone = letters.take(letter_id) is not None
            echo(f"{letter_id}: " + ("purged" if gone else "not found"))
        return
    if not (vendor or purge_all):
        raise click.UsageError("name dead letters to purge, or --vendor V, or --all")
    count = letters.purge(vendor=vendor)
    echo(f"Purged {count} dead letters.")
