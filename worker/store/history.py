"""Provenance: the writes each event caused, per opportunity, and the recent events list.

An opportunity's history is one string of packed entries, oldest first, each ended by a
newline (``packing.pack`` never writes one): a write appends its entry in one command, and
a string costs Redis less than a list. It is capped by bytes and by count (``HISTORY_BYTES``,
``WRITES_KEPT``): the oldest entries are cut once it grows past ``HISTORY_BYTES``.
"""

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


#: Bytes of history kept per opportunity (about six events' fan-outs; the newest is always
#: kept): each deal's share of Redis stays small however busy it is.
HISTORY_BYTES = 2048


# KEYS: the history. ARGV: bytes kept, entries kept. Cuts the oldest entries (whole ones,
# at newlines) until both caps hold, keeping the newest in any case; how many were cut.
CAP_HISTORY = """
local s = redis.call('GET', KEYS[1])
if not s then return 0 end
local starts = {1}
for at in string.gmatch(s, '()\\n') do starts[#starts + 1] = at + 1 end
local n = #starts - 1
local first = 1
local function too_big(from)
  return n - from + 1 > tonumber(ARGV[2]) or #s - starts[from] + 1 > tonumber(ARGV[1])
end
while first < n and too_big(first) do first = first + 1 end
if first > 1 then redis.call('SET', KEYS[1], string.sub(s, starts[first])) end
return first - 1
"""


TRIM_SLACK = 10  # entries a capped list may grow past its cap before it is cut back


class History(Locks):
    """Each opportunity's latest writes with their causes; the latest events overall."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._cap = client.register_script(CAP_HISTORY)

    def note_write(self, key: str, vendor: str, history: dict[str, Any]) -> None:
        """Keep what caused one write (or delete) in ``vendor`` in the history list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), field("t", vendor), millis(time.time()))
        at = self._add_history(pipe, key, history)
        self._cap_history(key, pipe.execute()[at])

    def add_history(self, key: str, history: dict[str, Any]) -> None:
        """Keep one history entry: an event and the writes it caused (``history_entry``)."""
        length: int = self.redis.append(writes_key(key), pack(history) + "\n")  # type: ignore[assignment]
        self._cap_history(key, length)

    @staticmethod
    def _add_history(pipe: redis.client.Pipeline, key: str, entry: dict[str, Any]) -> int:
        """Queue the entry on ``pipe``; the position of its answer (the history's length)."""
        pipe.append(writes_key(key), pack(entry) + "\n")
        return len(pipe.command_stack) - 1

    def _cap_history(self, key: str, length: int) -> None:
        """Cut ``key``'s history back to its caps once it has grown past its bytes."""
        if length > HISTORY_BYTES:
            self._cap(keys=[writes_key(key)], args=[HISTORY_BYTES, WRITES_KEPT])

    def _trim(self, name: str, length: int, kept: int) -> None:
        """Cut list ``name`` back to ``kept`` entries once it is ``TRIM_SLACK`` past that:
        one LTRIM every few pushes rather than one with each."""
        if length > kept + TRIM_SLACK:
            self.redis.ltrim(name, 0, kept - 1)

    def writes(self, key: str, count: int = WRITES_KEPT) -> list[dict[str, Any]]:
        """The latest writes to vendors for ``key``, newest first, each with its cause."""
        flat: list[dict[str, Any]] = []
        kept: str = self.redis.get(writes_key(key)) or ""  # type: ignore[assignment]
        for raw in reversed(kept.split("\n")[:-1][-count:]):
            entry = unpack(raw)
            notes = sorted(entry["writes"], key=lambda n: n.get("at", ""), reverse=True)
            flat.extend({**entry["cause"], **note} for note in notes)
        return flat[:count]

    def note_event(self, entry: dict[str, Any]) -> None:
        self._trim(EVENTS, self.redis.lpush(EVENTS, json.dumps(entry)), RECENT_EVENTS)  # type: ignore[arg-type]

    def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(EVENTS, 0, count - 1)]  # type: ignore[union-attr]
