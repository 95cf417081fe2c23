"""``oppsync config check``: the pre-flight check and each vendor's probe, on demand."""

from __future__ import annotations

import sys

import click

from worker.cli.group import main


@main.group()
def config() -> None:
    """Configuration commands."""


@config.command("check")
def config_check() -> None:
    """Validate configuration and mapping, then make one harmless read per vendor. Exit
    status 2 when the configuration is refused, 1 when Redis or a vendor fails."""
    from worker.configcheck import check

    sys.exit(check(click.echo))
