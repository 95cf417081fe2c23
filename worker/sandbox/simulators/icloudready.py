"""A stateful fake of iCloudReady's opportunities API (VENDORS.md §5), served over HTTP.

What it enforces, as the vendor page and the research describe it (the gaps filled as noted):

* ``POST /api/v2/signin`` with ``{"email", "password"}`` answers a token under ``token_key``
  (the real key is undocumented: "token", "accessToken" or "access_token"); wrong
  credentials get 401. Every other route needs ``Authorization: Bearer <token>`` (401
  ``{"message": "Unauthorized"}``); ``expire_tokens()`` invalidates every token issued.
* Opportunities get 24-hex ObjectId-style ids stored as ``_id``, and ``createdAt`` /
  ``updatedAt`` (ISO, milliseconds, ``Z``). Create answers ``{"data": record}`` (or the bare
  record with ``wrap_data=False``); ``PATCH`` changes only the keys it is given (null clears);
  ``GET /:id`` answers the bare record; the list answers ``{"data": [...], "total": n}`` (or a
  bare array), newest ``updatedAt`` first unless ``sortBy``/``order`` say otherwise, ``q``
  matching a substring of ``opportunityInformation.name``, ``page`` from 1, ``limit`` ≤ 100.
  Delete is at the documented ``DELETE /api/v2/opportunities/deleted/:id``.
* Validation (400 ``{"message", "errors": {field: why}}``): a create needs
  ``opportunityInformation.name``; ``revenue`` a number ≥ 0; ``probability`` 0-1;
  ``opportunityInformation`` an object; ``closeDate`` ``YYYY-MM-DD``; ids and names strings.
  Keys outside the documented body are dropped, as a strict Mongoose schema would.
* Quota 480 requests per 60 s (VENDORS.md §5.6), answered with 429 and ``Retry-After``.

iCloudReady sends no webhooks; ``emit_standard`` models a customer's automation posting a
Standard Webhooks delivery (the record, or ``{"id": …}``) to ``webhook_url``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import secrets
import time
from datetime import UTC, date, datetime
from typing import Any

from flask import Response, request

from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.variants import Variants

API = "/api/v2"
MAX_LIMIT = 100

# The documented create/update body, by type
# (https://www.icloud-ready.com/docs/api/opportunities/); ranges are this fake's assumptions.
# fmt: off
STRINGS = frozenset((
    "customer", "leadId", "opportunityOwner", "promoId", "opportunityType", "opportunitySource",
    "status", "taskId", "idengagerRequestId", "opportunityDescription", "stage",
    "forecastCategory",
))
NUMBERS = {"revenue": (0, math.inf), "probability": (0, 1), "discount": (0, math.inf),
           "opportunityRating": (-math.inf, math.inf)}
# fmt: on
ARRAYS = ("units", "activityLog", "notes", "documents")
DOCUMENTED = STRINGS | set(NUMBERS) | set(ARRAYS) | {"opportunityInformation", "closeDate"}
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BodyError(Exception):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field} {why}")
        self.field = field
        self.why = why


def _check_field(key: str, value: Any) -> None:
    """Raise ``BodyError`` naming ``key`` when ``value`` has the wrong type or range."""
    if value is None:
        return
    if key in STRINGS and not isinstance(value, str):
        raise BodyError(key, "must be a string")
    if key in NUMBERS:
        low, high = NUMBERS[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BodyError(key, "must be a number")
        if not low <= value <= high:
            raise BodyError(key, f"must be between {low:g} and {high:g}")
    if key in ARRAYS and not isinstance(value, list):
        raise BodyError(key, "must be an array")
    if key == "opportunityInformation":
        if not isinstance(value, dict):
            raise BodyError(key, "must be an object")
        if not isinstance(value.get("name", ""), str | None):
            raise BodyError("opportunityInformation.name", "must be a string")
    if key == "closeDate":
        try:
            if not isinstance(value, str) or not DAY.match(value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            raise BodyError(key, "must be a date YYYY-MM-DD") from None


#: The record keys synced fields are read from, but the name (``schemas/icloudready.py``).
SYNCED_KEYS = ("opportunityDescription", "revenue", "probability", "closeDate", "status",
               "stage", "opportunityOwner")  # fmt: skip


class IcloudreadySimulator(Simulator):
    name = "icloudready"
    writes = ("/api/v2/opportunities", ("POST", "PATCH"))

    def __init__(
        self,
        *,
        email: str = "ops@example.com",
        password: str = "icr-test-password",
        token_key: str = "token",
        wrap_data: bool = True,
        latency: float = 0.0,
        rate_limit: tuple[int, float] | None = (480, 60),
    ) -> None:
        self.email = email
        self.password = password
        self.token_key = token_key
        self.wrap_data = wrap_data
        self.tokens: set[str] = set()
        #: Records removed through the API, as they were, by id.
        self.deleted: dict[str, dict[str, Any]] = {}
        self._machine = os.urandom(5).hex()
        self._last_stamp = 0
        super().__init__(latency=latency, rate_limit=rate_limit)

    # -- auth ----------------------------------------------------------------------------
    def check_auth(self) -> Response | None:
        if request.path == f"{API}/signin":
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return self.json_response({"message": "Unauthorized"}, 401)
        return None

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (the next call gets 401)."""
        with self.state_lock:
            self.tokens.clear()

    def reset(self) -> None:
        super().reset()
        with self.state_lock:
            self.deleted.clear()

    # -- state, callable without HTTP ----------------------------------------------------
    def store_new(self, body: Any) -> dict[str, Any]:
        """Create a record from a create body; raises ``BodyError``."""
        cleaned = self._validated(body)
        name = (cleaned.get("opportunityInformation") or {}).get("name")
        if not isinstance(name, str) or not name.strip():
            raise BodyError("opportunityInformation.name", "is required")
        with self.state_lock:
            stamp = self._stamp()
            vendor_id = self._object_id()
            record = {"_id": vendor_id, **cleaned, "createdAt": stamp, "updatedAt": stamp, "__v": 0}
            self.records[vendor_id] = record
            return copy.deepcopy(record)

    def store_changes(self, vendor_id: str, body: Any) -> dict[str, Any] | None:
        """Apply a PATCH body (given keys only; null clears); None when there is no record."""
        cleaned = self._validated(body)
        with self.state_lock:
            record = self.records.get(vendor_id)
            if record is None:
                return None
            record.update(cleaned)
            record["updatedAt"] = self._stamp()
            return copy.deepcopy(record)

    def seed(self, record: dict[str, Any]) -> str:
        """Store a record as given (vendor keys), adding ``_id`` and timestamps if absent."""
        with self.state_lock:
            stamp = self._stamp()
            stored = {"createdAt": stamp, "updatedAt": stamp, **copy.deepcopy(record)}
            vendor_id = str(stored.setdefault("_id", self._object_id()))
            self.records[vendor_id] = stored
            return vendor_id

    def edit(self, vendor_id: str, **changes: Any) -> dict[str, Any]:
        """A person edits the record in iCloudReady's UI: vendor keys (``name=`` sets
        ``opportunityInformation.name``), and ``updatedAt`` moves on."""
        with self.state_lock:
            record = self.records[vendor_id]
            if "name" in changes:
                info = dict(record.get("opportunityInformation") or {})
                info["name"] = changes.pop("name")
                record["opportunityInformation"] = info
            record.update(changes)
            record["updatedAt"] = self._stamp()
            return copy.deepcopy(record)

    def emit_standard(self, vendor_id: str, thin: bool = False) -> int:
        """The customer's automation posts this record (or ``{"id": …}`` when ``thin``) as a
        Standard Webhooks delivery; a deleted record goes with ``isDeleted: true``."""
        with self.state_lock:
            record = self.records.get(vendor_id)
            if record is None and vendor_id in self.deleted:
                record = {**self.deleted[vendor_id], "isDeleted": True}
            payload = {"id": vendor_id} if thin or record is None else self.shown(record)
        return self.send_standard_webhook(payload)

    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """iCloudReady documents no answer at all (VENDORS.md §5, DESIGN.md "iCloudReady
        fields"): any timestamp form, ``closeDate`` as a date or a MongoDB date-time, the id
        as ``_id`` or ``id``, synced keys we wrote left out, unknown status and stage values,
        optional keys left out or null, keys it adds."""
        any_form = ("iso-z", "iso-offset", "iso-east", "space", "iso-naive")
        for key in ("createdAt", "updatedAt"):
            record[key] = variants.timestamp(record.get(key), any_form)
        close = record.get("closeDate")
        if isinstance(close, str) and len(close) == 10 and variants.chance("timestamps", 0.3):
            record["closeDate"] = f"{close}T00:00:00.000Z"
        # The name stays: a look-up after a lost create matches on it (worker/vendors).
        self.omit_written(record, variants, SYNCED_KEYS, id_key="_id")
        self.unknown_enum(record, variants, {"status": "pending-review"}, id_key="_id")
        self.unknown_enum(record, variants, {"stage": "stage-unlisted"}, id_key="_id")
        variants.optional(record, ("customer", "leadId", "__v", "notes", "units"))
        if variants.chance("id_types", 0.3):
            record["id"] = record.pop("_id")
        return variants.extra_keys(record)

    def _validated(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BodyError("body", "must be a JSON object")
        cleaned = {key: value for key, value in body.items() if key in DOCUMENTED}
        for key, value in cleaned.items():
            _check_field(key, value)
        return copy.deepcopy(cleaned)

    def _object_id(self) -> str:
        """MongoDB ObjectId layout: 4-byte time, 5-byte machine, 3-byte counter."""
        return f"{int(time.time()) & 0xFFFFFFFF:08x}{self._machine}{self.next_id() & 0xFFFFFF:06x}"

    def _stamp(self) -> str:
        """Now, ISO with milliseconds; strictly later than the previous stamp."""
        millis = max(time.time_ns() // 1_000_000, self._last_stamp + 1)
        self._last_stamp = millis
        moment = datetime.fromtimestamp(millis / 1000, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"

    # -- routes --------------------------------------------------------------------------
    def _wrapped(self, data: Any, status: int = 200, **extra: Any) -> Response:
        wrap = self.wrap_data
        if self.variants is not None and self.variants.chance("wrapping"):
            wrap = not wrap  # a list bare or under "data", a record bare or under "data"
        return self.json_response({"data": data, **extra} if wrap else data, status)

    def _bad(self, exc: BodyError) -> Response:
        return self.json_response(
            {"message": f"Validation failed: {exc}", "errors": {exc.field: exc.why}}, 400
        )

    def _not_found(self, vendor_id: str) -> Response:
        if not OBJECT_ID.match(vendor_id):
            return self.json_response({"message": f"Invalid id: {vendor_id}"}, 400)
        return self.json_response({"message": "Opportunity not found"}, 404)

    def routes(self) -> None:
        app = self.app

        @app.post(f"{API}/signin")
        def signin() -> Response:
            body = request.get_json(silent=True) or {}
            if body.get("email") != self.email or body.get("password") != self.password:
                return self.json_response({"message": "Invalid email or password"}, 401)
            token = secrets.token_urlsafe(24)
            with self.state_lock:
                self.tokens.add(token)
            key = self.token_key  # the token's key is undocumented (DESIGN.md): any of three
            if self.variants is not None:
                key = self.variants.pick("token_key", (key, "token", "accessToken", "access_token"))
            return self.json_response({key: token, "user": {"email": self.email}})

        @app.post(f"{API}/opportunities")
        def create() -> Response:
            try:
                record = self.store_new(request.get_json(silent=True))
            except BodyError as exc:
                return self._bad(exc)
            self.wrote(record["_id"])
            return self._wrapped(self.shown(record), 201)

        @app.get(f"{API}/opportunities")
        def list_opportunities() -> Response:
            try:
                page = int(request.args.get("page", "1"))
                limit = min(int(request.args.get("limit", "10")), MAX_LIMIT)
            except ValueError:
                return self._bad(BodyError("page", "and limit must be integers"))
            if page < 1 or limit < 1:
                return self._bad(BodyError("page", "and limit must be positive"))
            sort_by = request.args.get("sortBy") or "updatedAt"
            query = (request.args.get("q") or "").lower()
            with self.state_lock:
                matches = [
                    r
                    for r in self.records.values()
                    if query
                    in str((r.get("opportunityInformation") or {}).get("name") or "").lower()
                ]
            matches.sort(
                key=lambda r: (str(r.get(sort_by) or ""), r["_id"]),
                reverse=request.args.get("order", "desc").lower() != "asc",
            )
            chunk = [self.shown(r) for r in matches[(page - 1) * limit : page * limit]]
            return self._wrapped(chunk, total=len(matches))

        @app.get(f"{API}/opportunities/<vendor_id>")
        def read(vendor_id: str) -> Response:
            with self.state_lock:
                record = self.records.get(vendor_id)
                answer = self.shown(record) if record else None
            if answer is None:
                return self._not_found(vendor_id)
            if self.variants is not None and self.variants.chance("wrapping"):
                return self.json_response({"data": answer})
            return self.json_response(answer)

        @app.patch(f"{API}/opportunities/<vendor_id>")
        def patch(vendor_id: str) -> Response:
            try:
                record = self.store_changes(vendor_id, request.get_json(silent=True))
            except BodyError as exc:
                return self._bad(exc)
            if record is None:
                return self._not_found(vendor_id)
            self.wrote(vendor_id)
            return self._wrapped(self.shown(record))

        @app.delete(f"{API}/opportunities/deleted/<vendor_id>")
        def delete(vendor_id: str) -> Response:
            with self.state_lock:
                record = self.records.pop(vendor_id, None)
                if record is not None:
                    self.deleted[vendor_id] = record
            if record is None:
                return self._not_found(vendor_id)
            return self.json_response({"message": "Opportunity deleted", "data": record})
