"""An opportunity as stored: ``Record`` read from its hash and document, and its companions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from schemas.opportunity import Opportunity, load
from worker.store.keys import CODE_VENDORS
from worker.store.packing import from_micros, from_millis, full_digest, joined, unpack

#: ``last_event`` when the last event is also the last change (stored once, not twice).
SAME_AS_CHANGE = "="


def new_key() -> str:
    return f"opp_{uuid.uuid4().hex[:20]}"


@dataclass
class Record:
    """One opportunity's stored state, as read from its hash."""

    key: str
    state: Opportunity = field(default_factory=Opportunity)
    times: dict[str, float] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    ids: dict[str, str] = field(default_factory=dict)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)
    intents: dict[str, float] = field(default_factory=dict)
    #: The name each create in flight carried (what a look-up for it searches by).
    intent_names: dict[str, str] = field(default_factory=dict)
    wrote_at: dict[str, float] = field(default_factory=dict)
    last_event: dict[str, Any] | None = None
    exists: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    last_change: dict[str, Any] | None = None
    writing: dict[str, float] = field(default_factory=dict)
    rechecks: set[str] = field(default_factory=set)
    #: The last write to each vendor whose answer was lost: (when it was sent, its
    #: fingerprint). It may commit late, after a newer write of ours.
    unsettled: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: Values the mapping could not read, by vendor: {vendor field: value} (``oppsync show``).
    unmapped: dict[str, dict[str, str]] = field(default_factory=dict)
    #: How many pieces the stored document was in (a shorter one deletes the rest).
    pieces: int = 0

    def unanswered_since_written(self, vendor: str) -> bool:
        """Whether a write to ``vendor`` lost its answer after our last acknowledged one: what
        the vendor holds is then unknown (that write may yet commit), whatever ``written``
        says."""
        unsettled = self.unsettled.get(vendor)
        return unsettled is not None and unsettled[0] > self.wrote_at.get(vendor, 0.0)

    def rule(self, name: str) -> str:
        """The rule that decided field ``name``: a stored one, else the default."""
        if name in self.rules:
            return self.rules[name]
        source = self.sources.get(name)
        return f"last writer wins: from {source}" if source else ""


@dataclass(frozen=True)
class PollMark:
    """How far polling of one vendor got: the newest ``updatedAt`` seen, and when the last
    complete full scan ended (epoch seconds)."""

    mark: datetime | None = None
    full_at: float | None = None


@dataclass(frozen=True)
class Linked:
    """What the store says about one linked vendor record: its opportunity, the fingerprint
    of what the vendor holds (``written:<v>``) and the newest source time seen from it."""

    key: str
    written: str | None = None
    seen: str | None = None


@dataclass
class HeldLock:
    """A per-record (or per record and vendor) lock held by its token; freed once."""

    name: str
    token: str
    held: bool = True


@dataclass
class HandedOver:
    """What an ingest hands its fan-out: the (record, vendor) locks it could take for the
    vendors to write, and the record as read under them."""

    record: Record
    locks: dict[str, HeldLock]


def _per_vendor(raw: dict[str, str]) -> dict[str, dict[str, str]]:
    """The hash's per-vendor fields by kind: {kind: {vendor: value}} (``keys.field``)."""
    found: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        kind, colon, code = name.partition(":")
        if colon and code in CODE_VENDORS:
            found.setdefault(kind, {})[CODE_VENDORS[code]] = value
    return found


def _unsettled(raw: str) -> tuple[float, str]:
    """``s:<v>``: when the unanswered write was sent (ms) and what it carried (digest)."""
    sent, _, written = raw.partition(" ")
    return from_millis(sent), full_digest(written)


def record_from(key: str, raw: dict[str, str]) -> Record:
    """A ``Record`` from its hash's fields (none: not stored yet)."""
    if not raw:
        return Record(key=key)
    doc, count = joined(raw)
    parts: dict[str, Any] = unpack(doc) if doc is not None else {}
    last_change = parts.get("last_change")
    last_event = parts.get("last_event")
    if last_event == SAME_AS_CHANGE:
        last_event = last_change
    per = _per_vendor(raw)

    def times(kind: str) -> dict[str, float]:
        return {v: from_millis(t) for v, t in per.get(kind, {}).items()}

    return Record(
        key=key,
        state=_state(doc) if doc is not None else Opportunity(),
        times=parts.get("times", {}),
        rules=parts.get("rules", {}),
        deleted=raw.get("deleted") == "1",
        ids=per.get("i", {}),
        extra={v: dict(parse_qsl(x)) for v, x in per.get("x", {}).items()},
        written={v: full_digest(w) for v, w in per.get("w", {}).items()},
        seen={v: from_micros(n) for v, n in per.get("n", {}).items()},
        intents=times("p"),
        intent_names=per.get("q", {}),
        wrote_at=times("t"),
        last_event=last_event,
        exists=doc is not None,
        sources=parts.get("sources", {}),
        last_change=last_change,
        writing=times("g"),
        rechecks=set(per.get("r", {})),
        unsettled={v: _unsettled(x) for v, x in per.get("s", {}).items()},
        unmapped=parts.get("unmapped", {}),
        pieces=count,
    )


@lru_cache(maxsize=1024)
def _state(doc: str) -> Opportunity:
    """The canonical value in document ``doc``. Cached (values are frozen): each push of an
    event reads the same document, and a marshmallow load is most of reading a record."""
    return load(unpack(doc)["state"])
