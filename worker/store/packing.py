"""How long-lived JSON values are stored in Redis: compressed, about a third of their size.

An opportunity's document and its history entries are kept for as long as the deal is
synced, so their bytes are most of what oppsync costs in Redis. They are small JSON texts
made of the same words again and again (field names, vendor names, rules), which zlib
compresses well only when it knows those words in advance: a preset dictionary
(https://docs.python.org/3/library/zlib.html#zlib.compressobj, ``zdict``). The stored text
is ``z1:`` and the compressed bytes in base64 (the client reads Redis answers as text), or
``z7:`` and the same bytes seven bits to a character (``worker/store/sevenbit.py``: an eighth
more than the bytes rather than a third; for the document's pieces in its hash, where no
character needs to be kept free as a separator).

The dictionary is part of the stored format: never edit it. A better one gets a new mark
(``z2:``) beside it, and values stored with ``z1:`` keep reading. A value stored as plain
JSON (before compression) also reads as before.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.store import sevenbit

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
#: The mark of a value compressed with ``DICTIONARY_V1``, written seven bits to a character.
MARK_DENSE = "z7:"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pack(value: Any) -> str:
    """``value`` as compact JSON, compressed, as stored text."""
    return MARK_V1 + base64.b64encode(_compressed(value)).decode("ascii")


def pack_dense(value: Any) -> str:
    """``value`` compressed as ``pack`` does, its bytes written seven bits to a character."""
    return MARK_DENSE + sevenbit.encode(_compressed(value))


def _compressed(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":")).encode()
    compressor = zlib.compressobj(level=9, zdict=DICTIONARY_V1)
    return compressor.compress(text) + compressor.flush()


def unpack(stored: str) -> Any:
    """The value ``pack`` or ``pack_dense`` stored (or a value stored as plain JSON)."""
    if stored.startswith(MARK_V1):
        return _decompressed(base64.b64decode(stored[len(MARK_V1) :]))
    if stored.startswith(MARK_DENSE):
        return _decompressed(sevenbit.decode(stored[len(MARK_DENSE) :]))
    return json.loads(stored)


def _decompressed(packed: bytes) -> Any:
    return json.loads(zlib.decompressobj(zdict=DICTIONARY_V1).decompress(packed))


# -- values in an opportunity's hash: short, so the hash stays in its compact encoding ------
#: A hash field's value longer than this makes Redis convert the whole hash to its big
#: encoding (``hash-max-listpack-value``, 64 by default).
PIECE = 64


def pieces(stored: str) -> dict[str, str]:
    """A stored document as hash fields ``d0``, ``d1``, … of at most ``PIECE`` characters."""
    return {f"d{n}": stored[at : at + PIECE] for n, at in enumerate(range(0, len(stored), PIECE))}


def joined(fields: dict[str, str]) -> tuple[str | None, int]:
    """The document a hash's ``pieces`` spell (None: none stored), and how many there are."""
    count = 0
    while f"d{count}" in fields:
        count += 1
    return ("".join(fields[f"d{n}"] for n in range(count)) if count else None), count


_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")
_SHORT_DIGEST = re.compile(r"[A-Za-z0-9_-]{22}")


def short_digest(fingerprint: str) -> str:
    """A 32-hex-digit fingerprint in 22 characters (base64url); any other value as it is."""
    if _HEX_DIGEST.fullmatch(fingerprint):
        return base64.urlsafe_b64encode(bytes.fromhex(fingerprint)).decode().rstrip("=")
    return fingerprint


def full_digest(stored: str) -> str:
    """What ``short_digest`` stored, as it was given."""
    if _SHORT_DIGEST.fullmatch(stored):
        return base64.urlsafe_b64decode(stored + "==").hex()
    return stored


def millis(at: float) -> str:
    """Epoch seconds as whole milliseconds, rounded up (a time compared as "after it" never
    moves earlier), which Redis keeps as an 8-byte integer."""
    return str(math.ceil(at * 1000))


def from_millis(stored: str) -> float:
    """What ``millis`` stored (or epoch seconds as the previous release stored them)."""
    return float(stored) if "." in stored else int(stored) / 1000


def micros(at: datetime) -> str:
    """A time as epoch microseconds (exact for what vendors send; naive means UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return str((at - EPOCH) // timedelta(microseconds=1))


def from_micros(stored: str) -> str:
    """What ``micros`` stored, as an ISO 8601 time in UTC."""
    return (EPOCH + timedelta(microseconds=int(stored))).isoformat()
