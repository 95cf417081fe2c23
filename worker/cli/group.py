"""The ``oppsync`` command group: its help, its version, nothing else."""

from __future__ import annotations

import click

from worker import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oppsync")
def main() -> None:
    """oppsync keeps sales opportunities in sync across SIRO, Leadway, iVvy, Salescaling and
    iCloudReady. See docs/configuration.md for configuration, docs/operations.md for these
    commands."""
