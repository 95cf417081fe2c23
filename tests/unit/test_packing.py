"""Compressed storage of long-lived JSON values: round trips, size, and older values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.store import sevenbit
from worker.store.packing import (
    MARK_DENSE,
    MARK_V1,
    PIECE,
    from_micros,
    from_millis,
    full_digest,
    joined,
    micros,
    millis,
    pack,
    pack_dense,
    pieces,
    short_digest,
    unpack,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text() | st.integers(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)

DOCUMENT = {
    "state": {"name": "Harbour View Conference", "amount": "12500.00", "status": "open",
              "stage": "new", "close_date": "2027-03-15", "description": "Three-day venue",
              "probability": "60.00", "owner": None, "contact": None, "company": None,
              "created_at": "2026-12-03T08:35:05.945000+00:00",
              "updated_at": "2026-12-03T08:35:05.945000+00:00", "deleted": False},
    "times": {name: 1796286905.945 for name in ("amount", "name", "status", "stage")},
    "rules": {"stage": "follows status from salescaling"},
    "sources": {name: "salescaling" for name in ("amount", "name", "status", "stage")},
    "last_change": {"vendor": "salescaling", "vendor_id": "1df88c1c-9438-4857-8988-ad1a5d172e0e",
                    "delivery": "msg_1796286905945261700", "scheme": "standard",
                    "correlation_id": "932696b156aa4d2eacd64809d9eaf7f5",
                    "received_at": 1796286905.948905, "fields": ["amount", "name", "status"],
                    "applied_at": 1796286906.0151446, "after": None},
    "last_event": "=",
}  # fmt: skip


@given(json_values)
def test_any_json_value_reads_back_as_it_was_stored(value: Any) -> None:
    stored = pack(value)
    assert stored.startswith(MARK_V1) and stored.isascii()
    assert unpack(stored) == value


def test_a_document_is_stored_in_under_half_its_json_size() -> None:
    plain = json.dumps(DOCUMENT, separators=(",", ":"))
    assert len(pack(DOCUMENT)) < len(plain) / 2


def test_a_value_stored_as_plain_json_before_compression_still_reads() -> None:
    assert unpack(json.dumps(DOCUMENT)) == DOCUMENT


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=1000))
def test_pieces_fit_a_compact_hash_and_join_back(stored: str) -> None:
    fields = pieces(stored)
    assert all(len(v) <= PIECE for v in fields.values())
    assert joined({**fields, "i:s": "S1"}) == ((stored or None), len(fields))


@given(st.binary(min_size=16, max_size=16))
def test_a_fingerprint_is_kept_in_22_characters_and_read_back_whole(digest: bytes) -> None:
    fingerprint = digest.hex()
    assert len(short_digest(fingerprint)) == 22
    assert full_digest(short_digest(fingerprint)) == fingerprint


def test_other_written_marks_are_kept_as_they_are() -> None:
    for mark in ("gone", "unsure", "invalid-0123456789abcdef", "a" * 16):
        assert full_digest(short_digest(mark)) == mark


@given(st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)))
def test_times_read_back_exactly(at: datetime) -> None:
    assert datetime.fromisoformat(from_micros(micros(at))) == at
    assert 0 <= from_millis(millis(at.timestamp())) - at.timestamp() < 0.001 + 1e-6


@given(st.binary(max_size=2000))
def test_sevenbit_text_is_ascii_an_eighth_longer_and_reads_back(data: bytes) -> None:
    text = sevenbit.encode(data)
    assert text.isascii() and len(text) == len(data) + -(-len(data) // 7)
    assert sevenbit.decode(text) == data


@given(json_values)
def test_dense_values_read_back_and_are_shorter_than_base64(value: Any) -> None:
    stored = pack_dense(value)
    assert stored.startswith(MARK_DENSE) and unpack(stored) == value
    assert len(stored) <= len(pack(value))
