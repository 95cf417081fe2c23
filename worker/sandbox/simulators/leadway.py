"""A stateful fake of Leadway (white-label HighLevel) opportunities and contacts over real HTTP.

Modelled on VENDORS.md §2 and vendor-docs/leadway-upsert-opportunity.txt. Every request needs
``Authorization: Bearer <token>`` (else HighLevel's 401) and ``Version: 2021-07-28`` (else
400). ``POST /opportunities/upsert`` updates with ``id`` (unknown: 404), else creates, which
needs ``name`` and an existing ``contactId``; bad bodies get 422 with a list of messages.
Reads: ``GET /opportunities/{id}``, ``GET /opportunities/search`` (newest first, ``limit``
≤ 100), ``GET /opportunities/pipelines``; ``DELETE`` answers ``{"succeded": true}`` (sic);
``POST /contacts/upsert`` de-duplicates by email, then phone. Quota: 100 requests / 10 s, 429
with ``X-RateLimit-*`` headers and no ``Retry-After`` (VENDORS.md §2.6).
Webhooks (native, signed) are sent as ``leadwayhooks.py`` says.
"""

from __future__ import annotations

import hmac
import secrets
import string
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g, request

from worker.sandbox.files import EXAMPLE_MAPPING
from worker.sandbox.simulators.base import SlidingWindow
from worker.sandbox.simulators.leadwayhooks import FIELD_EVENTS, WRITABLE, LeadwayWebhooks, iso
from worker.sandbox.simulators.variants import Variants

API_VERSION = "2021-07-28"
STATUSES = ("open", "won", "lost", "abandoned")
CONTACT_FIELDS = ("name", "email", "phone", "companyName")
FOREIGN = "The token does not have access to this location."


def ghl_id() -> str:
    """A 20-character alphanumeric id, as HighLevel's (``wWhVuzqpRuOA1ZVWi4FC``)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))


def default_pipeline(pipeline_id: str) -> dict[str, Any]:
    """A pipeline whose stages are the example mapping's Leadway stages, in order."""
    stages = [{"id": s.ids["leadway"], "name": s.name.title()} for s in EXAMPLE_MAPPING.stages]
    return {"id": pipeline_id, "name": "Sales", "stages": stages, "showInFunnel": True}


def _wrong_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    """Set, and not of ``kind`` (a JSON boolean is never a number or a string)."""
    return value is not None and (isinstance(value, bool) or not isinstance(value, kind))


class _Quota(SlidingWindow):
    """The base window, keeping what is left for the answer's ``X-RateLimit-Remaining``."""

    def allow(self) -> tuple[bool, int, float]:
        allowed, g.ratelimit_remaining, retry_in = super().allow()
        return allowed, g.ratelimit_remaining, retry_in


