"""Telling our own writes, coming back as webhooks, from a person's change.

An event is ours when the vendor holds what we last wrote there, or something we wrote there
earlier (fingerprints are kept before each write is sent) and the record is not surely newer
than our last write: fetched after it, or stamped by the vendor later than it plus
``CLOCK_SKEW``. iVvy names the API key behind a change: ours is dropped first. When a record
might predate our last write to its vendor (a snapshot our write has since replaced), what that
vendor holds is "unsure" and it gets the merged state again. A write of ours whose answer was
lost may be committed late, even after a newer write of ours: a record holding exactly it is
ours whatever its time, and that vendor is written again (``late_commit``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.store.records import Record
from worker.store.writes import WROTE_TTL_SECONDS

#: Retries an unknown record waits for a create in flight in its vendor (our own echo).
ECHO_PATIENCE = 5


#: How far a vendor's clock may be ahead of ours: a record time within this of our last write
#: to that vendor cannot be told apart from that write.
CLOCK_SKEW = timedelta(seconds=2)


#: A write started longer ago than this is no longer in flight (its worker died).
WRITE_IN_FLIGHT = timedelta(seconds=60)


@dataclass(frozen=True)
class Sighting:
    """How new a vendor record an event brought is: the vendor's own time for it, and (for
    a record fetched rather than carried by the event) when our fetch started."""

    updated_at: datetime | None
    fetched_at: float | None = None

    def after_our_write(self, record: Record, vendor: str) -> bool | None:
        """Whether the record is surely newer than our last write to ``vendor`` (True), may
        be older than it or than a write still in flight (False), or cannot say (None). A
        write whose answer was lost counts as in flight until a later one is acknowledged:
        it may still commit."""
        if _writing(record, vendor) or record.unanswered_since_written(vendor):
            return False
        last = record.wrote_at.get(vendor)
        if last is None:
            return True
        if self.fetched_at is not None:  # both times are ours: no skew to allow for
            return self.fetched_at > last
        if self.updated_at is not None:
            return self.updated_at.timestamp() > last + CLOCK_SKEW.total_seconds()
        return None


def _writing(record: Record, vendor: str) -> bool:
    """A write to ``vendor`` started and not yet acknowledged (a dead worker's is old)."""
    started = record.writing.get(vendor)
    return started is not None and time.time() - started < WRITE_IN_FLIGHT.total_seconds()


def late_commit(record: Record, vendor: str, holds: str) -> bool:
    """Whether ``vendor``, holding ``holds``, committed our write whose answer was lost
    (``s:<v>``) rather than what we wrote there since: that write's echo (not a
    person's change, however late its time), and the vendor needs the merged state again.
    Recognised for as long as its fingerprint is remembered as ours."""
    unsettled = record.unsettled.get(vendor)
    if unsettled is None or holds == record.written.get(vendor):
        return False
    sent, wrote = unsettled
    return holds == wrote and time.time() - sent < WROTE_TTL_SECONDS
