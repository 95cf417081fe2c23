"""The line for a vendor's quota: places kept by the writes that found no room.

A push that finds its vendor's quota used up keeps places in line (``worker/ratelimit``
takes them in the same atomic step as its check) and is scheduled for their time; the
``Reservation`` travels with its retry, and ``in_line`` hands it back to the quota when the
push runs again. ``plan`` says how many requests a write sends, so a write keeps them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

#: How early a woken job may be and still wait for its place (longer waits are a long
#: retry's intermediate hop), and how long spending a place may wait for the requests sent
#: to leave room. A job woken late still spends its place: the check at send time keeps the
#: window (``worker/ratelimit.py`` SPEND), and a place given up would hold its slot until it
#: left the window. A burst of places comes due together (a sliding window frees a burst
#: one window after it was sent), and a busy pool starts the last of them seconds late.
HOLD_SECONDS = 2.0
#: How far ahead a push keeps its place (its retry is scheduled for then): any distance.
IN_LINE_MS = 10**12


@dataclass
class Reservation:
    """Places kept in one vendor's line (members ``<name>:1`` … ``<name>:<count>``), usable
    from ``at`` (our clock); ``used`` of them are spent. Travels with a push's retry
    (``as_job``) so the woken push sends on them."""

    vendor: str
    at: float
    name: str
    count: int
    used: int = 0

    @property
    def slots(self) -> int:
        return self.count - self.used

    def as_job(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "at": self.at, "name": self.name, "count": self.count,
                "used": self.used}  # fmt: skip

    @classmethod
    def from_job(cls, job: dict[str, Any] | None) -> Reservation | None:
        if not job:
            return None
        return cls(str(job["vendor"]), float(job["at"]), str(job["name"]), int(job["count"]),
                   int(job.get("used", 0)))  # fmt: skip

    def next_member(self, vendor: str) -> str | None:
        """The place to spend next, once its time has come (a job woken a little early
        waits; a late one spends it at once); ``None`` when none is kept for ``vendor`` or
        the job woke far too early."""
        if vendor != self.vendor or self.slots <= 0:
            return None
        early = self.at - time.time()
        if early > HOLD_SECONDS:
            self.used = self.count  # far too early: the job asks again
            return None
        if early > 0:
            time.sleep(early)
        self.used += 1
        return f"{self.name}:{self.used}"


@dataclass
class Line:
    """What a push brings to the quota: the places it kept last time, and how many requests
    its write needs (``plan``), which is how many places it keeps when there is no room."""

    held: Reservation | None = None
    needs: int = 1
    started: bool = False  # a request of the write was sent


#: Set while a push runs (``in_line``): it keeps its place in line when there is no room.
_line: ContextVar[Line | None] = ContextVar("oppsync_quota_line", default=None)


@contextmanager
def in_line(held: Reservation | None = None) -> Iterator[Line]:
    """Within this block (one push), a call that finds no room keeps places in line and
    raises ``OwnQuota`` carrying them (``reserved``); ``held``: places kept by the push's
    previous attempt, spent before asking Redis."""
    token = _line.set(Line(held))
    try:
        yield _line.get()  # type: ignore[misc]
    finally:
        _line.reset(token)


@contextmanager
def plan(requests: int) -> Iterator[None]:
    """The write in this block sends about ``requests`` requests: that many places are kept
    for it should its vendor's quota be used up (so its retry is not refused halfway)."""
    line = _line.get()
    if line is None:
        yield
        return
    # a new write: its first request takes its next ones' places with it
    before, line.needs, line.started = line.needs, max(1, requests), False
    try:
        yield
    finally:
        line.needs = before


def current_line() -> Line | None:
    """The line of the push running in this context, if one is."""
    return _line.get()
