"""A stateful fake of Salescaling's opportunities API, served over HTTP on loopback.

What it enforces, after https://docs.salescaling.com/api/opportunities (vendor-docs/
salescaling-opportunities.txt) and VENDORS.md §4:

* ``x-api-key`` must equal the key the simulator was built with, else 401 with the envelope
  ``{"statusCode": 401, "count": 0, "error": "Unauthorized - missing or invalid API key",
  "data": null}``.
* Every answer is the envelope ``{"statusCode", "count", "error", "data"}``; ``data.id`` is a
  UUID; ``createdAt``/``updatedAt`` are ISO date-times with milliseconds and ``Z``.
* ``POST`` needs a ``name``; ``amount``/``finalAmount``/``closeProbability`` (0-100) must be
  numbers, ``status`` one of ``statuses``, ``closeDate`` an ISO date-time: else 400 naming it.
* ``PUT /{id}`` replaces the writable fields (``put_replaces=True``, the strict reading of the
  undocumented semantics) or merges the keys sent; an unknown id gets 404.
* ``GET ?page=&limit=&name=&contactId=``: ``name`` is a case-insensitive partial match,
  ``count`` is the total matching, pages are 1-based.

Salescaling has no opportunity webhooks; ``emit_standard`` models the customer's automation
sending a Standard Webhooks delivery, and ``automation=True`` sends one after every change.
"""

from __future__ import annotations

import copy
import hmac
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, request

from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.variants import Variants

PREFIX = "/api/v1/opportunities"
UNAUTHORIZED = "Unauthorized - missing or invalid API key"
DEFAULT_STATUSES = ("open", "won", "lost", "abandoned")
NUMBER_FIELDS = ("amount", "finalAmount", "closeProbability")
TEXT_FIELDS = ("description", "risk", "priority", "featuredNotes", "nextStep")
WRITABLE = ("name", *NUMBER_FIELDS, *TEXT_FIELDS, "closeDate", "status")


