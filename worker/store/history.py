"""Provenance: the writes each event caused, per opportunity, and the recent events list.

An opportunity's history is one string of packed entries (``packing.pack_dense``: ASCII),
oldest first, each ended by ``SEPARATOR``, the one character outside ASCII (two bytes in
UTF-8, neither of them ASCII, so never part of an entry): a write adds its entry with one
script call
(in the pipeline of its other commands), and a string costs Redis less than a list. It is
capped by bytes and by count (``HISTORY_BYTES``, ``WRITES_KEPT``): the oldest entries are
cut once it grows past ``HISTORY_BYTES``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.store.keys import EVENTS, field, opp_key, writes_key
from worker.store.locks import Locks
from worker.store.packing import millis, pack_dense, unpack

RECENT_EVENTS = 200


WRITES_KEPT = 20  # history entries (an event and the writes it caused) kept per opportunity


#: Bytes of history kept per opportunity (about six events' fan-outs; the newest is always
#: kept): each deal's share of Redis stays small however busy it is.
HISTORY_BYTES = 2048


#: What ends each history entry (U+0080, bytes C2 80 in UTF-8).
SEPARATOR = "\x80"


# KEYS: the history. ARGV: the entry (with its SEPARATOR), bytes kept, entries kept. Appends
# the entry, then cuts the oldest entries (whole ones) until both caps hold, keeping
# the newest in any case; how many were cut. (APPEND would do the first part, but Redis then
# reserves as much again for the next one: the string would cost twice its bytes.)
ADD_HISTORY = """
local s = (redis.call('GET', KEYS[1]) or '') .. ARGV[1]
local cut = 0
if #s > tonumber(ARGV[2]) then
  local starts = {1}
  for at in string.gmatch(s, '()\\194\\128') do starts[#starts + 1] = at + 2 end
  local n = #starts - 1
  local function too_big(from)
    return n - from + 1 > tonumber(ARGV[3]) or #s - starts[from] + 1 > tonumber(ARGV[2])
  end
  while cut + 1 < n and too_big(cut + 1) do cut = cut + 1 end
  s = string.sub(s, starts[cut + 1])
end
redis.call('SET', KEYS[1], s)
return cut
"""


TRIM_SLACK = 10  # entries a capped list may grow past its cap before it is cut back


class History(Locks):
    """Each opportunity's latest writes with their causes; the latest events overall."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._add = client.register_script(ADD_HISTORY)

    def note_write(self, key: str, vendor: str, history: dict[str, Any]) -> None:
        """Keep what caused one write (or delete) in ``vendor`` in the history."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), field("t", vendor), millis(time.time()))
        at, again = self._add_history(pipe, key, history)
        self.run(pipe, {at: again})

    def add_history(self, key: str, history: dict[str, Any]) -> None:
        """Keep one history entry: an event and the writes it caused (``history_entry``)."""
        self._add(keys=[writes_key(key)], args=self._entry(history))

    def _add_history(
        self, pipe: redis.client.Pipeline, key: str, entry: dict[str, Any]
    ) -> tuple[int, Callable[[], Any]]:
        """Queue the entry on ``pipe`` (run it with ``run``); its position, and what adds it
        when Redis lacked the script."""
        args = self._entry(entry)
        # evalsha directly: a Script in a pipeline costs a SCRIPT EXISTS round trip.
        pipe.evalsha(self._add.sha, 1, writes_key(key), *args)
        return len(pipe.command_stack) - 1, lambda: self._add(keys=[writes_key(key)], args=args)

    @staticmethod
    def _entry(entry: dict[str, Any]) -> list[Any]:
        return [pack_dense(entry) + SEPARATOR, HISTORY_BYTES, WRITES_KEPT]

    def _trim(self, name: str, length: int, kept: int) -> None:
        """Cut list ``name`` back to ``kept`` entries once it is ``TRIM_SLACK`` past that:
        one LTRIM every few pushes rather than one with each."""
        if length > kept + TRIM_SLACK:
            self.redis.ltrim(name, 0, kept - 1)

    def writes(self, key: str, count: int = WRITES_KEPT) -> list[dict[str, Any]]:
        """The latest writes to vendors for ``key``, newest first, each with its cause."""
        flat: list[dict[str, Any]] = []
        kept: str = self.redis.get(writes_key(key)) or ""  # type: ignore[assignment]
        for raw in reversed(kept.split(SEPARATOR)[:-1][-count:]):
            entry = unpack(raw)
            notes = sorted(entry["writes"], key=lambda n: n.get("at", ""), reverse=True)
            flat.extend({**entry["cause"], **note} for note in notes)
        return flat[:count]

    def note_event(self, entry: dict[str, Any]) -> None:
        self._trim(EVENTS, self.redis.lpush(EVENTS, json.dumps(entry)), RECENT_EVENTS)  # type: ignore[arg-type]

    def recent_events(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(EVENTS, 0, count - 1)]  # type: ignore[union-attr]
