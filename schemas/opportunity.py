"""The canonical opportunity: the one shape every vendor record is translated into and out of.

Values are frozen. A vendor's inbound schema builds an ``Opportunity`` holding only the
fields that vendor can represent (the others stay ``None``); the worker merges it into the
stored canonical state field by field. A field the record did not carry (its key absent, or
a value the mapping cannot read) is named in ``unknown``: the worker keeps what it has for
it, where ``None`` in a carried field means the vendor cleared it (DESIGN.md, "Absent is
not empty"). Values the mapping could not read are kept in ``unmapped`` to be reported.
``CanonicalOpportunitySchema`` is the strict (de)serialiser used to store state in Redis and
to validate values before any vendor call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, fields, post_load, validate


class Status(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Contact:
    """The primary contact of a deal. Matching across vendors is by email, else phone."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class Opportunity:
    """One deal, vendor-neutral.

    ``amount`` is a Decimal with two places, ``probability`` a percentage 0–100,
    ``stage`` a canonical stage name from the mapping file, ``owner`` an email address.
    ``created_at``/``updated_at`` are the *source* vendor's own timestamps (aware, UTC).
    """

    name: str | None = None
    amount: Decimal | None = None
    status: Status | None = None
    stage: str | None = None
    close_date: date | None = None
    description: str | None = None
    probability: Decimal | None = None
    owner: str | None = None
    contact: Contact | None = None
    company: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted: bool = False
    #: Synced fields the vendor's record did not carry: unknown, not cleared. Not part of
    #: the value (equality, hashing and fingerprints ignore it).
    unknown: frozenset[str] = field(default=frozenset(), compare=False)
    #: ``(vendor field, value)`` the mapping could not read (their fields are ``unknown``).
    unmapped: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def replace(self, **changes: Any) -> Opportunity:
        return dataclasses.replace(self, **changes)

    def completed(self, known: Opportunity) -> Opportunity:
        """This value with each field it did not carry taken from ``known`` (what we hold
        for it): the fields stay named in ``unknown``, so a merge still skips them."""
        if not self.unknown:
            return self
        return self.replace(**{name: getattr(known, name) for name in self.unknown})


def not_carried(record: Any, keys: Mapping[str, str | Iterable[str]]) -> frozenset[str]:
    """The canonical fields none of whose record keys ``record`` has (``keys`` maps each
    synced field to the vendor key, or keys, it is read from)."""
    if not isinstance(record, dict):
        return frozenset()
    absent = set()
    for name, wanted in keys.items():
        names = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        if not any(key in record for key in names):
            absent.add(name)
    return frozenset(absent)


#: Fields that are synced between vendors (timestamps and ``deleted`` are metadata).
SYNCED_FIELDS: tuple[str, ...] = (
    "name",
    "amount",
    "status",
    "stage",
    "close_date",
    "description",
    "probability",
    "owner",
    "contact",
    "company",
)

MAX_NAME = 255
MAX_TEXT = 10_000


class ContactSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=MAX_NAME))
    email = fields.Email(allow_none=True, load_default=None, validate=validate.Length(max=MAX_NAME))
    phone = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=40))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Contact:
        return Contact(**data)


class CanonicalOpportunitySchema(Schema):
    """Strict schema of the canonical value: ranges and lengths are checked here."""

    class Meta:
        unknown = RAISE

    name = fields.String(
        allow_none=True, load_default=None, validate=validate.Length(min=1, max=MAX_NAME)
    )
    amount = fields.Decimal(
        allow_none=True,
        load_default=None,
        places=2,
        as_string=True,
        validate=validate.Range(min=0, max=Decimal("1e13")),
    )
    status = fields.Enum(Status, by_value=True, allow_none=True, load_default=None)
    stage = fields.String(
        allow_none=True, load_default=None, validate=validate.Length(max=MAX_NAME)
    )
    close_date = fields.Date(allow_none=True, load_default=None)
    description = fields.String(
        allow_none=True, load_default=None, validate=validate.Length(max=MAX_TEXT)
    )
    probability = fields.Decimal(
        allow_none=True,
        load_default=None,
        places=2,
        as_string=True,
        validate=validate.Range(min=0, max=100),
    )
    owner = fields.Email(allow_none=True, load_default=None)
    contact = fields.Nested(ContactSchema, allow_none=True, load_default=None)
    company = fields.String(
        allow_none=True, load_default=None, validate=validate.Length(max=MAX_NAME)
    )
    created_at = fields.AwareDateTime(allow_none=True, load_default=None, default_timezone=None)
    updated_at = fields.AwareDateTime(allow_none=True, load_default=None, default_timezone=None)
    deleted = fields.Boolean(load_default=False)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Opportunity:
        return Opportunity(**data)


_SCHEMA = CanonicalOpportunitySchema()


def dump(opp: Opportunity) -> dict[str, Any]:
    """The JSON-ready form of a canonical value (what is stored and fingerprinted)."""
    return _SCHEMA.dump(opp)


def load(data: dict[str, Any]) -> Opportunity:
    """Validate and build a canonical value; raises ``marshmallow.ValidationError``."""
    return _SCHEMA.load(data)


def validation_errors(opp: Opportunity) -> dict[str, Any]:
    """Range and length problems of a canonical value, by field (empty when valid)."""
    return _SCHEMA.validate(dump(opp))


@lru_cache(maxsize=4096)
def fingerprint(opp: Opportunity, field_names: tuple[str, ...] | frozenset[str]) -> str:
    """A stable hash of the given synced fields; equal values give equal fingerprints.

    Cached: one event fingerprints the same frozen values for every vendor several times
    (echo check, merge, plan, push), and each costs a marshmallow dump."""
    data = dump(opp)
    selected = {name: data.get(name) for name in sorted(field_names)}
    blob = json.dumps(selected, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def json_number(value: Decimal | None) -> int | float | None:
    """A Decimal as the JSON number vendors expect (integral values without a fraction)."""
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def to_decimal(value: object) -> Decimal | None:
    """A vendor's number (int, float or numeric string) as a two-place Decimal."""
    if value is None or value == "":
        return None
    return Decimal(str(value)).quantize(Decimal("0.01"))