def iso_ms(moment: datetime) -> str:
    """The vendor's timestamp format: ``2024-01-15T10:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SalescalingSimulator(Simulator):
    name = "salescaling"
    writes = ("/api/v1/opportunities", ("POST", "PUT"))

    def __init__(
        self,
        *,
        api_key: str = "salescaling-test-key",
        statuses: Iterable[str] = DEFAULT_STATUSES,
        put_replaces: bool = True,
        max_limit: int = 100,
        automation: bool = False,
        latency: float = 0.0,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.api_key = api_key
        self.statuses = tuple(statuses)
        self.put_replaces = put_replaces
        self.max_limit = max_limit
        self.automation = automation
        #: Contacts linked to each opportunity (``POST /{id}/contacts``), for ``contactId``.
        self.contacts: dict[str, list[str]] = {}
        self._last_stamp = datetime.fromtimestamp(0, UTC)
        super().__init__(latency=latency, rate_limit=rate_limit)

    # -- answers -------------------------------------------------------------------------
    @classmethod
    def envelope(cls, data: Any, *, count: int | None = None) -> Response:
        """A 200 answer: ``count`` is the total for lists (the page may hold fewer)."""
        if count is None:
            count = len(data) if isinstance(data, list) else 1
        body = {"statusCode": 200, "count": count, "error": None, "data": data}
        return cls.json_response(body)

    def fail(self, status: int, error: str, headers: dict[str, str] | None = None) -> Response:
        body = {"statusCode": status, "count": 0, "error": error, "data": None}
        return self.json_response(body, status, headers)

    def check_auth(self) -> Response | None:
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            return self.fail(401, UNAUTHORIZED)
        return None

    def quota_exceeded(self, retry_in: float) -> Response:
        wait = str(max(1, round(retry_in)))
        return self.fail(429, "Too Many Requests", {"Retry-After": wait})

    # -- state ---------------------------------------------------------------------------
    def stamp(self) -> str:
        """Now, strictly after the last stamp: two writes never share an ``updatedAt``."""
        with self.state_lock:
            now = datetime.now(UTC)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
            return iso_ms(self._last_stamp)

    def check_body(self, body: Any, *, creating: bool) -> str | None:
        """The vendor's 400 message for an invalid body, else None."""
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        if (creating or self.put_replaces) and "name" not in body:
            return "name is required"
        if "name" in body and (not isinstance(body["name"], str) or not body["name"].strip()):
            return "name must be a non-empty string"
        for key in NUMBER_FIELDS:
            value = body.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                return f"{key} must be a number"
        probability = body.get("closeProbability")
        if probability is not None and not 0 <= probability <= 100:
            return "closeProbability must be between 0 and 100"
        for key in TEXT_FIELDS:
            if body.get(key) is not None and not isinstance(body[key], str):
                return f"{key} must be a string"
        if body.get("status") is not None and body["status"] not in self.statuses:
            return f"status must be one of: {', '.join(self.statuses)}"
        close = body.get("closeDate")
        if close is not None:
            try:
                datetime.fromisoformat(close)
            except (TypeError, ValueError):
                return "closeDate must be an ISO 8601 date-time"
        return None

    @staticmethod
    def _stored(key: str, value: Any) -> Any:
        if key == "closeDate" and value is not None:
            moment = datetime.fromisoformat(value)
            return iso_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        return value

    def write(self, body: dict[str, Any], vendor_id: str | None = None) -> dict[str, Any]:
        """Apply a body already checked with ``check_body``: create (no id) or update."""
        with self.state_lock:
            stamp = self.stamp()
            if vendor_id is None:
                record: dict[str, Any] = {"id": str(uuid.uuid4()), **dict.fromkeys(WRITABLE)}
                record["createdAt"] = stamp
            else:
                record = self.records[vendor_id]
                if self.put_replaces:
                    record.update(dict.fromkeys(WRITABLE))
            record.update({k: self._stored(k, body[k]) for k in WRITABLE if k in body})
            record["updatedAt"] = stamp
            self.records[record["id"]] = record
            return copy.deepcopy(record)

    def seed(self, record: dict[str, Any]) -> str:
        """Put a record in place as if a person had created it; returns its id."""
        with self.state_lock:
            stamp = self.stamp()
            full = {
                "id": str(uuid.uuid4()),
                **dict.fromkeys(WRITABLE),
                "createdAt": stamp,
                "updatedAt": stamp,
                **record,
            }
            self.records[full["id"]] = full
            return str(full["id"])

    def edit(self, vendor_id: str, **changes: Any) -> dict[str, Any]:
        """A person edits the record in Salescaling's UI (API field names); bumps updatedAt."""
        with self.state_lock:
            record = self.records[vendor_id]
            record.update(changes)
            record["updatedAt"] = self.stamp()
            snapshot = copy.deepcopy(record)
        self._automate(vendor_id)
        return snapshot

    def reset(self) -> None:
        with self.state_lock:
            super().reset()
            self.contacts.clear()

    def link_contact(self, vendor_id: str, contact_id: str) -> None:
        with self.state_lock:
            self.contacts.setdefault(vendor_id, []).append(contact_id)

    # -- webhooks (the customer's automation; Salescaling has no opportunity events) -----
    def emit_standard(self, vendor_id: str, thin: bool | None = None) -> int:
        """Send one Standard Webhooks delivery about ``vendor_id``: the record as ``data``
        holds it, or ``{"id": ...}`` when thin (default: ``webhook_mode``). Returns the status."""
        thin = self.webhook_mode == "thin" if thin is None else thin
        with self.state_lock:
            record = self.records.get(vendor_id)
            payload = {"id": vendor_id} if thin or record is None else self.shown(record)
        return self.send_standard_webhook(payload)

    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """Salescaling's answers as its page leaves them open (VENDORS.md §4): ISO
        timestamps, optional keys left out or null, keys it adds, and a ``status`` outside
        the values we map (the page's enum list could not be read)."""
        for key in ("createdAt", "updatedAt"):
            record[key] = variants.timestamp(record.get(key), ("iso-z", "iso-offset"))
        record["closeDate"] = variants.timestamp(
            record.get("closeDate"), ("iso-z", "iso-offset", "iso-east")
        )
        self.unknown_enum(record, variants, {"status": "on-hold"})
        variants.optional(record, ("finalAmount", "risk", "priority", "featuredNotes", "nextStep"))
        return variants.extra_keys(record)

    def _automate(self, vendor_id: str) -> None:
        if self.automation and self.webhook_secret:
            self.emit_async(lambda: self.emit_standard(vendor_id))

    # -- routes --------------------------------------------------------------------------
    def routes(self) -> None:
        app = self.app
        app.add_url_rule(PREFIX, "list", self.list_opportunities, methods=["GET"])
        app.add_url_rule(PREFIX, "create", self.create, methods=["POST"])
        app.add_url_rule(f"{PREFIX}/<vendor_id>", "get", self.get_one, methods=["GET"])
        app.add_url_rule(f"{PREFIX}/<vendor_id>", "update", self.update, methods=["PUT"])
        app.add_url_rule(f"{PREFIX}/<vendor_id>", "delete", self.delete, methods=["DELETE"])
        app.add_url_rule(
            f"{PREFIX}/<vendor_id>/contacts", "add_contact", self.add_contact, methods=["POST"]
        )

    def _page_args(self) -> tuple[int, int] | Response:
        try:
            page = int(request.args.get("page", "1"))
            limit = int(request.args.get("limit", "10"))
        except ValueError:
            return self.fail(400, "page and limit must be integers")
        if page < 1 or not 1 <= limit <= self.max_limit:
            return self.fail(400, f"page must be >= 1 and limit between 1 and {self.max_limit}")
        return page, limit

    def list_opportunities(self) -> Response:
        paging = self._page_args()
        if isinstance(paging, Response):
            return paging
        page, limit = paging
        name = request.args.get("name", "").lower()
        contact = request.args.get("contactId")
        with self.state_lock:
            found = [
                r
                for r in self.records.values()
                if name in (r.get("name") or "").lower()
                and (contact is None or contact in self.contacts.get(r["id"], []))
            ]
            found.sort(key=lambda r: r["createdAt"])
            window = [self.shown(r) for r in found[(page - 1) * limit : page * limit]]
        return self.envelope(window, count=len(found))

    def create(self) -> Response:
        body = request.get_json(silent=True)
        problem = self.check_body(body, creating=True)
        if problem or not isinstance(body, dict):
            return self.fail(400, problem or "Request body must be a JSON object")
        record = self.write(body)
        self.wrote(record["id"])
        self._automate(record["id"])
        return self.envelope(self.shown(record))

    def get_one(self, vendor_id: str) -> Response:
        with self.state_lock:
            record = copy.deepcopy(self.records.get(vendor_id))
        if record is None:
            return self.fail(404, "Opportunity not found")
        return self.envelope(self.shown(record))

    def update(self, vendor_id: str) -> Response:
        if vendor_id not in self.records:
            return self.fail(404, "Opportunity not found")
        body = request.get_json(silent=True)
        problem = self.check_body(body, creating=False)
        if problem or not isinstance(body, dict):
            return self.fail(400, problem or "Request body must be a JSON object")
        record = self.write(body, vendor_id)
        self.wrote(vendor_id)
        self._automate(vendor_id)
        return self.envelope(self.shown(record))

    def delete(self, vendor_id: str) -> Response:
        with self.state_lock:
            if self.records.pop(vendor_id, None) is None:
                return self.fail(404, "Opportunity not found")
            self.contacts.pop(vendor_id, None)
        self._automate(vendor_id)
        return self.envelope(True)

    def add_contact(self, vendor_id: str) -> Response:
        body = request.get_json(silent=True)
        if vendor_id not in self.records:
            return self.fail(404, "Opportunity not found")
        if not isinstance(body, dict) or not isinstance(body.get("contactId"), str):
            return self.fail(400, "contactId is required")
        self.link_contact(vendor_id, body["contactId"])
        return self.envelope(True)
