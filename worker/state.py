"""Everything oppsync keeps in Redis, and the only module that knows its key names.

Per opportunity (canonical key ``k``), one hash ``oppsync:opp:k`` holds:

    state            canonical value (JSON)           times   per-field source time (JSON)
    rules            which rule decided each field     deleted "1" once deleted (tombstone)
    sources          which vendor set each field       last_change the last event that changed it
    id:<v>           the record's id in vendor v       extra:<v>   ids v needed (JSON)
    written:<v>      fingerprint of what v holds       seen:<v>    newest source time from v
    intent:<v>       time a create in v was started    prov:<v>    what caused the last write
    writing:<v>      time a write to v was sent, until it is acknowledged
    recheck:<v>      v deleted it while we wrote there: check it is still gone
    last_event       the last event applied

plus ``oppsync:link:<v>:<vendor id>`` -> ``k`` (the link map, both directions with ``id:<v>``),
``oppsync:wrote:<v>:<fingerprint>`` -> ``k`` (short-lived: recognises our own echo even before
the link is stored), and the edge's delivery ids ``oppsync:delivery:<v>:<id>`` (72 h).
``oppsync:writes:k`` lists the latest writes to vendors with what caused each (provenance);
``oppsync:pushing:k:<v>`` marks a push waiting for its turn (newer changes ride along).

Polling keeps, per polled vendor, ``oppsync:poll:<v>`` (hash: ``mark``, the newest
``updatedAt`` seen; ``full_at``, when the last complete full scan ended) and
``oppsync:poll:<v>:ids`` (the ids seen since then: a linked id missing from the next complete
scan is a delete candidate).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from schemas.opportunity import Opportunity, dump, load

PREFIX = "oppsync"
WROTE_TTL_SECONDS = 3600
INTENT_FRESH_SECONDS = 120
RECENT_EVENTS = 200
WRITES_KEPT = 50  # provenance entries kept per opportunity
PUSH_PENDING_SECONDS = 30  # longer than a push waits for its lock (runtime.LOCK_WAIT_SECONDS)


def opp_key(key: str) -> str:
    return f"{PREFIX}:opp:{key}"


def link_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:link:{vendor}:{vendor_id}"


def delivery_key(vendor: str, delivery_id: str) -> str:
    return f"{PREFIX}:delivery:{vendor}:{delivery_id}"


def writes_key(key: str) -> str:
    return f"{PREFIX}:writes:{key}"


def pushing_key(key: str, vendor: str) -> str:
    return f"{PREFIX}:pushing:{key}:{vendor}"


def lock_name(key: str, vendor: str | None = None) -> str:
    return f"{PREFIX}:lock:{key}" + (f":{vendor}" if vendor else "")


INTENTS = f"{PREFIX}:intents"  # zset "<vendor>|<key>" -> time a create started
EVENTS = f"{PREFIX}:events"  # list of recent event outcomes (status page)
HEARTBEAT = f"{PREFIX}:worker:heartbeat"
OPPS_INDEX = f"{PREFIX}:opps"  # set of every canonical key (reconciliation)
RECONCILE_LOCK = f"{PREFIX}:lock:reconcile"  # one reconciliation at a time


def poll_key(vendor: str) -> str:
    return f"{PREFIX}:poll:{vendor}"


def poll_ids_key(vendor: str) -> str:
    return f"{PREFIX}:poll:{vendor}:ids"


def poll_lock_name(vendor: str) -> str:
    return f"{PREFIX}:lock:poll:{vendor}"


def new_key() -> str:
    return f"opp_{uuid.uuid4().hex[:20]}"


@dataclass
class Record:
    """One opportunity's stored state, as read from its hash."""

    key: str
    state: Opportunity = field(default_factory=Opportunity)
    times: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    ids: dict[str, str] = field(default_factory=dict)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)
    intents: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_event: dict[str, Any] | None = None
    exists: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    last_change: dict[str, Any] | None = None
    writing: dict[str, float] = field(default_factory=dict)
    rechecks: set[str] = field(default_factory=set)


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


def _per_vendor(raw: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}


