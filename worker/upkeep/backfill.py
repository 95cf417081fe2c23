"""Backfill: link the opportunities that already exist in one vendor to the other four.

For every record of the source vendor that is not linked yet, each other vendor is searched
for a record of the same deal (``match_score``: the same name, and the same contact email or
phone where both vendors hold one) before anything is created. Matches are linked to one
canonical key; then the source record and the matched ones are merged by the pipeline (last
writer wins by each vendor's own ``updatedAt``, so a field the source cannot hold is taken
from a vendor that can), and every vendor that does not hold the merged deal yet is written:
matched records are updated, vendors without a match get a create.

A record matching more than one record in a vendor equally well is left unlinked and
reported (guessing would merge two deals). ``dry_run`` lists and decides, and changes nothing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.envelope import Envelope
from schemas.opportunity import Contact, Opportunity
from worker.errors import InvalidPayload
from worker.logs import log
from worker.runtime import Runtime
from worker.store.records import new_key
from worker.sync.ingest import ingest
from worker.sync.merge import plan
from worker.upkeep.polling import poll_envelope

#: Makes one vendor hold the current state of one opportunity: (key, vendor, cause) -> outcome.
Push = Callable[[str, str, dict[str, Any]], str]
#: Queues one envelope for the ingest task (its retries), when running it now failed.
Enqueue = Callable[[Envelope], None]


def _name(value: str | None) -> str:
    return re.sub(r"\s+", " ", value or "").strip().casefold()


def _email(contact: Contact | None) -> str:
    return (contact.email or "").strip().casefold() if contact else ""


def _phone(contact: Contact | None) -> str:
    """Digits only, the last nine when longer (``+61 400 111 222`` == ``0400111222``)."""
    digits = re.sub(r"\D", "", contact.phone or "") if contact else ""
    return digits[-9:] if len(digits) > 9 else digits


def match_score(a: Opportunity, b: Opportunity) -> int:
    """0: not the same deal; 1: the same name, and no contact both vendors hold to compare;
    2: the same name and the same contact email (else phone)."""
    if not _name(a.name) or _name(a.name) != _name(b.name):
        return 0
    for same in (_email, _phone):
        mine, theirs = same(a.contact), same(b.contact)
        if mine and theirs:
            return 2 if mine == theirs else 0
    return 1


@dataclass(frozen=True)
class Candidate:
    vendor: str
    vendor_id: str
    opp: Opportunity
    key: str | None  # the opportunity it is already linked to


@dataclass
class Item:
    """What backfill decided for one source record."""

    vendor_id: str
    name: str | None
    verdict: str  # link | linked | ambiguous | conflict | invalid | deleted
    key: str | None = None  # an existing opportunity joined (a match already linked)
    matches: dict[str, Candidate] = field(default_factory=dict)
    creates: tuple[str, ...] = ()
    detail: str = ""
    outcomes: dict[str, str] = field(default_factory=dict)

    def line(self, source: str, dry_run: bool) -> str:
        head = f"{source}:{self.vendor_id} {self.name!r}"
        if self.verdict != "link":
            return f"{head}: {self.verdict}" + (f" ({self.detail})" if self.detail else "")
        parts = []
        if self.matches:
            found = ", ".join(f"{v}:{c.vendor_id}" for v, c in sorted(self.matches.items()))
            parts.append(f"{'would link' if dry_run else 'linked'} {found}")
        if dry_run and self.creates:
            parts.append(f"would create in {', '.join(self.creates)}")
        if self.outcomes:
            done = ", ".join(f"{v} {o}" for v, o in sorted(self.outcomes.items()))
            parts.append(f"written: {done}")
        if self.detail:
            parts.append(self.detail)
        return f"{head}: " + ("; ".join(parts) or "nothing to do")


@dataclass
class BackfillReport:
    source: str
    dry_run: bool
    items: list[Item] = field(default_factory=list)

    def summary(self) -> str:
        verdicts = Counter(i.verdict for i in self.items)
        linked = Counter(v for i in self.items if i.verdict == "link" for v in i.matches)
        created = Counter(v for i in self.items if i.verdict == "link" for v in i.creates)
        would = "would be " if self.dry_run else ""
        lines = [
            f"Backfill from {self.source}{' (dry run: nothing changed)' if self.dry_run else ''}:"
            f" {len(self.items)} records, {verdicts['linked']} already linked.",
            f"Matched existing records, {would}linked: {sum(linked.values())}{_per(linked)}",
            f"Records {would}created: {sum(created.values())}{_per(created)}",
            f"Left alone: {verdicts['ambiguous']} ambiguous, {verdicts['conflict']} in conflict, "
            f"{verdicts['invalid']} invalid, {verdicts['deleted']} deleted",
        ]
        lines += [
            f"  {i.line(self.source, self.dry_run)}" for i in self.items if i.verdict != "linked"
        ]
        return "\n".join(lines)


def _per(counts: Counter[str]) -> str:
    return f" ({', '.join(f'{v} {n}' for v, n in sorted(counts.items()))})" if counts else ""


class Backfill:
    """One backfill run from ``source``: ``list_vendor`` every vendor, then ``decide`` and
    ``apply`` each source record (the CLI drives these with progress bars)."""

    def __init__(
        self, rt: Runtime, source: str, *, push: Push, enqueue: Enqueue, dry_run: bool = False
    ) -> None:
        self.rt = rt
        self.source = source
        self.push = push
        self.enqueue = enqueue
        self.dry_run = dry_run
        self.others = tuple(v for v in rt.settings.vendors if v != source)
        self.records: list[dict[str, Any]] = []
        #: vendor -> normalised name -> that vendor's records of that name
        self.candidates: dict[str, dict[str, list[Candidate]]] = {}
        self.claimed: set[tuple[str, str]] = set()
        self.report = BackfillReport(source, dry_run)
        self.run_id = uuid.uuid4().hex

    @property
    def vendors(self) -> tuple[str, ...]:
        return (self.source, *self.others)

    def list_vendor(self, vendor: str) -> None:
        """Read every record of ``vendor`` (the source's to backfill, the others' to match)."""
        adapter = self.rt.adapters[vendor]
        if vendor == self.source:
            self.records = list(adapter.list_records())
            return
        found: dict[str, list[Candidate]] = {}
        for record in adapter.list_records():
            try:
                vendor_id = adapter.record_id(record)
                opp = adapter.to_canonical(record)
            except InvalidPayload:
                continue
            if not opp.deleted and _name(opp.name):
                key = self.rt.store.key_for(vendor, vendor_id)
                found.setdefault(_name(opp.name), []).append(Candidate(vendor, vendor_id, opp, key))
        self.candidates[vendor] = found

    def run(self) -> BackfillReport:
        for vendor in self.vendors:
            self.list_vendor(vendor)
        for record in self.records:
            self.apply(self.decide(record))
        return self.report

    # -- deciding ------------------------------------------------------------------------
    def decide(self, record: dict[str, Any]) -> Item:
        """Which records of the others are this source record's deal, and what is missing."""
        adapter = self.rt.adapters[self.source]
        try:
            vendor_id = adapter.record_id(record)
            opp = adapter.to_canonical(record)
        except InvalidPayload as exc:
            item = Item(str(record.get("id") or record.get("_id") or "?"), None, "invalid")
            item.detail = str(exc)
            return self._add(item)
        if self.rt.store.key_for(self.source, vendor_id):
            return self._add(Item(vendor_id, opp.name, "linked"))
        if opp.deleted:
            return self._add(Item(vendor_id, opp.name, "deleted"))
        item = Item(vendor_id, opp.name, "link")
        ambiguous = []
        for vendor in self.others:
            best = self._best(vendor, opp)
            if len(best) > 1:
                ambiguous.append(f"{vendor} has {len(best)} records that match")
            elif best:
                item.matches[vendor] = best[0]
        keys = {c.key for c in item.matches.values() if c.key}
        if ambiguous:
            item.verdict, item.detail = "ambiguous", "; ".join(ambiguous)
        elif len(keys) > 1:
            item.verdict = "conflict"
            item.detail = (
                f"its matches are already linked to different opportunities {sorted(keys)}"
            )
        else:
            item.key = keys.pop() if keys else None
            held = self.rt.store.load(item.key).ids if item.key else {}
            for vendor, candidate in list(item.matches.items()):
                if candidate.key is None and vendor in held:
                    # The deal joined already has its record there: this one is a second.
                    del item.matches[vendor]
                    item.detail = f"{vendor}:{candidate.vendor_id} looks like a duplicate of "
                    item.detail += f"{vendor}:{held[vendor]}; left alone"
            item.creates = tuple(v for v in self.others if v not in item.matches and v not in held)
            self.claimed |= {(c.vendor, c.vendor_id) for c in item.matches.values()}
        return self._add(item)

    def _best(self, vendor: str, opp: Opportunity) -> list[Candidate]:
        """The best-matching records of ``vendor`` still free to link (not claimed by another
        source record, and not part of an opportunity that has a source record already)."""
        scored = [
            (match_score(opp, c.opp), c)
            for c in self.candidates.get(vendor, {}).get(_name(opp.name), [])
            if (c.vendor, c.vendor_id) not in self.claimed
        ]
        scored = [(s, c) for s, c in scored if s > 0 and self._free(c)]
        top = max((s for s, _ in scored), default=0)
        return [c for s, c in scored if s == top]

    def _free(self, candidate: Candidate) -> bool:
        if candidate.key is None:
            return True
        return self.source not in self.rt.store.load(candidate.key).ids

    def _add(self, item: Item) -> Item:
        self.report.items.append(item)
        return item

    # -- applying ------------------------------------------------------------------------
    def apply(self, item: Item) -> None:
        """Link, merge and write one decided record; nothing at all in a dry run."""
        if item.verdict != "link" or self.dry_run:
            return
        store = self.rt.store
        key = store.link(item.key or new_key(), self.source, item.vendor_id)
        merged = [(self.source, item.vendor_id)]
        for vendor, candidate in item.matches.items():
            if candidate.key is None:
                winner = store.link(key, vendor, candidate.vendor_id)
                if winner != key:
                    item.outcomes[vendor] = f"linked meanwhile to {winner}; left there"
                    continue
                merged.append((vendor, candidate.vendor_id))
        if self._merge(key, merged, item):
            for vendor in plan(self.rt, store.load(key)):
                item.outcomes[vendor] = self._push(key, vendor)
        log.info("backfill.linked", source=self.source, vendor_id=item.vendor_id, key=key)

    def _merge(self, key: str, merged: list[tuple[str, str]], item: Item) -> bool:
        """Run the pipeline's ingest on each linked record (read by id: the thin event makes
        it fetch the record as the vendor holds it). True when all were merged now; else the
        rest is queued for the ingest task, which retries and then writes the vendors."""
        for n, (vendor, vendor_id) in enumerate(merged):
            envelope = poll_envelope(
                vendor, vendor_id, {"id": vendor_id}, self.run_id, via="backfill"
            )
            try:
                ingest(self.rt, envelope, patient=False)
            except Exception as exc:  # noqa: BLE001 - handed to the task, which classifies it
                for rest_vendor, rest_id in merged[n:]:
                    self.enqueue(
                        poll_envelope(
                            rest_vendor, rest_id, {"id": rest_id}, self.run_id, via="backfill"
                        )
                    )
                    item.outcomes[rest_vendor] = "queued"
                log.warning("backfill.merge_queued", key=key, vendor=vendor, error=str(exc))
                return False
        return True

    def _push(self, key: str, vendor: str) -> str:
        cause = {
            "vendor": "backfill",
            "delivery": f"backfill:{self.run_id}",
            "correlation_id": self.run_id,
            "received_at": time.time(),
        }
        try:
            return self.push(key, vendor, cause)
        except Exception as exc:  # noqa: BLE001 - reported; reconciliation repairs it later
            return f"error: {exc}"
