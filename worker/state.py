"""Everything oppsync keeps in Redis, and the only module that knows its key names.

Per opportunity (canonical key ``k``), the document ``oppsync:doc:k`` (JSON, compressed by
``worker/packing.py``, written whole by ingest under the record's lock) holds:

    state            canonical value                  times   per-field source time (epoch s)
    rules            a rule that decided a field, when it is not "last writer wins: from
                     <its source>" (the default is not stored)
    sources          which vendor set each field
    last_change      the last event that changed it    last_event the last event ("=": last_change)

and the hash ``oppsync:opp:k`` the small per-vendor fields, each written on its own by the
push to that vendor (all values short, so Redis keeps the hash in its compact encoding):

    id:<v>           the record's id in vendor v       extra:<v>   ids v needed (URL-encoded)
    written:<v>      fingerprint of what v holds       seen:<v>    newest source time from v
    intent:<v>       time a create in v was started    wrote_at:<v> when our last write to v ended
    writing:<v>      time a write to v was sent, until it is acknowledged
    unanswered:<v>   when a create in v last went unanswered (a second record may appear)
    recheck:<v>      v deleted it while we wrote there: check it is still gone
    deleted          "1" once deleted (tombstone)

(Before the document, its parts were fields of the hash: such records are read as they are
and moved into the document when next saved.)

plus ``oppsync:link:<v>:<vendor id>`` -> ``k`` (the link map, both directions with ``id:<v>``),
``oppsync:wrote:<v>:<fingerprint>`` -> ``k`` (short-lived: recognises our own echo even before
the link is stored), and the edge's delivery ids ``oppsync:delivery:<v>:<id>`` (72 h).
``oppsync:writes:k`` lists the latest writes to vendors with what caused each (provenance):
one entry per event's fan-out (its cause once, then each write; compressed too), newest first;
``oppsync:pushing:k:<v>`` marks a push waiting for its turn (newer changes ride along).
``oppsync:intents:<v>`` (sorted set of keys by start time) holds the creates in flight in v
(members older than ``INTENT_FRESH_SECONDS`` are swept by the workers' heartbeat).
``oppsync:duplicate:<v>:<vendor id>`` -> ``k``: a second record of k in v, deleted or marked
(``worker/duplicates.py``); its later events are dropped.

Polling keeps, per polled vendor, ``oppsync:poll:<v>`` (hash: ``mark``, the newest
``updatedAt`` seen; ``full_at``, when the last complete full scan ended) and
``oppsync:poll:<v>:ids`` (the ids seen since then: a linked id missing from the next complete
scan is a delete candidate).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis
from redis.exceptions import NoScriptError

from schemas.mapping import VENDORS
from schemas.opportunity import Opportunity, dump, load
from worker.logs import log
from worker.packing import pack, unpack

PREFIX = "oppsync"
WROTE_TTL_SECONDS = 3600
INTENT_FRESH_SECONDS = 120
#: How long a per-record lock is held at most (a crashed holder frees it by then).
LOCK_TIMEOUT_SECONDS = 60
RECENT_EVENTS = 200
WRITES_KEPT = 20  # history entries (an event and the writes it caused) kept per opportunity
TRIM_SLACK = 10  # entries a capped list may grow past its cap before it is cut back
PUSH_PENDING_SECONDS = 30  # longer than a push waits for its lock (runtime.LOCK_WAIT_SECONDS)


def opp_key(key: str) -> str:
    return f"{PREFIX}:opp:{key}"


def doc_key(key: str) -> str:
    return f"{PREFIX}:doc:{key}"


def link_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:link:{vendor}:{vendor_id}"


def duplicate_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:duplicate:{vendor}:{vendor_id}"


def delivery_key(vendor: str, delivery_id: str) -> str:
    return f"{PREFIX}:delivery:{vendor}:{delivery_id}"


class Claim(Enum):
    """What claiming a delivery id found."""

    NEW = "new"  # ours: queue the event, then confirm
    QUEUED = "queued"  # queued before: a duplicate
    PENDING = "pending"  # another request is queueing it, or died doing so: retry later


#: Delivery-key values: claimed and not yet queued; queued.
PENDING_MARK = "pending"
QUEUED_MARK = "1"
#: How long a claim may stay unconfirmed: far longer than a publish with its retries.
PENDING_CLAIM_SECONDS = 60


def writes_key(key: str) -> str:
    return f"{PREFIX}:writes:{key}"


def pushing_key(key: str, vendor: str) -> str:
    return f"{PREFIX}:pushing:{key}:{vendor}"


def lock_name(key: str, vendor: str | None = None) -> str:
    return f"{PREFIX}:lock:{key}" + (f":{vendor}" if vendor else "")


EVENTS = f"{PREFIX}:events"  # list of recent event outcomes (status page)
HEARTBEAT = f"{PREFIX}:worker:heartbeat"
OPPS_INDEX = f"{PREFIX}:opps"  # set of every canonical key (reconciliation)
RECONCILE_LOCK = f"{PREFIX}:lock:reconcile"  # one reconciliation at a time


def intents_key(vendor: str) -> str:
    """Creates in flight in ``vendor``: a sorted set of keys by the time each started."""
    return f"{PREFIX}:intents:{vendor}"


def wrote_key(vendor: str, fingerprint: str) -> str:
    return f"{PREFIX}:wrote:{vendor}:{fingerprint}"


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
    times: dict[str, float] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    ids: dict[str, str] = field(default_factory=dict)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)
    intents: dict[str, float] = field(default_factory=dict)
    wrote_at: dict[str, float] = field(default_factory=dict)
    last_event: dict[str, Any] | None = None
    exists: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    last_change: dict[str, Any] | None = None
    writing: dict[str, float] = field(default_factory=dict)
    rechecks: set[str] = field(default_factory=set)
    #: Values the mapping could not read, by vendor: {vendor field: value} (``oppsync show``).
    unmapped: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Read from the hash alone (stored before the document): the next save moves it.
    legacy: bool = False

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


def _per_vendor(raw: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}


def _wrote_at(raw: dict[str, str]) -> dict[str, float]:
    """When our last write to each vendor ended (``prov:<v>`` of older versions too)."""
    wrote = {v: float(t) for v, t in _per_vendor(raw, "wrote_at:").items()}
    for vendor, old in _per_vendor(raw, "prov:").items():
        at = json.loads(old).get("at")
        if vendor not in wrote and at:
            wrote[vendor] = datetime.fromisoformat(at).timestamp()
    return wrote


#: Hash fields of records stored before the document (``legacy``).
LEGACY_FIELDS = ("state", "times", "rules", "sources", "last_change", "last_event")


def record_from(key: str, raw: dict[str, str], doc: str | None = None) -> Record:
    """A ``Record`` from its hash's fields and its document (neither: not stored yet)."""
    if not raw and doc is None:
        return Record(key=key)
    legacy = doc is None and "state" in raw
    if legacy:
        parts: dict[str, Any] = {
            name: raw[name] if name == "last_event" else json.loads(raw[name])
            for name in LEGACY_FIELDS
            if name in raw
        }
    else:
        parts = unpack(doc) if doc is not None else {}
    last_change = parts.get("last_change")
    last_event = parts.get("last_event")
    if isinstance(last_event, str):  # "=" or, in a legacy hash, the event's JSON
        last_event = last_change if last_event == SAME_AS_CHANGE else json.loads(last_event)
    return Record(
        key=key,
        state=_state(doc) if doc is not None else _legacy_state(raw.get("state")),
        times={
            name: at if isinstance(at, float | int) else datetime.fromisoformat(at).timestamp()
            for name, at in parts.get("times", {}).items()
        },
        rules=parts.get("rules", {}),
        deleted=raw.get("deleted") == "1",
        ids=_per_vendor(raw, "id:"),
        extra={v: _extra(x) for v, x in _per_vendor(raw, "extra:").items()},
        written=_per_vendor(raw, "written:"),
        seen=_per_vendor(raw, "seen:"),
        intents={v: float(t) for v, t in _per_vendor(raw, "intent:").items()},
        wrote_at=_wrote_at(raw),
        last_event=last_event,
        exists=doc is not None or legacy,
        sources=parts.get("sources", {}),
        last_change=last_change,
        writing={v: float(t) for v, t in _per_vendor(raw, "writing:").items()},
        rechecks=set(_per_vendor(raw, "recheck:")),
        unmapped=parts.get("unmapped", {}),
        legacy=legacy,
    )


