"""The Celery queues, written once: ``ingest``, one ``push.<vendor>`` per vendor, ``poll``.

The Procfile's ``worker`` line lists the same (``-Q``; tests/unit/test_queues.py checks it).
Importing this module reads no configuration, so the web process can name the queues too.
"""

from __future__ import annotations

from schemas.mapping import VENDORS

QUEUES: tuple[str, ...] = ("ingest", *(f"push.{v}" for v in VENDORS), "poll")


def queue_for(vendor: str) -> str:
    """The queue of retried pushes to ``vendor``: a vendor that is down delays no other."""
    return f"push.{vendor}"
