"""How long-lived JSON values are stored in Redis: compressed, about a third of their size.

An opportunity's document and its history entries are kept for as long as the deal is
synced, so their bytes are most of what oppsync costs in Redis. They are small JSON texts
made of the same words again and again (field names, vendor names, rules), which zlib
compresses well only when it knows those words in advance: a preset dictionary
(https://docs.python.org/3/library/zlib.html#zlib.compressobj, ``zdict``). The stored text
is ``z1:`` and the compressed bytes in base64 (the client reads Redis answers as text).

The dictionary is part of the stored format: never edit it. A better one gets a new mark
(``z2:``) beside it, and values stored with ``z1:`` keep reading. A value stored as plain
JSON (before compression) also reads as before.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

#: The words oppsync's documents and history entries are made of (zlib prefers the most
#: frequent at the end). Frozen: see the module's docstring.
DICTIONARY_V1 = (
    b'"writes":[{"target":"","at":"","action":"updated","target_id":"","carries":'
    b'"deleted again (our write crossed its delete)""marked lost (cannot delete)"'
    b'{"cause":{"vendor":"","delivery":"","correlation_id":"","vendor_id":"","fields":['
    b'"last writer wins (a tie, broken by name): value from "'
    b'"last writer wins: \'s older change ignored, value from ", but status set later by "'
    b'{"state":{"name":"","amount":"","status":"open","stage":"","close_date":"",'
    b'"description":"","probability":"","owner":null,"contact":null,"company":null,'
    b'"created_at":"+00:00","updated_at":"+00:00","deleted":false},"times":{"amount":,'
    b'"close_date":,"description":,"name":,"probability":,"status":,"stage":,"owner":,'
    b'"contact":,"company":},"rules":{"stage":"follows status from "},"sources":{"amount":"",'
    b'"close_date":"","description":"","name":"","probability":"","status":"","stage":""},'
    b'"last_change":{"vendor":"","vendor_id":"","delivery":"","scheme":"standard",'
    b'"correlation_id":"","received_at":,"fields":["amount","close_date","description",'
    b'"name","probability","status","stage"],"applied_at":,"after":null},"last_event":"="}'
    b'"created""siro""leadway""ivvy""icloudready""salescaling"'
)
#: The mark of a value compressed with ``DICTIONARY_V1``.
MARK_V1 = "z1:"


def pack(value: Any) -> str:
    """``value`` as compact JSON, compressed, as stored text."""
    text = json.dumps(value, separators=(",", ":")).encode()
    compressor = zlib.compressobj(level=9, zdict=DICTIONARY_V1)
    packed = compressor.compress(text) + compressor.flush()
    return MARK_V1 + base64.b64encode(packed).decode("ascii")


def unpack(stored: str) -> Any:
    """The value ``pack`` stored (or a value stored as plain JSON)."""
    if stored.startswith(MARK_V1):
        decompressor = zlib.decompressobj(zdict=DICTIONARY_V1)
        return json.loads(decompressor.decompress(base64.b64decode(stored[len(MARK_V1) :])))
    return json.loads(stored)
