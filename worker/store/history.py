"""Provenance: the writes each event caused, per opportunity, and the recent events list."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from worker.store.keys import EVENTS, field, opp_key, writes_key
from worker.store.locks import Locks
from worker.store.packing import millis, pack, unpack

RECENT_EVENTS = 200


WRITES_KEPT = 20  # history entries (an event and the writes it caused) kept per opportunity


TRIM_SLACK = 10  # entries a capped list may grow past its cap before it is cut back


class History(Locks):
    """Each opportunity's latest writes with their causes; the latest events overall."""

    def note_write(self, key: str, vendor: str, history: dict[str, Any]) -> None:
        """Keep what caused one write (or delete) in ``vendor`` in the history list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), field("t", vendor), millis(time.time()))
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
            notes = sorted(entry["writes"], key=lambda n: n.get("at", ""), reverse=True)
            flat.extend({**entry["cause"], **note} for note in notes)
        return flat[:count]

    def note_event(self, entry: dict[str, Any]) -> None:
        self._trim(EVENTS, self.redis.lpush(EVENTS, json.dumps(entry)), RECENT_EVENTS)  # type: ignore[arg-type]

    def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(EVENTS, 0, count - 1)]  # type: ignore[union-attr]
