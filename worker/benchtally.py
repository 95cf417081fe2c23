"""Counting the benchmark's events where they land: in the vendor simulators.

Every benchmark deal is named ``Bench deal <n>``. A background thread reads each target
simulator's request log: the first acknowledged write of deal ``n`` to a vendor is when that
vendor holds it, and an event is complete when every target does. Records of deals that
every target acknowledged a while ago are then taken out of the simulators and counted, so
a run of 100,000 events neither fills memory nor slows the simulators' linear look-ups:
a record that appears a second time is still counted (a duplicate), a deal a vendor never
got is missing at the end (lost).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

MARK = re.compile(r"Bench deal (\d{8})")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})


def deal_number(data: Any) -> int | None:
    """The benchmark event a vendor record or request body is about, if any."""
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if name is None and isinstance(data.get("opportunityInformation"), dict):
        name = data["opportunityInformation"].get("name")  # iCloudReady
    found = MARK.fullmatch(name) if isinstance(name, str) else None
    return int(found.group(1)) if found else None


def is_deal_write(entry: Any) -> bool:
    """A write of the opportunity itself, acknowledged (not a contact, a sign-in or a list)."""
    if entry.method not in WRITE_METHODS or entry.status >= 300:
        return False
    if "contacts" in entry.path or "signin" in entry.path:
        return False
    return "action=" not in entry.query or "addOrUpdate" in entry.query


class Tally:
    """Acknowledgements and records per deal and vendor, read from ``sims``."""

    def __init__(
        self, sims: dict[str, Any], *, keep_seconds: float = 20.0, keep_requests: bool = False
    ) -> None:
        self.sims = sims
        self.targets = tuple(sims)
        self.keep_seconds = keep_seconds
        #: vendor -> deal -> time its first write was acknowledged
        self.acks: dict[str, dict[int, float]] = {v: {} for v in self.targets}
        #: vendor -> deal -> acknowledged writes / records counted
        self.writes: dict[str, Counter[int]] = {v: Counter() for v in self.targets}
        self.records: dict[str, Counter[int]] = {v: Counter() for v in self.targets}
        #: vendor -> (time, status) of every request, when ``keep_requests`` (quota checks)
        self.requests: dict[str, list[tuple[float, int]]] = {v: [] for v in self.targets}
        self.keep_requests = keep_requests
        self._taken: dict[str, list[Any]] = {v: [] for v in self.targets}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-tally", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._round(final=False)

    def close(self) -> None:
        """Stop reading; the logs and every record left are counted."""
        self._stop.set()
        self._thread.join()
        self._round(final=False)
        time.sleep(0.2)  # a request logging into a list just taken has finished by now
        self._round(final=True)

    def _round(self, *, final: bool) -> None:
        for vendor in self.targets:
            sim = self.sims[vendor]
            # Swap the log for an empty one; the list taken is read one round later, when
            # no request thread can still be appending to it.
            taken, sim.log = sim.log, []
            ready, self._taken[vendor] = self._taken[vendor], [taken]
            if final:
                ready.append(taken)
                self._taken[vendor] = []
            with self._lock:
                for entries in ready:
                    self._read(vendor, entries)
        self._harvest(final=final)

    def _read(self, vendor: str, entries: Iterable[Any]) -> None:
        acks, writes = self.acks[vendor], self.writes[vendor]
        for entry in entries:
            if self.keep_requests:
                self.requests[vendor].append((entry.at, entry.status))
            if not is_deal_write(entry):
                continue
            number = deal_number(entry.body)
            if number is not None:
                writes[number] += 1
                acks.setdefault(number, entry.at)

    def _harvest(self, *, final: bool) -> None:
        now = time.time()
        for vendor in self.targets:
            sim = self.sims[vendor]
            stores = [sim.records] + ([sim.contacts] if vendor == "leadway" else [])
            with sim.state_lock, self._lock:
                for store in stores:
                    for record_id, record in list(store.items()):
                        number = deal_number(record)
                        if number is None:
                            continue
                        done = self._complete_at(number)
                        if final or (done is not None and now - done > self.keep_seconds):
                            del store[record_id]
                            if store is sim.records:
                                self.records[vendor][number] += 1

    def _complete_at(self, number: int) -> float | None:
        times = [self.acks[v].get(number) for v in self.targets]
        return None if None in times else max(times)  # type: ignore[type-var]

    def complete_at(self, number: int) -> float | None:
        """When the last target acknowledged deal ``number`` (None: not yet)."""
        with self._lock:
            return self._complete_at(number)

    def completed(self, numbers: Iterable[int]) -> dict[int, float]:
        with self._lock:
            return {n: t for n in numbers if (t := self._complete_at(n)) is not None}

    def acknowledged(self, vendor: str, numbers: Iterable[int]) -> int:
        with self._lock:
            return sum(1 for n in numbers if n in self.acks[vendor])

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
