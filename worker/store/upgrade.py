"""Moves the previous release's opportunity keys into today's layout, once per Redis.

The previous release kept each opportunity in four kinds of keys: a hash of long field
names (``id:siro``, ``written:siro``, ``wrote_at:siro`` …, times as epoch seconds with
decimals, ``seen`` as ISO 8601), its document in a string key ``oppsync:doc:k``, its history
as a list (newest first), and one key per linked vendor record ``oppsync:link:<v>:<id>``.
Today's layout (``worker/store/keys.py``) holds the document and short fields in the one
hash, the history in one string and the links in bucketed hashes. The
worker runs ``upgrade`` before it takes any job (``worker/celery_factory.py``): the first
worker of the new release moves every opportunity, the others wait for it, and ``oppsync:layout``
records that it is done so later starts cost one ``GET``. Stop the previous release's workers
first: what they write after the move is in the old layout.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import redis

from worker.logs import log
from worker.store.history import SEPARATOR
from worker.store.keys import (
    LAYOUT,
    LAYOUT_LOCK,
    PREFIX,
    VENDOR_CODES,
    doc_key,
    link_key,
    opp_key,
    writes_key,
)
from worker.store.links import link_bucket
from worker.store.packing import micros, millis, pack_dense, pieces, short_digest, unpack

#: The layout this release reads and writes.
CURRENT = "2"

#: Field kinds of the previous release's hash: (old name, new kind, how its value changes).
_KINDS: dict[str, tuple[str, str]] = {
    "id": ("i", "same"),
    "extra": ("x", "same"),
    "written": ("w", "digest"),
    "seen": ("n", "iso"),
    "intent": ("p", "time"),
    "intent_name": ("q", "same"),
    "wrote_at": ("t", "time"),
    "writing": ("g", "time"),
    "unanswered": ("u", "time"),
    "recheck": ("r", "same"),
}

BATCH = 200  # opportunities moved per round trip
WAIT_SECONDS = 600  # how long a worker waits for another's upgrade before doing it itself


def upgrade(client: redis.Redis) -> int:
    """Bring the data into today's layout unless it is; the opportunities moved."""
    if client.get(LAYOUT) == CURRENT:
        return 0
    deadline = time.monotonic() + WAIT_SECONDS
    while not client.set(LAYOUT_LOCK, "1", nx=True, ex=WAIT_SECONDS):
        if client.get(LAYOUT) == CURRENT or time.monotonic() > deadline:
            return 0
        time.sleep(0.5)
    try:
        moved = _move_all(client)
        client.set(LAYOUT, CURRENT)
    finally:
        client.delete(LAYOUT_LOCK)
    if moved:
        log.info("store.upgraded", opportunities=moved, layout=CURRENT)
    return moved


def _move_all(client: redis.Redis) -> int:
    """One pass over the keyspace: every opportunity's hash and document, every link."""
    moved = 0
    deals: set[str] = set()
    links: list[str] = []
    hashes, docs, old_links = opp_key(""), doc_key(""), link_key("", "")[:-1]
    for found in client.scan_iter(f"{PREFIX}:*", count=1000):
        name = found.decode() if isinstance(found, bytes) else str(found)
        if name.startswith(hashes) or name.startswith(docs):
            deals.add(name.split(":", 2)[2])
        elif name.startswith(old_links):
            links.append(name)
        if len(deals) >= BATCH:
            moved += _move_opportunities(client, sorted(deals))
            deals = set()
        if len(links) >= BATCH:
            _move_links(client, links)
            links = []
    moved += _move_opportunities(client, sorted(deals))
    _move_links(client, links)
    return moved


def _move_opportunities(client: redis.Redis, keys: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(opp_key(key))
        pipe.get(doc_key(key))
        pipe.lrange(writes_key(key), 0, -1)  # an error once it is today's string
    read: list[Any] = pipe.execute(raise_on_error=False)
    pipe = client.pipeline(transaction=True)
    moved = 0
    for at, key in enumerate(keys):
        raw, doc, entries = read[3 * at : 3 * at + 3]
        old_history = isinstance(entries, list) and entries
        if doc is None and not old_history and not any(_old_kind(name) for name in raw):
            continue  # nothing of the previous release's (already moved)
        values = converted(raw, doc)
        pipe.delete(opp_key(key), doc_key(key))
        if values:
            pipe.hset(opp_key(key), mapping=values)
        if old_history:  # newest first in the list; oldest first, each ended, today
            pipe.delete(writes_key(key))
            text = "".join(pack_dense(unpack(e)) + SEPARATOR for e in reversed(entries))
            pipe.set(writes_key(key), text)
        moved += 1
    pipe.execute()
    return moved


def converted(raw: dict[str, str], doc: str | None) -> dict[str, str]:
    """An opportunity's hash in today's layout from the previous release's hash and document."""
    values: dict[str, str] = pieces(pack_dense(unpack(doc))) if doc is not None else {}
    for name, value in raw.items():
        old_kind = _old_kind(name)
        if old_kind is None:
            values[name] = value  # "deleted", or already today's
            continue
        vendor = name.partition(":")[2]
        kind, change = _KINDS[old_kind]
        if change == "digest":
            value = short_digest(value)
        elif change == "time":
            value = millis(float(value))
        elif change == "iso":
            value = micros(datetime.fromisoformat(value))
        values[f"{kind}:{VENDOR_CODES[vendor]}"] = value
    return values


def _old_kind(name: str) -> str | None:
    """The kind of a previous release's per-vendor field (``written:siro``), else None."""
    kind, _, vendor = name.partition(":")
    return kind if kind in _KINDS and vendor in VENDOR_CODES else None


def _move_links(client: redis.Redis, names: list[str]) -> None:
    if not names:
        return
    keys: list[Any] = client.mget(names)  # type: ignore[assignment]
    pipe = client.pipeline(transaction=True)
    for name, key in zip(names, keys, strict=True):
        _, _, vendor, vendor_id = name.split(":", 3)
        if key is not None:
            pipe.hsetnx(link_bucket(vendor, vendor_id), vendor_id, key)
        pipe.delete(name)
    pipe.execute()
