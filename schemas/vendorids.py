"""What each vendor's opportunity ids look like, and the check every incoming id passes.

An id enters from outside (a webhook or thin event, a fetched record, a list or poll answer,
a create's answer) and ends up in a URL path and in our link map, so it is checked against
the forms its vendor documents before it goes anywhere: ``.``, ``..``, an empty id, a slash
or a control character can never be a vendor's id, and in a URL they would name another
resource (httpx removes dot segments). Every documented form is accepted, as a string or a
JSON number where the vendor's ids are numbers (DESIGN.md "Thin events").

* SIRO: UUIDs ("Siro's internal id is ``data.id``", UUID per docs.siro.ai/getting-started).
* Leadway (HighLevel): 20-character alphanumeric ids (``wWhVuzqpRuOA1ZVWi4FC`` in the
  webhook examples, VENDORS.md §2.7); other lengths tolerated.
* iVvy: integers (``{"success": true, "id": 755}``, VENDORS.md §3.3), number or digits.
* Salescaling: UUIDs (``data.id (UUID)``, VENDORS.md §4.3).
* iCloudReady: undocumented ("No response schema", VENDORS.md §5.3 [?]); its examples are
  24-hex MongoDB ObjectIds, so ObjectIds, UUIDs, integers and other word-character tokens
  are accepted.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError

_UUID = r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
_INTEGER = r"[0-9]{1,19}"
_HIGHLEVEL = r"[A-Za-z0-9]{1,64}"
#: Undocumented ids: ObjectIds, UUIDs, integers and other tokens of word characters and
#: hyphens; never a dot, a slash, a percent sign or a control character.
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"

SHAPES: dict[str, re.Pattern[str]] = {
    "siro": re.compile(_UUID),
    "leadway": re.compile(_HIGHLEVEL),
    "ivvy": re.compile(_INTEGER),
    "salescaling": re.compile(_UUID),
    "icloudready": re.compile(_TOKEN),
}
#: What a refusal tells the sender a valid id looks like.
DESCRIPTIONS = {
    "siro": "a UUID",
    "leadway": "letters and digits",
    "ivvy": "an integer",
    "salescaling": "a UUID",
    "icloudready": "an ObjectId-style token of letters, digits, '_' and '-'",
}


def check(vendor: str, raw: Any) -> str:
    """``raw`` as the vendor's id (a string, surrounding blanks removed); raises
    ``ValidationError`` on the ``id`` field when it is not one of the vendor's id forms."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValidationError({"id": ["must be a string or an integer"]})
    text = str(raw).strip()
    if not SHAPES[vendor].fullmatch(text):
        shown = text[:40].encode("unicode_escape").decode("ascii")
        raise ValidationError({"id": [f"{shown!r} is not a {vendor} id ({DESCRIPTIONS[vendor]})"]})
    # iVvy's integer ids are compared as their plain digits (``0755`` is ``755``).
    return str(int(text)) if vendor == "ivvy" else text
