"""Every Redis key name oppsync uses: one place, so a reader sees the whole keyspace.

Per opportunity (canonical key ``k``), the document ``oppsync:doc:k`` (JSON, compressed by
``worker/store/packing.py``, written whole by ingest under the record's lock) holds:

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
    unsettled:<v>    "<sent> <fingerprint>" of the last write to v whose answer was lost
                     (it may commit late: the next write waits, its echo is ours)
    recheck:<v>      v deleted it while we wrote there: check it is still gone
    deleted          "1" once deleted (tombstone)

plus ``oppsync:link:<v>:<vendor id>`` -> ``k`` (the link map, both directions with ``id:<v>``),
``oppsync:wrote:<v>:<fingerprint>`` -> ``k`` (short-lived: recognises our own echo even before
the link is stored), and the edge's delivery ids ``oppsync:delivery:<v>:<id>`` (72 h).
``oppsync:writes:k`` lists the latest writes to vendors with what caused each (provenance):
one entry per event's fan-out (its cause once, then each write; compressed too), newest first;
``oppsync:pushing:k:<v>`` marks a push waiting for its turn (newer changes ride along).
``oppsync:intents:<v>`` (sorted set of keys by start time) holds the creates in flight in v
(members older than ``INTENT_FRESH_SECONDS`` are swept by the workers' heartbeat).
``oppsync:duplicate:<v>:<vendor id>`` -> ``k``: a second record of k in v, deleted or marked
(``worker/sync/duplicates.py``); its later events are dropped.

Polling keeps, per polled vendor, ``oppsync:poll:<v>`` (hash: ``mark``, the newest
``updatedAt`` seen; ``full_at``, when the last complete full scan ended) and
``oppsync:poll:<v>:ids`` (the ids seen since then: a linked id missing from the next complete
scan is a delete candidate).
"""

from __future__ import annotations

PREFIX = "oppsync"


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


#: Families meant to live as long as their opportunity (the state, the link map, provenance);
#: everything else that grows with events must expire (the benchmark checks).
KEPT_FOR_GOOD = (
    opp_key("*"),
    doc_key("*"),
    f"{PREFIX}:link:*",
    writes_key("*"),
    OPPS_INDEX,
)

# -- outside the opportunity store ----------------------------------------------------------
DEADLETTER_INDEX = f"{PREFIX}:deadletters"  # zset id -> time
DEADLETTER_ITEMS = f"{PREFIX}:deadletter"  # hash id -> JSON
METRIC_COUNTERS = f"{PREFIX}:metrics:counters"  # hash "<name>|<labels json>" -> count
METRIC_LATENCY = f"{PREFIX}:metrics:latency"  # hash "<bucket>" / "sum" / "count"
#: The status page's CSRF secret, shared by every web process.
STATUS_CSRF_SECRET = f"{PREFIX}:status:csrf-secret"
#: Prefix of the ingress limiter's own keys (``LIMITS:LIMITER/oppsync-ingress/…``).
INGRESS_LIMITER_PREFIX = f"{PREFIX}-ingress"


def health_key(vendor: str) -> str:
    """Hash: last_success, last_error, last_error_reason."""
    return f"{PREFIX}:health:{vendor}"


def health_calls_key(vendor: str, minute: int) -> str:
    """Hash of one minute's calls: ok / error / error:<reason>."""
    return f"{PREFIX}:health:{vendor}:calls:{minute}"


def breaker_failures_key(vendor: str) -> str:
    return f"{PREFIX}:breaker:{vendor}:failures"


def breaker_open_key(vendor: str) -> str:
    return f"{PREFIX}:breaker:{vendor}:open"


def quota_key(vendor: str, scope: str, amount: int, seconds: int) -> str:
    """One window of a vendor's (or one of its scopes') quota."""
    return f"{PREFIX}:quota:{vendor}:{scope or 'default'}:{amount}/{seconds}"
