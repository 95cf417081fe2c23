"""Vendor timestamps read tolerantly: one reader for every form the five vendors' pages allow.

The forms (VENDORS.md and the pages in vendor-docs/):

* iVvy ``yyyy-mm-dd HH:mm:ss[ UTC]`` (development-reference/timestamp-format.md, the
  ``IVVY-Date`` row of §3.2), and the ``Date`` header form ``Thu, 12 Apr 2012 07:17:06 UTC``;
* SIRO ``2024-02-28 20:09:58.692`` (the ``closedAt`` example) and ``2023-11-07T05:31:56Z``;
* HighLevel ``2021-11-26T12:41:02.193Z``; Salescaling ``2024-01-15T10:00:00.000Z``;
* iCloudReady documents no answer at all, so any of the above.

That is ISO 8601 with a ``T`` or a space, with or without fractions (any number of digits),
with ``Z``, a numeric offset, a `` UTC``/`` GMT`` suffix or no zone at all (read as UTC, the
zone every one of these vendors documents for its own times); a bare date is its midnight
UTC. Anything else raises ``ValueError``; ``Timestamp`` turns that into a validation error
naming the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from marshmallow import fields

#: A zone written as a word after the time: iVvy's `` UTC``, or ``GMT``.
_ZONE_WORD = re.compile(r"\s*(?:UTC|GMT)\s*$", re.IGNORECASE)
#: More than six fractional digits: Python reads at most microseconds.
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(value: str) -> datetime:
    """A vendor timestamp as an aware UTC ``datetime``; raises ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    text = value.strip()
    if text[:1].isalpha():  # "Thu, 12 Apr 2012 07:17:06 UTC" (RFC 1123, iVvy's Date header)
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"not a timestamp: {value!r}") from None
    else:
        text = _LONG_FRACTION.sub(r"\1", _ZONE_WORD.sub("", text))
        if len(text) < 10:  # not even a date ("2024", "10:00"): fromisoformat takes a few
            raise ValueError(f"not a timestamp: {value!r}")
        parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def read_timestamp(value: object) -> datetime | None:
    """``parse_timestamp`` for values that may be anything: ``None`` when it is not one."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


class Timestamp(fields.Field):
    """A marshmallow field for a vendor timestamp: any form above, loaded as aware UTC."""

    default_error_messages = {"invalid": "Not a valid timestamp."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_timestamp(value)
        except ValueError:
            raise self.make_error("invalid") from None
