"""What Flower and task events show of a job's arguments: the few that name it.

Celery would otherwise ``saferepr`` every argument of every message it sends
(``argsrepr``/``kwargsrepr``). For an event that is the vendor's whole record, names and
e-mail addresses that have no business in task metadata, and for every job it is CPU: a
tenth of a worker's while a backlog waits for a vendor's quota (each push in line is one
message; profiled 2026-12-07), and more than the rest of the message on the receiver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def event_shown(envelope: Mapping[str, Any]) -> str:
    """An event's ``envelope`` argument (``Envelope.to_dict()``), as it is shown."""
    return f"{envelope.get('vendor')} {envelope.get('delivery_id')}"


def shown(**arguments: Any) -> dict[str, str]:
    """``apply_async`` options that show ``arguments`` (those not ``None``) instead of every
    argument the job carries."""
    named = {name: value for name, value in arguments.items() if value is not None}
    return {"argsrepr": "()", "kwargsrepr": repr(named)}
