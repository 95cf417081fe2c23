"""Hypothesis strategies and shared fixtures data for oppsync's tests."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from schemas.envelope import Envelope, Scheme
from schemas.opportunity import Contact, Opportunity, Status
from worker.sandbox.files import EXAMPLE_MAPPING

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)
names = st.builds(lambda a, b: f"{a.title()} {b}", _word, _word)
person_names = st.builds(lambda a, b: f"{a.title()} {b.title()}", _word, _word)
emails = st.builds(lambda a, b: f"{a}@{b}.example.com", _word, _word)
phones = st.from_regex(r"\+61[0-9]{9}", fullmatch=True)
amounts = st.decimals(
    min_value=0, max_value=10_000_000, places=2, allow_nan=False, allow_infinity=False
)
probabilities = st.integers(min_value=0, max_value=100).map(Decimal)
close_dates = st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31))
stage_names = st.sampled_from([s.name for s in EXAMPLE_MAPPING.stages])
times = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000, tzinfo=UTC)
)
contacts = st.builds(Contact, name=person_names, email=st.none() | emails, phone=st.none() | phones)


@st.composite
def opportunities(draw: st.DrawFn) -> Opportunity:
    """A canonical opportunity whose stage (when set) agrees with its status."""
    stage = draw(st.none() | stage_names)
    named = EXAMPLE_MAPPING.stage_named(stage)
    status = named.status if named is not None else draw(st.sampled_from(list(Status)))
    return Opportunity(
        name=draw(names),
        amount=draw(st.none() | amounts),
        status=status,
        stage=stage,
        close_date=draw(st.none() | close_dates),
        description=draw(st.none() | st.text(min_size=1, max_size=200).filter(str.strip)),
        probability=draw(st.none() | probabilities),
        owner=draw(st.none() | st.just("alice@example.com")),
        contact=draw(st.none() | contacts),
        company=draw(st.none() | names),
        created_at=draw(st.none() | times),
        updated_at=draw(st.none() | times),
    )


def envelope(
    vendor: str,
    payload: dict[str, Any],
    scheme: Scheme = "standard",
    delivery_id: str | None = None,
) -> Envelope:
    """An event as the receiver queues it (a fresh delivery id unless one is given)."""
    return Envelope(
        vendor=vendor,
        scheme=scheme,
        delivery_id=delivery_id or f"msg_{uuid.uuid4().hex}",
        received_at=time.time(),
        correlation_id=uuid.uuid4().hex,
        payload=payload,
    )
