"""Upgrading from the previous release: its opportunities, written by its own store (the
``Store`` API of the release before the one-hash layout, dumped key by key into
``data/store_layout1.json`` together with what that release read back), move into today's
layout once and read back the same."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.opportunity import dump
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.store.keys import LAYOUT, opp_key
from worker.store.state import Store
from worker.store.upgrade import CURRENT, upgrade

PREVIOUS = json.loads((Path(__file__).parent / "data" / "store_layout1.json").read_text())


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    for name, value in PREVIOUS["keys"].items():
        kind, data = next(iter(value.items()))
        if kind == "string":
            client.set(name, data)
        elif kind == "hash":
            client.hset(name, mapping=data)
        elif kind == "list":
            client.rpush(name, *data)
        elif kind == "set":
            client.sadd(name, *data)
        elif kind == "zset":
            client.zadd(name, dict(data))
    yield Store(client)
    client.close()


def read_back(store: Store, key: str) -> dict[str, Any]:
    r = store.load(key)
    return {"state": dump(r.state), "times": r.times, "sources": r.sources, "rules": r.rules,
            "deleted": r.deleted, "ids": r.ids, "extra": r.extra, "written": r.written,
            "seen": r.seen, "intents": r.intents, "intent_names": r.intent_names,
            "wrote_at": r.wrote_at, "writing": r.writing, "rechecks": sorted(r.rechecks),
            "last_change": r.last_change, "last_event": r.last_event, "writes": store.writes(key),
            "links": {v: store.key_for(v, i) for v, i in r.ids.items()}}  # fmt: skip


def test_upgrade_moves_the_previous_layout_and_reads_back_the_same(store: Store) -> None:
    # given the previous release's keys (a deal linked in five vendors, and a deleted one with
    # a create in flight)
    # when the new release's worker starts
    moved = upgrade(store.redis)
    # then each deal reads back what the previous release read
    assert moved == len(PREVIOUS["read"])
    for key, before in PREVIOUS["read"].items():
        after = read_back(store, key)
        times = ("intents", "wrote_at", "writing")  # now kept in whole milliseconds
        for name in times:
            assert after.pop(name) == pytest.approx(before[name], abs=0.001)
        assert after == {k: v for k, v in before.items() if k not in times}
    # and the previous layout's keys are gone: one hash per deal, links in bucket hashes
    names = set(store.redis.scan_iter("oppsync:*"))
    assert not [n for n in names if n.startswith(("oppsync:doc:", "oppsync:link:"))]
    for key in PREVIOUS["read"]:
        assert store.redis.object("encoding", opp_key(key)) in ("listpack", "ziplist")
    assert store.redis.get(LAYOUT) == CURRENT


def test_upgrade_runs_once(store: Store) -> None:
    # given an upgraded store whose deal then changed in today's layout
    upgrade(store.redis)
    key = next(iter(PREVIOUS["read"]))
    store.mark_written(key, "siro", "f" * 32)
    # when another worker starts
    assert upgrade(store.redis) == 0
    # then nothing was moved again
    assert store.load(key).written["siro"] == "f" * 32