@lru_cache(maxsize=1024)
def _state(doc: str) -> Opportunity:
    """The canonical value in document ``doc``. Cached (values are frozen): each push of an
    event reads the same document, and a marshmallow load is most of reading a record."""
    return load(unpack(doc)["state"])


def _legacy_state(raw: str | None) -> Opportunity:
    return load(json.loads(raw)) if raw else Opportunity()


def _extra(value: str) -> dict[str, str]:
    """A vendor's extra ids: URL-encoded (JSON before: a longer value makes Redis store the
    whole hash in its larger encoding)."""
    return json.loads(value) if value.startswith("{") else dict(parse_qsl(value))


#: ``last_event`` when the last event is also the last change (stored once, not twice).
SAME_AS_CHANGE = "="

# KEYS: the lock, the opportunity's hash, its document. ARGV: token, lock time in ms. The
# hash's fields and the document when the lock was free (taken now), else false: one round
# trip for the common case.
LOCK_AND_READ = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3])}
end
return false
"""
# KEYS: the record's lock, its hash, then one lock per vendor. ARGV: the record lock's
# token, lock time in ms, then one token per vendor lock. While the record's lock is still
# ours: free it, take each vendor's lock that is free, and read the hash under them (a push
# that held one of them may have written it since we read). False when the lock was lost.
HAND_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call('DEL', KEYS[1])
local taken = {}
for i = 3, #KEYS do
  taken[i - 2] = redis.call('SET', KEYS[i], ARGV[i], 'NX', 'PX', ARGV[2]) and 1 or 0
end
return {taken, redis.call('HGETALL', KEYS[2])}
"""
# KEYS: the lock. ARGV: its holder's token. Frees the lock only if that holder still has it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Store:
    """Typed access to oppsync's Redis state."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._lock_and_read = client.register_script(LOCK_AND_READ)
        self._unlock = client.register_script(UNLOCK)
        self._hand_over = client.register_script(HAND_OVER)

    # -- opportunities ---------------------------------------------------------------------
    def load(self, key: str) -> Record:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(opp_key(key))
        pipe.get(doc_key(key))
        raw, doc = pipe.execute()
        return record_from(key, raw, doc)

    def save_state(
        self,
        record: Record,
        *,
        source: str,
        source_seen: datetime | None,
        source_holds: str,
        event: dict[str, Any],
        unlock: HeldLock | None = None,
        hand_over: tuple[str, ...] = (),
    ) -> HandedOver | None:
        """Store the merged canonical state and what the source vendor now holds; free
        ``unlock`` in the same round trip. With ``hand_over`` (the vendors to write next),
        that round trip also takes each of their (record, vendor) locks that is free and
        reads the record under them: the fan-out's pushes start with
        their lock and the record instead of a round trip each."""
        changed = bool(event.get("fields"))
        doc = {
            "state": dump(record.state),
            "times": record.times,
            "rules": record.rules,
            "sources": record.sources,
            "last_change": event if changed else record.last_change,
            "last_event": SAME_AS_CHANGE if changed else event,
        }
        if record.unmapped:
            doc["unmapped"] = record.unmapped
        values: dict[str, str] = {f"written:{source}": source_holds}
        if record.deleted:
            values["deleted"] = "1"
        if source_seen is not None:
            values[f"seen:{source}"] = source_seen.isoformat()
        stored = pack(doc)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(doc_key(record.key), stored)
        pipe.hset(opp_key(record.key), mapping=values)
        if record.legacy:
            pipe.hdel(opp_key(record.key), *LEGACY_FIELDS)
        if not record.exists:
            pipe.sadd(OPPS_INDEX, record.key)
        if unlock is None or not unlock.held or not hand_over:
            if unlock is not None:
                self.unlock(unlock, pipe)
            self.run(pipe, self._unlock_again(unlock))
            return None
        unlock.held = False
        locks = {v: HeldLock(lock_name(record.key, v), uuid.uuid4().hex) for v in hand_over}
        keys = [unlock.name, opp_key(record.key), *(lock.name for lock in locks.values())]
        args = [unlock.token, str(LOCK_TIMEOUT_SECONDS * 1000)]
        args += [lock.token for lock in locks.values()]
        # evalsha directly: a Script in a pipeline costs a SCRIPT EXISTS round trip.
        pipe.evalsha(self._hand_over.sha, len(keys), *keys, *args)
        answer = self.run(pipe, lambda: self._hand_over(keys=keys, args=args))[-1]
        if not answer:
            return None  # our lock had expired: each push takes its own
        taken, fields = answer
        pairs = iter(fields)
        return HandedOver(
            record=record_from(record.key, dict(zip(pairs, pairs, strict=True)), stored),
            locks={v: lock for (v, lock), won in zip(locks.items(), taken, strict=True) if won},
        )

    # -- locks ---------------------------------------------------------------------
    def lock_and_read(
        self, key: str, vendor: str | None, ttl_seconds: float
    ) -> tuple[HeldLock, Record] | None:
        """Take the record's lock (or its lock for one vendor) and read the record in one
        round trip; None when the lock is held."""
        lock = HeldLock(lock_name(key, vendor), uuid.uuid4().hex)
        read = self._lock_and_read(
            keys=[lock.name, opp_key(key), doc_key(key)], args=[lock.token, int(ttl_seconds * 1000)]
        )
        if read is None:
            return None
        fields, doc = read  # type: ignore[misc]
        pairs = iter(fields)
        return lock, record_from(key, dict(zip(pairs, pairs, strict=True)), doc)

    def unlock(self, lock: HeldLock, pipe: redis.client.Pipeline | None = None) -> None:
        """Free ``lock``; within ``pipe`` when given (no round trip of its own: run the
        pipeline with ``run``, which loads the script if Redis lost it)."""
        if not lock.held:
            return
        lock.held = False
        if pipe is None:
            self._unlock(keys=[lock.name], args=[lock.token])
        else:
            # evalsha directly: a Script in a pipeline costs a SCRIPT EXISTS round trip.
            pipe.evalsha(self._unlock.sha, 1, lock.name, lock.token)

    def run(self, pipe: redis.client.Pipeline, again: Callable[[], Any] | None = None) -> list[Any]:
        """Execute ``pipe``, whose script (at most one) is called by its hash; when Redis
        lacks the script (a new or restarted Redis), ``again`` runs it through the loading
        path and its answer takes the script's place. The results."""
        results: list[Any] = pipe.execute(raise_on_error=False)
        for at, result in enumerate(results):
            if isinstance(result, NoScriptError) and again is not None:
                results[at] = again()
            elif isinstance(result, Exception):
                raise result
        return results

    def _unlock_again(self, lock: HeldLock | None) -> Callable[[], Any] | None:
        """What frees ``lock`` when a pipeline's ``unlock`` found the script missing."""
        if lock is None:
            return None
        return lambda: self._unlock(keys=[lock.name], args=[lock.token])

    # -- one write to one vendor -----------------------------------------------------------
    def before_write(self, key: str, vendor: str, fingerprint: str, *, create: bool) -> None:
        """Before a write is sent: it is in flight, what it writes is known as ours (the
        vendor's echo can beat the answer), and a create leaves an intent."""
        now = time.time()
        values = {f"writing:{vendor}": str(now)}
        pipe = self.redis.pipeline(transaction=False)
        if create:
            values[f"intent:{vendor}"] = str(now)
            pipe.zadd(intents_key(vendor), {key: now})
        pipe.hset(opp_key(key), mapping=values)
        pipe.set(wrote_key(vendor, fingerprint), key, ex=WROTE_TTL_SECONDS)
        pipe.execute()

    def record_write(
        self,
        key: str,
        vendor: str,
        *,
        vendor_id: str,
        fingerprint: str,
        extra: dict[str, str],
        history: dict[str, Any] | None,
        new_link: bool,
        lock: HeldLock | None = None,
    ) -> None:
        """After a vendor acknowledged a write, in one round trip: link, fingerprint, when,
        the history entry (unless the fan-out keeps one for the event); intent and in-flight
        mark done; ``lock`` freed."""
        pipe = self.redis.pipeline(transaction=False)
        values = {
            f"id:{vendor}": vendor_id,
            f"written:{vendor}": fingerprint,
            f"wrote_at:{vendor}": str(time.time()),
        }
        if extra:
            values[f"extra:{vendor}"] = urlencode(extra)
        pipe.hset(opp_key(key), mapping=values)
        pipe.hdel(opp_key(key), f"intent:{vendor}", f"writing:{vendor}", f"prov:{vendor}")
        if new_link:
            pipe.set(link_key(vendor, vendor_id), key)
            pipe.zrem(intents_key(vendor), key)
        at = self._add_history(pipe, key, history) if history is not None else None
        if lock is not None:
            self.unlock(lock, pipe)
        results = self.run(pipe, self._unlock_again(lock))
        if at is not None:
            self._trim(writes_key(key), results[at], WRITES_KEPT)

    def end_write(
        self,
        key: str,
        vendor: str,
        lock: HeldLock | None = None,
        *,
        not_created: bool = False,
    ) -> None:
        """A write that failed is no longer in flight (``record_write`` ends the others).
        A create that surely made nothing (``not_created``: refused, never sent) leaves no
        intent: the next attempt creates at once instead of waiting for it to settle."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(opp_key(key), f"writing:{vendor}", *([f"intent:{vendor}"] if not_created else []))
        if not_created:
            pipe.zrem(intents_key(vendor), key)

        if lock is not None:
            self.unlock(lock, pipe)
        self.run(pipe, self._unlock_again(lock))

    def mark_written(self, key: str, vendor: str, fingerprint: str) -> None:
        self.redis.hset(opp_key(key), f"written:{vendor}", fingerprint)

    # -- history and coalescing ------------------------------------------------------------
    def note_write(self, key: str, vendor: str, history: dict[str, Any]) -> None:
        """Keep what caused one write (or delete) in ``vendor`` in the history list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), f"wrote_at:{vendor}", str(time.time()))
        at = self._add_history(pipe, key, history)
        self._trim(writes_key(key), pipe.execute()[at], WRITES_KEPT)

    def add_history(self, key: str, history: dict[str, Any]) -> None:
        """Keep one history entry: an event and the writes it caused (``history_entry``)."""
        length: int = self.redis.lpush(writes_key(key), pack(history))  # type: ignore[assignment]
        self._trim(writes_key(key), length, WRITES_KEPT)

    @staticmethod
    def _add_history(pipe: redis.client.Pipeline, key: str, entry: dict[str, Any]) -> int:
        """Queue the entry on ``pipe``; the position of its answer (the list's length)."""
        pipe.lpush(writes_key(key), pack(entry))
        return len(pipe.command_stack) - 1

    def _trim(self, name: str, length: int, kept: int) -> None:
        """Cut list ``name`` back to ``kept`` entries once it is ``TRIM_SLACK`` past that:
        one LTRIM every few pushes rather than one with each."""
        if length > kept + TRIM_SLACK:
            self.redis.ltrim(name, 0, kept - 1)

    def writes(self, key: str, count: int = WRITES_KEPT) -> list[dict[str, Any]]:
        """The latest writes to vendors for ``key``, newest first, each with its cause."""
        flat: list[dict[str, Any]] = []
        for raw in self.redis.lrange(writes_key(key), 0, count - 1):  # type: ignore[union-attr]
            entry = unpack(raw)
            if "writes" not in entry:  # one write per entry (before causes were shared)
                flat.append(entry)
                continue
            notes = sorted(entry["writes"], key=lambda n: n.get("at", ""), reverse=True)
            flat.extend({**entry["cause"], **note} for note in notes)
        return flat[:count]

    def mark_recheck(self, key: str, vendor: str) -> None:
        """The deal was deleted in ``vendor`` while we wrote there: look once more."""
        self.redis.hset(opp_key(key), f"recheck:{vendor}", "1")

    def clear_recheck(self, key: str, vendor: str) -> None:
        self.redis.hdel(opp_key(key), f"recheck:{vendor}")

    def claim_push(self, key: str, vendor: str) -> bool:
        """True when no other push of ``key`` to ``vendor`` is waiting for its turn."""
        return bool(self.redis.set(pushing_key(key, vendor), "1", nx=True, ex=PUSH_PENDING_SECONDS))

    def release_push(self, key: str, vendor: str) -> None:
        self.redis.delete(pushing_key(key, vendor))

    def last_change(self, key: str) -> dict[str, Any] | None:
        doc = self.redis.get(doc_key(key))
        if doc is None:  # not stored yet, or stored before the document
            legacy = self.redis.hget(opp_key(key), "last_change")
            return json.loads(legacy) if legacy else None  # type: ignore[arg-type]
        return unpack(doc).get("last_change")  # type: ignore[arg-type,no-any-return]

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
        """Link (vendor, id) to ``key`` unless it is already linked; returns the winner.
        (The key joins ``OPPS_INDEX`` with its first saved state: ``save_state``.)"""
        if self.redis.set(link_key(vendor, vendor_id), key, nx=True):
            self.redis.hset(opp_key(key), f"id:{vendor}", vendor_id)
            return key
        return self.key_for(vendor, vendor_id) or key

    def key_we_wrote(self, vendor: str, fingerprint: str) -> str | None:
        return self.redis.get(wrote_key(vendor, fingerprint))  # type: ignore[return-value]

    def note_unanswered(self, key: str, vendor: str) -> None:
        """A create of ``key`` in ``vendor`` got no answer (timed out, or its worker died):
        remembered for good, since only then can a second record appear there."""
        self.redis.hset(opp_key(key), f"unanswered:{vendor}", str(time.time()))

    def linked_after_unanswered(self, key: str, vendor: str) -> str | None:
        """The id of the record ``key`` is linked to in ``vendor``, when a create of it
        there once went unanswered (else ``None``: no second record can be ours)."""
        linked, unanswered = self.redis.hmget(
            opp_key(key), [f"id:{vendor}", f"unanswered:{vendor}"]
        )  # type: ignore[misc]
        return linked if unanswered else None  # type: ignore[no-any-return]

    def mark_duplicate(self, vendor: str, vendor_id: str, key: str) -> None:
        self.redis.set(duplicate_key(vendor, vendor_id), key)

    def duplicate_of(self, vendor: str, vendor_id: str) -> str | None:
        """The deal whose second record (deleted or marked) ``vendor_id`` is."""
        return self.redis.get(duplicate_key(vendor, vendor_id))  # type: ignore[return-value]

    # -- create intents ------------------------------------------------------------------
    def creates_in_flight(self, vendor: str) -> bool:
        """Whether a create in ``vendor`` started recently and has no answer yet."""
        fresh = time.time() - INTENT_FRESH_SECONDS
        return bool(self.redis.zcount(intents_key(vendor), fresh, "+inf"))

    # -- edge dedup ------------------------------------------------------------------------
    def claim_delivery(self, vendor: str, delivery_id: str) -> Claim:
        """Claim a delivery id before queueing its event. The claim is only ``PENDING``
        until ``confirm_delivery``: if the process dies or Redis goes away between the
        claim and the queueing (so the claim cannot be released), it expires within
        ``PENDING_CLAIM_SECONDS`` and the vendor's redelivery is taken, not lost as a
        duplicate."""
        key = delivery_key(vendor, delivery_id)
        if self.redis.set(key, PENDING_MARK, nx=True, ex=PENDING_CLAIM_SECONDS):
            return Claim.NEW
        # A second command only for deliveries seen before (the rare path).
        return Claim.QUEUED if self.redis.get(key) == QUEUED_MARK else Claim.PENDING

    def confirm_delivery(self, vendor: str, delivery_id: str, ttl: int) -> None:
        """The event is queued: remember its delivery id for ``ttl`` seconds."""
        self.redis.set(delivery_key(vendor, delivery_id), QUEUED_MARK, ex=ttl)

    def release_delivery(self, vendor: str, delivery_id: str) -> None:
        self.redis.delete(delivery_key(vendor, delivery_id))

    def queue_once(
        self, vendor: str, delivery_id: str, ttl: int, queue: Callable[[], None]
    ) -> Claim:
        """Run ``queue`` unless this delivery id was queued before (or is being queued):
        claim it, queue, then remember it for ``ttl`` seconds. ``Claim.NEW`` when ``queue``
        ran. When ``queue`` raises, the claim is released so the sender's redelivery is
        taken, and the error propagates. When only the confirmation fails, the event is
        queued all the same: the pending claim lapses and a redelivery after that is queued
        again, which the worker takes as a no-op."""
        claim = self.claim_delivery(vendor, delivery_id)
        if claim is not Claim.NEW:
            return claim
        try:
            queue()
        except BaseException:  # noqa: BLE001 - re-raised below
            # Not queued: forget the delivery id so the sender's redelivery is taken.
            try:
                self.release_delivery(vendor, delivery_id)
            finally:
                raise
        try:
            self.confirm_delivery(vendor, delivery_id, ttl)
        except (redis.RedisError, OSError):
            log.warning("delivery.confirm_failed", vendor=vendor, delivery=delivery_id)
        return Claim.NEW

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
        self._trim(EVENTS, self.redis.lpush(EVENTS, json.dumps(entry)), RECENT_EVENTS)  # type: ignore[arg-type]

    def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(EVENTS, 0, count - 1)]  # type: ignore[union-attr]

    def all_keys(self) -> list[str]:
        return sorted(self.redis.smembers(OPPS_INDEX))  # type: ignore[arg-type]

    def beat(self) -> None:
        """A worker's heartbeat; it also sweeps creates' intents too old to matter (a create
        that never got an answer leaves its member behind, and they would only pile up)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(HEARTBEAT, str(now))
        for vendor in VENDORS:
            pipe.zremrangebyscore(intents_key(vendor), "-inf", now - INTENT_FRESH_SECONDS)
        pipe.execute()

    def last_heartbeat(self) -> float | None:
        raw = self.redis.get(HEARTBEAT)
        return float(raw) if raw else None  # type: ignore[arg-type]
