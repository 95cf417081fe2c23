"""Counting the benchmark's events where they land: in the vendor simulators.

A background thread asks each simulator's process (``worker/bench/sims.py``) every second
what it saw: when a vendor first acknowledged deal ``n``'s write, the event is there; when
every target has, the event is complete. At the end each deal must be exactly one record in
every target: none is lost, more is a duplicate.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from worker.bench.lean import Seen
from worker.bench.sims import RemoteSimulator


class Tally:
    """Acknowledgements, writes and records per deal and vendor, gathered from ``sims``."""

    def __init__(self, sims: dict[str, RemoteSimulator]) -> None:
        self.sims = sims
        self.targets = tuple(sims)
        #: vendor -> deal -> time its first write was acknowledged
        self.acks: dict[str, dict[int, float]] = {v: {} for v in self.targets}
        #: vendor -> deal -> acknowledged writes / records counted
        self.writes: dict[str, Counter[int]] = {v: Counter() for v in self.targets}
        self.records: dict[str, Counter[int]] = {v: Counter() for v in self.targets}
        #: vendor -> (time, status) of every request (for simulators that keep them)
        self.requests: dict[str, list[tuple[float, int]]] = {v: [] for v in self.targets}
        #: vendor -> (kind, status) -> requests; vendor -> fault -> injected
        self.calls: dict[str, Counter[tuple[str, int]]] = {v: Counter() for v in self.targets}
        self.faults: dict[str, Counter[str]] = {v: Counter() for v in self.targets}
        #: When a round last found any request at any simulator (``time.monotonic``).
        self.last_request = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-tally", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._round(final=False)

    def close(self) -> None:
        """Stop asking; what the simulators still hold is counted."""
        self._stop.set()
        self._thread.join()
        self._round(final=True)

    def _round(self, *, final: bool) -> None:
        for vendor, sim in self.sims.items():
            self._add(vendor, sim.drain(final=final))

    def _add(self, vendor: str, drained: Seen) -> None:
        with self._lock:
            if drained.calls:
                self.last_request = time.monotonic()
            self.calls[vendor].update(drained.calls)
            self.faults[vendor].update(drained.faults)
            acks = self.acks[vendor]
            for number, at in drained.acks:
                acks.setdefault(number, at)
            self.writes[vendor].update(drained.writes)
            self.records[vendor].update(drained.records)
            self.requests[vendor].extend(drained.requests)

    def _complete_at(self, number: int) -> float | None:
        times = [self.acks[v].get(number) for v in self.targets]
        return None if None in times else max(times)  # type: ignore[type-var]

    def completed(self, numbers: Iterable[int]) -> dict[int, float]:
        """When the last target acknowledged each deal that every target holds."""
        with self._lock:
            return {n: t for n in numbers if (t := self._complete_at(n)) is not None}

    def acknowledged(self, vendor: str, numbers: Iterable[int]) -> int:
        with self._lock:
            return sum(1 for n in numbers if n in self.acks[vendor])

    def quiet_for(self) -> float:
        """Seconds since a simulator last saw a request."""
        with self._lock:
            return time.monotonic() - self.last_request

    def calls_by_kind(self, vendor: str) -> dict[str, dict[str, int]]:
        """Requests ``vendor`` got, by kind then status (JSON-ready)."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (kind, status), n in sorted(self.calls[vendor].items()):
                out.setdefault(kind, {})[str(status)] = n
            return out

    def first_request(self, vendor: str) -> float | None:
        with self._lock:
            return min((t for t, _ in self.requests[vendor]), default=None)

    def correctness(self, numbers: Iterable[int]) -> dict[str, Any]:
        """After ``close``: events some target never got (``lost``), records beyond one per
        deal and vendor (``duplicated``), and writes beyond the first (``extra_writes``)."""
        lost: Counter[str] = Counter()
        duplicated: Counter[str] = Counter()
        extra_writes: Counter[str] = Counter()
        count = lost_events = 0
        for number in numbers:
            count += 1
            missing = False
            for vendor in self.targets:
                held = self.records[vendor][number]
                if held == 0:
                    lost[vendor] += 1
                    missing = True
                elif held > 1:
                    duplicated[vendor] += held - 1
                extra_writes[vendor] += max(0, self.writes[vendor][number] - 1)
            lost_events += missing
        return {
            "events": count,
            "targets": list(self.targets),
            "lost": lost_events,
            "duplicated": sum(duplicated.values()),
            "lost_by_vendor": dict(lost),
            "duplicated_by_vendor": dict(duplicated),
            "extra_writes_by_vendor": dict(extra_writes),
        }
