"""What every command shares: escaped printing, times, progress, the runtime, config errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from worker.errors import ConfigError
from worker.terminal import printable


def echo(text: str = "") -> None:
    """Print one output of a command: every output may carry vendor data, so control
    characters are escaped (``worker.terminal``)."""
    click.echo(printable(text))


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def progress_bars() -> Any:
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


def interactive_runtime() -> Any:
    """The runtime, with info logs held back so they do not break the progress display."""
    from worker.logs import configure

    rt = runtime()
    level = rt.settings.log_level
    configure(rt.settings.secret_values(), "WARNING" if level in ("INFO", "DEBUG") else level)
    return rt


def runtime() -> Any:
    """The worker's runtime (settings, Redis, adapters); a config problem exits 2."""
    from worker.runtime import get_runtime

    with config_errors():
        return get_runtime()


@contextmanager
def config_errors() -> Iterator[None]:
    """A configuration problem, met at start or while running (a vendor's setting read
    when first used), ends the command as the pre-flight check does: every line, exit 2."""
    from worker.preflight import EXIT_CONFIG, explain

    try:
        yield
    except ConfigError as exc:
        click.echo(explain(list(exc.problems)), err=True)
        sys.exit(EXIT_CONFIG)
