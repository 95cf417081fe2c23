"""``oppsync``: the operators' command line. Every command reads the service's environment.

The group is in ``group.py``; each module beside it adds the commands of one area.
"""

from __future__ import annotations

from worker.cli import config, deadletters, local, repair, show  # noqa: F401 - registers them
from worker.cli.group import main

__all__ = ["main"]