class Store:
    """Typed access to oppsync's Redis state."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # -- opportunities ---------------------------------------------------------------------
    def load(self, key: str) -> Record:
        raw: dict[str, str] = self.redis.hgetall(opp_key(key))  # type: ignore[assignment]
        if not raw:
            return Record(key=key)
        return Record(
            key=key,
            state=load(json.loads(raw["state"])) if "state" in raw else Opportunity(),
            times=json.loads(raw.get("times", "{}")),
            rules=json.loads(raw.get("rules", "{}")),
            deleted=raw.get("deleted") == "1",
            ids=_per_vendor(raw, "id:"),
            extra={v: json.loads(x) for v, x in _per_vendor(raw, "extra:").items()},
            written=_per_vendor(raw, "written:"),
            seen=_per_vendor(raw, "seen:"),
            intents={v: float(t) for v, t in _per_vendor(raw, "intent:").items()},
            provenance={v: json.loads(p) for v, p in _per_vendor(raw, "prov:").items()},
            last_event=json.loads(raw["last_event"]) if "last_event" in raw else None,
            exists="state" in raw,
            sources=json.loads(raw.get("sources", "{}")),
            last_change=json.loads(raw["last_change"]) if "last_change" in raw else None,
            writing={v: float(t) for v, t in _per_vendor(raw, "writing:").items()},
            rechecks=set(_per_vendor(raw, "recheck:")),
        )

    def save_state(
        self,
        record: Record,
        *,
        source: str,
        source_seen: datetime | None,
        source_holds: str,
        event: dict[str, Any],
    ) -> None:
        """Store the merged canonical state and what the source vendor now holds."""
        values: dict[str, str] = {
            "state": json.dumps(dump(record.state)),
            "times": json.dumps(record.times),
            "rules": json.dumps(record.rules),
            "sources": json.dumps(record.sources),
            f"written:{source}": source_holds,
            "last_event": json.dumps(event),
        }
        if event.get("fields"):
            values["last_change"] = json.dumps(event)
        if record.deleted:
            values["deleted"] = "1"
        if source_seen is not None:
            values[f"seen:{source}"] = source_seen.isoformat()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(record.key), mapping=values)
        pipe.sadd(OPPS_INDEX, record.key)
        pipe.execute()

    def record_write(
        self,
        key: str,
        vendor: str,
        *,
        vendor_id: str,
        fingerprint: str,
        extra: dict[str, str],
        provenance: dict[str, Any],
    ) -> None:
        """After a vendor acknowledged a write: link, fingerprint, provenance; intent done."""
        pipe = self.redis.pipeline(transaction=False)
        values = {
            f"id:{vendor}": vendor_id,
            f"written:{vendor}": fingerprint,
            f"prov:{vendor}": json.dumps(provenance),
        }
        if extra:
            values[f"extra:{vendor}"] = json.dumps(extra)
        pipe.hset(opp_key(key), mapping=values)
        pipe.hdel(opp_key(key), f"intent:{vendor}", f"writing:{vendor}")
        pipe.set(link_key(vendor, vendor_id), key)
        pipe.set(f"{PREFIX}:wrote:{vendor}:{fingerprint}", key, ex=WROTE_TTL_SECONDS)
        pipe.zrem(INTENTS, f"{vendor}|{key}")
        pipe.execute()

    def mark_written(self, key: str, vendor: str, fingerprint: str) -> None:
        self.redis.hset(opp_key(key), f"written:{vendor}", fingerprint)

    # -- provenance and coalescing --------------------------------------------------------
    def note_write(self, key: str, vendor: str, provenance: dict[str, Any]) -> None:
        """Keep what caused one write (or delete) in ``vendor``: ``prov:<v>`` and the list."""
        entry = json.dumps({"target": vendor, **provenance})
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), f"prov:{vendor}", json.dumps(provenance))
        pipe.lpush(writes_key(key), entry)
        pipe.ltrim(writes_key(key), 0, WRITES_KEPT - 1)
        pipe.execute()

    def writes(self, key: str, count: int = WRITES_KEPT) -> list[dict[str, Any]]:
        """The latest writes to vendors for ``key``, newest first."""
        return [json.loads(e) for e in self.redis.lrange(writes_key(key), 0, count - 1)]  # type: ignore[union-attr]

    def start_write(self, key: str, vendor: str, fingerprint: str) -> None:
        """Before a write is sent: it is in flight, and what it writes is known as ours."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), f"writing:{vendor}", str(time.time()))
        pipe.set(f"{PREFIX}:wrote:{vendor}:{fingerprint}", key, ex=WROTE_TTL_SECONDS)
        pipe.execute()

    def mark_recheck(self, key: str, vendor: str) -> None:
        """The deal was deleted in ``vendor`` while we wrote there: look once more."""
        self.redis.hset(opp_key(key), f"recheck:{vendor}", "1")

    def clear_recheck(self, key: str, vendor: str) -> None:
        self.redis.hdel(opp_key(key), f"recheck:{vendor}")

    def end_write(self, key: str, vendor: str) -> None:
        """A write that failed is no longer in flight (``record_write`` ends the others)."""
        self.redis.hdel(opp_key(key), f"writing:{vendor}")

    def claim_push(self, key: str, vendor: str) -> bool:
        """True when no other push of ``key`` to ``vendor`` is waiting for its turn."""
        return bool(self.redis.set(pushing_key(key, vendor), "1", nx=True, ex=PUSH_PENDING_SECONDS))

    def release_push(self, key: str, vendor: str) -> None:
        self.redis.delete(pushing_key(key, vendor))

    def last_change(self, key: str) -> dict[str, Any] | None:
        raw = self.redis.hget(opp_key(key), "last_change")
        return json.loads(raw) if raw else None  # type: ignore[arg-type]

    def forget_vendor_record(self, key: str, vendor: str, vendor_id: str) -> None:
        """The vendor's record is gone (deleted there): unlink it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(opp_key(key), f"id:{vendor}", f"written:{vendor}", f"extra:{vendor}")
        pipe.delete(link_key(vendor, vendor_id))
        pipe.execute()

    # -- identity ------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.redis.exists(opp_key(key)))

    def key_for(self, vendor: str, vendor_id: str) -> str | None:
        return self.redis.get(link_key(vendor, vendor_id))  # type: ignore[return-value]

    def link(self, key: str, vendor: str, vendor_id: str) -> str:
        """Link (vendor, id) to ``key`` unless it is already linked; returns the winner."""
        if self.redis.set(link_key(vendor, vendor_id), key, nx=True):
            self.redis.hset(opp_key(key), f"id:{vendor}", vendor_id)
            self.redis.sadd(OPPS_INDEX, key)
            return key
        return self.key_for(vendor, vendor_id) or key

    def key_we_wrote(self, vendor: str, fingerprint: str) -> str | None:
        return self.redis.get(f"{PREFIX}:wrote:{vendor}:{fingerprint}")  # type: ignore[return-value]

    # -- create intents ------------------------------------------------------------------
    def start_intent(self, key: str, vendor: str) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), f"intent:{vendor}", str(now))
        pipe.zadd(INTENTS, {f"{vendor}|{key}": now})
        pipe.execute()

    def creates_in_flight(self, vendor: str) -> bool:
        """Whether a create in ``vendor`` started recently and has no answer yet."""
        fresh = self.redis.zrangebyscore(INTENTS, time.time() - INTENT_FRESH_SECONDS, "+inf")
        return any(m.startswith(f"{vendor}|") for m in fresh)  # type: ignore[union-attr]

    # -- edge dedup ------------------------------------------------------------------------
    def claim_delivery(self, vendor: str, delivery_id: str, ttl: int) -> bool:
        """True the first time a delivery id is seen (within ``ttl`` seconds)."""
        return bool(self.redis.set(delivery_key(vendor, delivery_id), "1", nx=True, ex=ttl))

    def release_delivery(self, vendor: str, delivery_id: str) -> None:
        self.redis.delete(delivery_key(vendor, delivery_id))

    # -- polling ---------------------------------------------------------------------------
    def poll_mark(self, vendor: str) -> PollMark:
        raw: dict[str, str] = self.redis.hgetall(poll_key(vendor))  # type: ignore[assignment]
        return PollMark(
            mark=datetime.fromisoformat(raw["mark"]) if raw.get("mark") else None,
            full_at=float(raw["full_at"]) if raw.get("full_at") else None,
        )

    def poll_ids(self, vendor: str) -> set[str]:
        return set(self.redis.smembers(poll_ids_key(vendor)))  # type: ignore[arg-type]

    def finish_poll(self, vendor: str, *, mark: datetime | None, ids: set[str], full: bool) -> None:
        """After a complete poll: keep the newest mark; a full scan replaces the id set,
        an incremental one adds to it."""
        current = self.poll_mark(vendor).mark
        pipe = self.redis.pipeline(transaction=False)
        if mark is not None and (current is None or mark > current):
            pipe.hset(poll_key(vendor), "mark", mark.isoformat())
        if full:
            pipe.hset(poll_key(vendor), "full_at", str(time.time()))
            pipe.delete(poll_ids_key(vendor))
        if ids:
            pipe.sadd(poll_ids_key(vendor), *ids)
        pipe.execute()

    def linked(self, vendor: str, vendor_ids: list[str]) -> dict[str, Linked]:
        """What the store says about each of the vendor's ids that is linked: two round
        trips for any number of ids (polling decides on every record of a scan)."""
        pipe = self.redis.pipeline(transaction=False)
        for vendor_id in vendor_ids:
            pipe.get(link_key(vendor, vendor_id))
        keys: list[str | None] = pipe.execute()
        known = [(i, k) for i, k in zip(vendor_ids, keys, strict=True) if k]
        pipe = self.redis.pipeline(transaction=False)
        for _, key in known:
            pipe.hmget(opp_key(key), [f"written:{vendor}", f"seen:{vendor}"])
        views: list[list[str | None]] = pipe.execute()
        return {
            vendor_id: Linked(key=key, written=written, seen=seen)
            for (vendor_id, key), (written, seen) in zip(known, views, strict=True)
        }

    # -- observability -------------------------------------------------------------------
    def note_event(self, entry: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(EVENTS, json.dumps(entry))
        pipe.ltrim(EVENTS, 0, RECENT_EVENTS - 1)
        pipe.execute()

    def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(EVENTS, 0, count - 1)]  # type: ignore[union-attr]

    def all_keys(self) -> list[str]:
        return sorted(self.redis.smembers(OPPS_INDEX))  # type: ignore[arg-type]

    def beat(self) -> None:
        self.redis.set(HEARTBEAT, str(time.time()))

    def last_heartbeat(self) -> float | None:
        raw = self.redis.get(HEARTBEAT)
        return float(raw) if raw else None  # type: ignore[arg-type]
