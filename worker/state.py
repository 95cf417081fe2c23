"""Everything oppsync keeps in Redis, and the only module that knows its key names.

Per opportunity (canonical key ``k``), one hash ``oppsync:opp:k`` holds:

    state            canonical value (JSON)           times   per-field source time (JSON)
    rules            which rule decided each field     deleted "1" once deleted (tombstone)
    id:<v>           the record's id in vendor v       extra:<v>   ids v needed (JSON)
    written:<v>      fingerprint of what v holds       seen:<v>    newest source time from v
    intent:<v>       time a create in v was started    prov:<v>    what caused the last write
    last_event       the last event applied

plus ``oppsync:link:<v>:<vendor id>`` -> ``k`` (the link map, both directions with ``id:<v>``),
``oppsync:wrote:<v>:<fingerprint>`` -> ``k`` (short-lived: recognises our own echo even before
the link is stored), and the edge's delivery ids ``oppsync:delivery:<v>:<id>`` (72 h).
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


def opp_key(key: str) -> str:
    return f"{PREFIX}:opp:{key}"


def link_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:link:{vendor}:{vendor_id}"


def delivery_key(vendor: str, delivery_id: str) -> str:
    return f"{PREFIX}:delivery:{vendor}:{delivery_id}"


def lock_name(key: str, vendor: str | None = None) -> str:
    return f"{PREFIX}:lock:{key}" + (f":{vendor}" if vendor else "")


INTENTS = f"{PREFIX}:intents"  # zset "<vendor>|<key>" -> time a create started
EVENTS = f"{PREFIX}:events"  # list of recent event outcomes (status page)
HEARTBEAT = f"{PREFIX}:worker:heartbeat"
OPPS_INDEX = f"{PREFIX}:opps"  # set of every canonical key (reconciliation)


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
            f"written:{source}": source_holds,
            "last_event": json.dumps(event),
        }
        if record.deleted:
            values["deleted"] = "1"
        if source_seen is not None:
            values[f"seen:{source}"] = source_seen.isoformat()
        pipe = self.redis.pipeline()
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
        pipe = self.redis.pipeline()
        values = {
            f"id:{vendor}": vendor_id,
            f"written:{vendor}": fingerprint,
            f"prov:{vendor}": json.dumps(provenance),
        }
        if extra:
            values[f"extra:{vendor}"] = json.dumps(extra)
        pipe.hset(opp_key(key), mapping=values)
        pipe.hdel(opp_key(key), f"intent:{vendor}")
        pipe.set(link_key(vendor, vendor_id), key)
        pipe.set(f"{PREFIX}:wrote:{vendor}:{fingerprint}", key, ex=WROTE_TTL_SECONDS)
        pipe.zrem(INTENTS, f"{vendor}|{key}")
        pipe.execute()

    def mark_written(self, key: str, vendor: str, fingerprint: str) -> None:
        self.redis.hset(opp_key(key), f"written:{vendor}", fingerprint)

    def forget_vendor_record(self, key: str, vendor: str, vendor_id: str) -> None:
        """The vendor's record is gone (deleted there): unlink it."""
        pipe = self.redis.pipeline()
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
        pipe = self.redis.pipeline()
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

    # -- observability -------------------------------------------------------------------
    def note_event(self, entry: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
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
