"""Every Redis key name oppsync uses: one place, so a reader sees the whole keyspace.

Per opportunity (canonical key ``k``), one hash ``oppsync:opp:k`` holds everything kept for
good but its history, in short fields so Redis keeps it in its compact (listpack/ziplist)
encoding (at most 128 fields of at most 64 bytes: a key of its own costs more than its data).

``d0``, ``d1``, …: the document in 64-character pieces (``packing.pieces``): JSON,
compressed by ``worker/store/packing.py``, written whole by ingest under the record's lock:

    state            canonical value                  times   per-field source time (epoch s)
    rules            a rule that decided a field, when it is not "last writer wins: from
                     <its source>" (the default is not stored)
    sources          which vendor set each field
    last_change      the last event that changed it    last_event the last event ("=": last_change)

``<kind>:<vendor code>`` (``field``): the small per-vendor fields, each written on its own by
the push to that vendor; times are epoch milliseconds (integers: Redis stores them in 8 bytes):

    i:<v>   the record's id in vendor v              x:<v>  ids v needed (URL-encoded)
    w:<v>   fingerprint of what v holds (``packing.short_digest``)
    n:<v>   newest source time seen from v (epoch microseconds)
    p:<v>   when a create in v was started           q:<v>  the name that create carried
    t:<v>   when our last write to v ended           g:<v>  a write sent to v, not yet answered
    u:<v>   when a create in v last went unanswered (a second record may appear)
    s:<v>   "<sent> <fingerprint>" of the last write to v whose answer was lost (it may
            commit late: the next write waits, its echo is ours)
    r:<v>   v deleted it while we wrote there: check it is still gone
    deleted "1" once deleted (tombstone)

The link map (vendor record -> ``k``) is bucketed: ``oppsync:links:<v>:<n>`` is a small hash
of vendor id -> ``k`` for the ids whose CRC-32 falls in bucket ``n`` of ``LINK_BUCKETS``
(the other direction is ``i:<v>``). ``oppsync:wrote:<v>:<fingerprint>`` -> ``k``
(short-lived: recognises our own echo even before the link is stored), and the edge's
delivery ids ``oppsync:delivery:<v>:<id>`` (72 h).
``oppsync:writes:k`` lists the latest writes to vendors with what caused each (provenance):
one entry per event's fan-out (its cause once, then each write; compressed too), oldest first,
capped by count and bytes (``worker/store/history.py``);
``oppsync:pushing:k:<v>`` marks a push waiting for its turn (newer changes ride along).
``oppsync:handover:<token>`` -> outcome: a write handed over by its event's task has ended
(the job that makes sure of it has nothing to do; ``worker/sync/fanout.py``).
``oppsync:intents:<v>`` (sorted set of keys by start time) holds the creates in flight in v
(members older than ``INTENT_FRESH_SECONDS`` are swept by the workers' heartbeat).
``oppsync:duplicate:<v>:<vendor id>`` -> ``k``: a second record of k in v, deleted or marked
(``worker/sync/duplicates.py``); its later events are dropped.
``oppsync:layout`` names the layout the data is in (``worker/store/upgrade.py`` moves the
previous release's ``oppsync:doc:k`` documents, long field names and one-key-per-record
``oppsync:link:<v>:<id>`` links into this one, once).

Polling keeps, per polled vendor, ``oppsync:poll:<v>`` (hash: ``mark``, the newest
``updatedAt`` seen; ``full_at``, when the last complete full scan ended) and
``oppsync:poll:<v>:ids`` (the ids seen since then: a linked id missing from the next complete
scan is a delete candidate).
"""

from __future__ import annotations

PREFIX = "oppsync"


def opp_key(key: str) -> str:
    return f"{PREFIX}:opp:{key}"


#: Links buckets per vendor: a million deals put about 61 ids in each, well inside the
#: 128 fields a hash keeps compact (``hash-max-listpack-entries``). Part of the stored
#: layout: changing it moves every link.
LINK_BUCKETS = 16384


def links_key(vendor: str, bucket: int) -> str:
    """One bucket of ``vendor``'s link map: a hash of vendor id -> canonical key."""
    return f"{PREFIX}:links:{vendor}:{bucket}"


def links_prefix(vendor: str = "") -> str:
    return f"{PREFIX}:links:{vendor}"


#: The short code of each vendor in the opportunity hash's field names.
VENDOR_CODES = {"siro": "s", "leadway": "l", "ivvy": "v", "salescaling": "c", "icloudready": "r"}
CODE_VENDORS = {code: vendor for vendor, code in VENDOR_CODES.items()}


def field(kind: str, vendor: str) -> str:
    """The opportunity hash's field ``kind`` (one letter, see above) for ``vendor``."""
    return f"{kind}:{VENDOR_CODES.get(vendor, vendor)}"


LAYOUT = f"{PREFIX}:layout"  # the layout version the data is in
LAYOUT_LOCK = f"{PREFIX}:lock:layout"  # one upgrade at a time


# -- the previous release's layout (read only by ``worker/store/upgrade.py``) ---------------
def doc_key(key: str) -> str:
    return f"{PREFIX}:doc:{key}"


def link_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:link:{vendor}:{vendor_id}"


# -- beside each opportunity's hash --------------------------------------------------------
def duplicate_key(vendor: str, vendor_id: str) -> str:
    return f"{PREFIX}:duplicate:{vendor}:{vendor_id}"


def delivery_key(vendor: str, delivery_id: str) -> str:
    return f"{PREFIX}:delivery:{vendor}:{delivery_id}"


def writes_key(key: str) -> str:
    return f"{PREFIX}:writes:{key}"


def pushing_key(key: str, vendor: str) -> str:
    return f"{PREFIX}:pushing:{key}:{vendor}"


def handover_key(token: str) -> str:
    return f"{PREFIX}:handover:{token}"


def lock_name(key: str, vendor: str | None = None) -> str:
    return f"{PREFIX}:lock:{key}" + (f":{vendor}" if vendor else "")


EVENTS = f"{PREFIX}:events"  # list of recent event outcomes (status page)


HEARTBEAT = f"{PREFIX}:worker:heartbeat"


#: hash: each consuming worker process (``worker/broker.py``) -> when it last said it lives
CONSUMERS_ALIVE = f"{PREFIX}:worker:consumers"


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
    f"{PREFIX}:links:*",
    writes_key("*"),
    OPPS_INDEX,
    LAYOUT,
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


def ingress_window_key(who: str, amount: int, seconds: int) -> str:
    """One fixed window of an ingress limit: ``who`` is ``client:<address>:<vendor>`` or
    ``vendor:<vendor>`` (``unknown`` for a name that is no vendor's)."""
    return f"{PREFIX}:ingress:{who}:{amount}/{seconds}"


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