class LeadwaySimulator(LeadwayWebhooks):
    name = "leadway"
    writes = ("/opportunities/upsert", ("POST",))

    def __init__(
        self,
        *,
        token: str = "leadway-test-token",
        location_id: str = "ve9EPM428h8vShlRW1KT",
        pipeline_id: str = "VDm7RPYC2GLUvdpKmBfC",
        pipelines: list[dict[str, Any]] | None = None,
        rate_limit: tuple[int, float] | None = (100, 10.0),
        latency: float = 0.0,
    ) -> None:
        self.token, self.location_id, self.pipeline_id = token, location_id, pipeline_id
        self.pipelines = pipelines if pipelines is not None else [default_pipeline(pipeline_id)]
        self.contacts: dict[str, dict[str, Any]] = {}
        #: Deleted records, so an OpportunityDelete event can still describe them.
        self.tombstones: dict[str, dict[str, Any]] = {}
        #: Echo every change as a signed native webhook to ``webhook_url``.
        self.auto_emit = False
        super().__init__(latency=latency, rate_limit=rate_limit)
        self.quota = _Quota(*rate_limit) if rate_limit else None

    # -- HTTP ----------------------------------------------------------------------------
    def routes(self) -> None:
        add = self.app.add_url_rule
        add("/opportunities/upsert", "upsert", self._upsert, methods=["POST"])
        add("/opportunities/search", "search", self._search, methods=["GET"])
        add("/opportunities/pipelines", "pipelines", self._pipelines, methods=["GET"])
        add("/opportunities/<opp_id>", "get", self._get, methods=["GET"])
        add("/opportunities/<opp_id>", "delete", self._delete, methods=["DELETE"])
        add("/contacts/upsert", "contact", self._contact_upsert, methods=["POST"])
        self.app.after_request(self._rate_headers)

    def check_auth(self) -> Response | None:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            return self.fail(401, "Invalid token: access token is invalid", "Unauthorized")
        if request.headers.get("Version") != API_VERSION:
            return self.fail(400, "Bad Request")
        return None

    def quota_exceeded(self, retry_in: float) -> Response:
        body = {"statusCode": 429, "message": "Too Many Requests"}
        return self.json_response(body, 429, self._limit_headers(0))

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        assert self.quota is not None
        return {
            "X-RateLimit-Max": str(self.quota.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Interval-Milliseconds": str(int(self.quota.window * 1000)),
        }

    def _rate_headers(self, response: Response) -> Response:
        if self.quota is not None and "ratelimit_remaining" in g and response.status_code != 429:
            response.headers.update(self._limit_headers(g.ratelimit_remaining))
        return response

    def fail(self, status: int, message: str | list[str], error: str | None = None) -> Response:
        body = {"statusCode": status, "message": message, **({"error": error} if error else {})}
        return self.json_response(body, status)

    def _stage_ids(self, pipeline_id: str) -> list[str] | None:
        found = next((p for p in self.pipelines if p["id"] == pipeline_id), None)
        return None if found is None else [s["id"] for s in found["stages"]]

    def problems(self, body: dict[str, Any], creating: bool) -> list[str]:
        """class-validator's messages for an upsert body (HighLevel's API is NestJS)."""
        required = ["pipelineId", "locationId", *(["name", "contactId"] if creating else [])]
        found = [f"{k} should not be empty" for k in required if not body.get(k)]
        if not isinstance(body.get("followers"), list):
            found.append("followers must be an array")
        if not isinstance(body.get("isRemoveAllFollowers"), bool):
            found.append("isRemoveAllFollowers must be a boolean value")
        if _wrong_type(body.get("monetaryValue"), (int, float)):
            found.append("monetaryValue must be a number")
        strings = ("name", "assignedTo", "pipelineStageId", "contactId")
        found += [f"{k} must be a string" for k in strings if _wrong_type(body.get(k), str)]
        if body.get("followersActionType") not in ("add", "remove"):
            found.append("followersActionType must be one of the following values: add, remove")
        if "status" in body and body["status"] not in STATUSES:
            found.append(f"status must be one of the following values: {', '.join(STATUSES)}")
        return found

    def refusal(self, body: dict[str, Any], creating: bool) -> Response | None:
        problems = self.problems(body, creating)
        if problems:
            return self.fail(422, problems, "Unprocessable Entity")
        if body["locationId"] != self.location_id:
            return self.fail(403, FOREIGN, "Forbidden")
        stages = self._stage_ids(body["pipelineId"])
        if stages is None:
            return self.fail(400, "Pipeline not found")
        if body.get("pipelineStageId") is not None and body["pipelineStageId"] not in stages:
            return self.fail(400, "Pipeline stage not found in the pipeline")
        if body.get("contactId") and body["contactId"] not in self.contacts:
            return self.fail(400, "Contact not found")
        return None

    def _upsert(self) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return self.fail(400, "Bad Request")
        with self.state_lock:
            vendor_id = body.get("id")
            if vendor_id is not None and vendor_id not in self.records:
                return self.fail(404, "Opportunity not found", "Not Found")
            refused = self.refusal(body, creating=vendor_id is None)
            if refused is not None:
                return refused
            changes = {k: body[k] for k in (*WRITABLE, "contactId") if k in body}
            record = self.apply(vendor_id, changes) if vendor_id else self.create(changes)
            self.wrote(record["id"])
            answer = {"opportunity": self.shown(record), "new": vendor_id is None}
            return self.json_response(answer)

    def _get(self, opp_id: str) -> Response:
        with self.state_lock:
            if opp_id not in self.records:
                return self.fail(404, "Opportunity not found", "Not Found")
            return self.json_response({"opportunity": self.shown(self.records[opp_id])})

    def _delete(self, opp_id: str) -> Response:
        with self.state_lock:
            if opp_id not in self.records:
                return self.fail(404, "Opportunity not found", "Not Found")
            self.tombstones[opp_id] = self.records.pop(opp_id)
            self._echo(opp_id, "OpportunityDelete")
            return self.json_response({"succeded": True})

    def _search(self) -> Response:
        args = request.args
        if not args.get("location_id"):
            return self.fail(422, ["location_id should not be empty"], "Unprocessable Entity")
        if args["location_id"] != self.location_id:
            return self.fail(403, FOREIGN, "Forbidden")
        page, limit = args.get("page", 1, type=int), args.get("limit", 20, type=int)
        if not 1 <= limit <= 100 or page < 1:
            return self.fail(422, ["limit must not be greater than 100"], "Unprocessable Entity")
        with self.state_lock:
            found = [r for r in self.records.values() if self._matches(r, args)]
        found.sort(key=lambda r: (r["createdAt"], r["id"]), reverse=True)
        chunk = [self.shown(r) for r in found[(page - 1) * limit : page * limit]]
        meta = {
            "total": len(found),
            "currentPage": page,
            "nextPage": page + 1 if page * limit < len(found) else None,
            "prevPage": page - 1 if page > 1 else None,
        }
        return self.json_response({"opportunities": chunk, "meta": meta, "aggregations": {}})

    @staticmethod
    def _matches(record: dict[str, Any], args: Any) -> bool:
        filters = {"pipeline_id": "pipelineId", "pipeline_stage_id": "pipelineStageId",
                   "contact_id": "contactId", "assigned_to": "assignedTo", "id": "id"}  # fmt: skip
        if any(args.get(p) and record.get(k) != args[p] for p, k in filters.items()):
            return False
        if args.get("status") not in (None, "", "all") and record["status"] != args["status"]:
            return False
        contact = record.get("contact") or {}
        text = f"{record.get('name')} {contact.get('name')} {contact.get('email')}"
        return args.get("q", "").lower() in text.lower()

    def _pipelines(self) -> Response:
        if request.args.get("locationId") != self.location_id:
            return self.fail(403, FOREIGN, "Forbidden")
        pipelines = [{**p, "locationId": self.location_id} for p in self.pipelines]
        return self.json_response({"pipelines": pipelines})

    def _contact_upsert(self) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return self.fail(400, "Bad Request")
        problems = [
            f"{k} must be a string" for k in CONTACT_FIELDS if _wrong_type(body.get(k), str)
        ]
        if not body.get("locationId"):
            problems.append("locationId should not be empty")
        if not any(body.get(k) for k in ("name", "email", "phone")):
            problems.append("one of name, email or phone is required")
        if problems:
            return self.fail(422, problems, "Unprocessable Entity")
        if body["locationId"] != self.location_id:
            return self.fail(403, FOREIGN, "Forbidden")
        with self.state_lock:
            contact, new = self.upsert_contact(body)
            return self.json_response({"contact": contact, "new": new})

    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """HighLevel's answers as its page leaves them open (VENDORS.md §2): timestamps with
        ``Z`` or an offset, ``monetaryValue`` "declared object" (a number or its text),
        optional keys left out or null, keys it adds (v3 forecast fields), a ``status`` such
        as the search value ``all``."""
        for key in ("createdAt", "updatedAt", "lastStatusChangeAt", "lastStageChangeAt"):
            if key in record:
                record[key] = variants.timestamp(record[key], ("iso-z", "iso-offset"))
        self.unknown_enum(record, variants, {"status": "all"})
        value = record.get("monetaryValue")
        if isinstance(value, int | float) and variants.chance("id_types", 0.3):
            record["monetaryValue"] = str(value)
        optional = ("source", "lastStatusChangeAt", "lastStageChangeAt", "customFields",
                    "followers", "lostReasonId", "locationId")  # fmt: skip
        variants.optional(record, optional)
        if variants.chance("extra_keys", 0.3):
            record["forecastProbability"] = None
        return variants.extra_keys(record)

    # -- state ---------------------------------------------------------------------------
    def stamp(self, previous: str | None = None) -> str:
        """Now, strictly after ``previous`` (two writes in one millisecond still order)."""
        now = datetime.now(UTC)
        if previous is not None:
            now = max(now, datetime.fromisoformat(previous) + timedelta(milliseconds=1))
        return iso(now)

    def upsert_contact(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Find by email (any case), else phone; keys sent are set, nulls included."""
        email, phone = (body.get("email") or "").lower(), body.get("phone")
        found = [c for c in self.contacts.values() if email and (c["email"] or "").lower() == email]
        found += [c for c in self.contacts.values() if phone and c["phone"] == phone]
        contact = found[0] if found else {"id": ghl_id(), "locationId": self.location_id,
                                          "tags": [], "dateAdded": self.stamp(),
                                          **dict.fromkeys(CONTACT_FIELDS)}  # fmt: skip
        self.contacts[contact["id"]] = contact
        contact.update({k: body[k] for k in CONTACT_FIELDS if k in body}, dateUpdated=self.stamp())
        for record in self.records.values():  # an opportunity shows its contact as it is now
            if record["contactId"] == contact["id"]:
                record["contact"] = self._embedded(contact["id"])
        return dict(contact), not found

    def _embedded(self, contact_id: str | None) -> dict[str, Any] | None:
        contact = self.contacts.get(contact_id or "")
        keys = ("id", *CONTACT_FIELDS, "tags")
        return None if contact is None else {k: contact[k] for k in keys}

    def create(self, changes: dict[str, Any], *, source: str = "api") -> dict[str, Any]:
        stamp = self.stamp()
        pipeline_id = changes.get("pipelineId", self.pipeline_id)
        first_stage = next(iter(self._stage_ids(pipeline_id) or []), None)
        record: dict[str, Any] = {
            "id": ghl_id(), **dict.fromkeys(WRITABLE), "pipelineId": pipeline_id,
            "pipelineStageId": first_stage, "status": "open",
            "source": source, "contactId": None, "locationId": self.location_id,
            "lastStatusChangeAt": stamp, "lastStageChangeAt": stamp, "createdAt": stamp,
            "updatedAt": stamp, "customFields": [], "followers": [], "lostReasonId": None,
        }  # fmt: skip
        record.update({k: v for k, v in changes.items() if k != "pipelineStageId" or v})
        record["contact"] = self._embedded(record["contactId"])
        self.records[record["id"]] = record
        self._echo(record["id"], "OpportunityCreate")
        return dict(record)

    def apply(self, vendor_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        record = self.records[vendor_id]
        changed = [k for k, v in changes.items() if record.get(k) != v]
        record.update(changes, updatedAt=self.stamp(record["updatedAt"]))
        record["contact"] = self._embedded(record["contactId"])
        if "status" in changed:
            record["lastStatusChangeAt"] = record["updatedAt"]
        if "pipelineStageId" in changed:
            record["lastStageChangeAt"] = record["updatedAt"]
        if changed:
            one = FIELD_EVENTS.get(changed[0]) if len(changed) == 1 else None
            self._echo(vendor_id, one or "OpportunityUpdate")
        return dict(record)

    def reset(self) -> None:
        with self.state_lock:
            super().reset()
            self.contacts.clear()
            self.tombstones.clear()

    # -- test hooks ----------------------------------------------------------------------
    def seed(self, record: dict[str, Any] | None = None) -> str:
        """Add a record as a person would in the UI (``source`` "manual"); a ``contact`` given
        as ``{name, email, phone, companyName}`` is upserted first. Returns the id."""
        with self.state_lock:
            changes = dict(record or {})
            if changes.get("contact") is not None:
                changes["contactId"] = self.upsert_contact(changes.pop("contact"))[0]["id"]
            return str(self.create(changes, source="manual")["id"])

    def edit(self, vendor_id: str, **changes: Any) -> dict[str, Any]:
        """A person edits the record in the UI (record keys, e.g. ``status="won"``)."""
        with self.state_lock:
            return self.apply(vendor_id, changes)
