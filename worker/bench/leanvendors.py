"""The five vendors' APIs as the benchmark's lean server answers them, from memory.

Only what the adapters (``worker/vendors/*.py``) call, in the shapes they read, with each
vendor's auth (VENDORS.md; the same credentials ``worker/sandbox/stack.py`` puts in the
service's environment). A record is kept as its write's body with the vendor's id and
timestamps added, so a read gives back what was written; creates are not idempotent except
SIRO's upsert by ``externalId``, exactly as the vendors document them. Look-ups filter by what
the adapters filter on (name, ``externalId``, creation time); everything else about the real
vendors (validation, paging rules, variants) is the sandbox simulators' job, not this one's.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from schemas import ivvy as ivvy_schema
from schemas.timestamps import read_timestamp
from worker.bench.lean import Refusal, Route, Written
from worker.bench.leanstore import Named, bearer, body_of, now_iso
from worker.sandbox.simulators.ivvy import DEFAULT_STAGES, DEFAULT_TOPIC_ARN
from worker.sandbox.simulators.leadway import API_VERSION, default_pipeline
from worker.sandbox.simulators.leadwayhooks import _pem, signing_keys
from worker.vendors.ivvy import content_md5, ivvy_headers, signature, string_to_sign


class Siro(Named):
    """``PUT /v1/integrations/sync/opportunities`` upserts by ``externalId``; reads by id and
    by ``externalId`` (VENDORS.md §1)."""

    name = "siro"
    token = "siro-test-token"
    PATH = "/v1/integrations/opportunities"

    def __init__(self) -> None:
        super().__init__()
        self.by_external: dict[str, str] = {}

    def routes(self) -> list[Route]:
        return [
            Route("PUT", "/v1/integrations/sync/opportunities", "write", self.sync),
            Route("GET", self.PATH, "lookup", self.list),
            Route("GET", self.PATH + "/{id}", "read", self.read),
        ]

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        return None if bearer(request, self.token) else Refusal(401, {"message": "Unauthorized"})

    def sync(self, request: web.Request, raw: bytes) -> Written:
        body = body_of(raw)
        external = body.get("externalId")
        if not isinstance(external, str) or not external:
            raise Refusal(422, {"message": "externalId is required"})
        record_id = self.by_external.get(external)
        previous = self.records.get(record_id) if record_id else None
        stamp = now_iso()
        if previous is None:
            record_id = str(uuid.uuid4())
            self.by_external[external] = record_id
        record = {**body, "id": record_id, "updatedAt": stamp,
                  "createdAt": previous["createdAt"] if previous else stamp}  # fmt: skip
        if previous is None:
            self.keep(str(record_id), record, body.get("name"))
        self.records[str(record_id)] = record
        return self.written(str(record_id), body, {"data": record})

    def forget(self, record_id: str) -> None:
        record = self.records.get(record_id)
        if record is not None:
            self.by_external.pop(record.get("externalId"), None)  # type: ignore[arg-type]
        super().forget(record_id)

    def list(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        external = request.query.get("externalId")
        if external is not None:
            found = self.by_external.get(external)
            matches = [self.records[found]] if found in self.records else []
        else:
            matches = list(self.records.values())
        start = int(request.query.get("cursor") or 0)
        page = matches[start : start + 25]
        more = start + 25 < len(matches)
        return {"data": page, "cursor": str(start + 25) if more else None, "pageSize": 25,
                "limit": 25, "total": len(matches), "hasNextPage": more}  # fmt: skip

    def read(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        return self.get(request.match_info["id"], {"message": "Opportunity not found"})


class Leadway(Named):
    """HighLevel v2: ``Authorization: Bearer`` and ``Version``; contacts upserted, then the
    opportunity (``POST /opportunities/upsert``, ``id`` => update); search by pipeline,
    contact and name (VENDORS.md §2)."""

    name = "leadway"
    token = "leadway-test-token"
    location_id = "ve9EPM428h8vShlRW1KT"
    pipeline_id = "VDm7RPYC2GLUvdpKmBfC"

    def __init__(self) -> None:
        super().__init__()
        self.contacts: dict[str, str] = {}
        signing, rsa_key = signing_keys()
        self.keys = {"public_key_pem": _pem(signing), "rsa_public_key_pem": _pem(rsa_key)}

    def attributes(self) -> dict[str, Any]:
        return {"location_id": self.location_id, "pipeline_id": self.pipeline_id, **self.keys}

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/contacts/upsert", "contact", self.contact),
            Route("POST", "/opportunities/upsert", "write", self.upsert),
            Route("GET", "/opportunities/pipelines", "config", self.pipelines),
            Route("GET", "/opportunities/search", "lookup", self.search),
            Route("GET", "/opportunities/{id}", "read", self.read),
        ]

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        if not bearer(request, self.token):
            return Refusal(401, {"statusCode": 401, "message": "Invalid token"})
        if request.headers.get("Version") != API_VERSION:
            return Refusal(400, {"statusCode": 400, "message": "Version header is missing"})
        return None

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(10)  # 20 letters and digits, as HighLevel's ids

    def contact(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        body = body_of(raw)
        key = str(body.get("email") or body.get("phone") or body.get("name") or "")
        new = key not in self.contacts or not key
        contact_id = self.new_id() if new else self.contacts[key]
        if key and len(self.contacts) < 100_000:
            self.contacts[key] = contact_id
        return {"new": new, "contact": {**body, "id": contact_id}}

    def upsert(self, request: web.Request, raw: bytes) -> Written:
        body = body_of(raw)
        if body.get("locationId") != self.location_id:
            raise Refusal(403, {"statusCode": 403, "message": "The token does not have access"})
        kept = {k: v for k, v in body.items() if not k.startswith(("followers", "isRemove"))}
        record_id, stamp = body.get("id"), now_iso()
        if record_id is not None:
            previous = self.get(str(record_id), {"statusCode": 404, "message": "Not found"})
            previous.update(kept, updatedAt=stamp)
            return self.written(str(record_id), body, {"opportunity": previous, "new": False})
        record_id = self.new_id()
        record = {**kept, "id": record_id, "createdAt": stamp, "updatedAt": stamp}
        self.keep(record_id, record, body.get("name"))
        return self.written(record_id, body, {"opportunity": record, "new": True})

    def pipelines(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        if request.query.get("locationId") != self.location_id:
            raise Refusal(403, {"statusCode": 403, "message": "The token does not have access"})
        return {
            "pipelines": [{**default_pipeline(self.pipeline_id), "locationId": self.location_id}]
        }

    def search(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        query = request.query
        matches = [
            r
            for r in self.named(query.get("q"))
            if query.get("contact_id") in (None, r.get("contactId"))
            and query.get("pipeline_id") in (None, r.get("pipelineId"))
        ]
        page, limit = int(query.get("page") or 1), int(query.get("limit") or 20)
        shown = matches[(page - 1) * limit : page * limit]
        following = page + 1 if page * limit < len(matches) else None
        return {"opportunities": shown, "meta": {"total": len(matches), "nextPage": following}}

    def read(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        return {"opportunity": self.get(request.match_info["id"], {"message": "Not found"})}


class Ivvy(Named):
    """Signed RPC: ``POST /api/1.0/{namespace}?action=…`` with ``X-Api-Authorization: IWS
    key:hmac`` over the body's MD5 and ``IVVY-Date`` (VENDORS.md §3.2)."""

    name = "ivvy"
    api_key, api_secret, venue_id = "ivvy-test-key", "ivvy-test-secret", 107

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 1000

    def attributes(self) -> dict[str, Any]:
        return {"topic_arn": DEFAULT_TOPIC_ARN}

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/api/1.0/venue", "write", self.venue),
            Route("POST", "/api/1.0/crm", self.crm_kind, self.crm),
        ]

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        scheme, _, credentials = request.headers.get("X-Api-Authorization", "").partition(" ")
        key, _, sig = credentials.partition(":")
        md5 = request.headers.get("Content-MD5", "")
        signed = string_to_sign(
            method=request.method,
            content_md5=md5,
            content_type=request.headers.get("Content-Type", ""),
            date="",
            path_and_query=request.raw_path,
            ivvy_header_text=ivvy_headers(dict(request.headers)),
        )
        good = (
            scheme == "IWS"
            and md5 == content_md5(raw)
            and hmac.compare_digest(key, self.api_key)
            and hmac.compare_digest(sig, signature(self.api_secret, signed))
        )
        return None if good else Refusal(401, _ivvy_error(401, "Invalid signature", 23002))

    def venue(self, request: web.Request, raw: bytes) -> Written:
        if request.query.get("action") != "addOrUpdateOpportunity":
            raise Refusal(404, _ivvy_error(404, "The requested action does not exist", 404))
        body, stamp = body_of(raw), ivvy_schema.format_timestamp(datetime.now(UTC))
        if body.get("id") is not None:
            previous = self.get(str(body["id"]), _ivvy_error(400, "No such opportunity", 24222))
            previous.update({k: v for k, v in body.items() if k != "id"}, modifiedDate=stamp)
            return self.written(str(body["id"]), body, {"success": True, "id": int(body["id"])})
        self.next_id += 1
        record = {**body, "id": self.next_id, "createdDate": stamp, "modifiedDate": stamp}
        self.keep(str(self.next_id), record, body.get("name"))
        return self.written(str(self.next_id), body, {"success": True, "id": self.next_id})

    @staticmethod
    def crm_kind(request: web.Request, raw: bytes) -> str:
        """The stage list is configuration; a list filtered by id is the adapter's read."""
        if request.query.get("action") == "getLeadStageList":
            return "config"
        try:
            wanted = json.loads(raw or b"{}").get("filter")
        except (ValueError, AttributeError):
            return "lookup"
        return "read" if isinstance(wanted, dict) and "id" in wanted else "lookup"

    def crm(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        action, body = request.query.get("action"), body_of(raw)
        if action == "getLeadStageList":
            return {"meta": {"totalResults": len(DEFAULT_STAGES)}, "results": DEFAULT_STAGES}
        if action != "getOpportunityList":
            raise Refusal(404, _ivvy_error(404, "The requested action does not exist", 404))
        wanted = body.get("filter") or {}
        if "id" in wanted:
            found = self.records.get(str(wanted["id"]))
            matches = [found] if found else []
        else:
            after = wanted.get("createdDate__GREATERTHAN")
            matches = [r for r in self.named(wanted.get("name"))
                       if after is None or r["createdDate"] > after]  # fmt: skip
        start, per_page = int(body.get("start") or 0), int(body.get("perPage") or 100)
        shown = matches[start : start + per_page]
        return {"meta": {"totalResults": len(matches), "start": start, "perPage": per_page,
                         "count": len(shown)}, "results": shown}  # fmt: skip


def _ivvy_error(status: int, message: str, code: int) -> dict[str, Any]:
    return {"success": False, "errorCode": status, "message": message, "specificCode": code}


class Salescaling(Named):
    """``x-api-key``; ``/api/v1/opportunities`` POST, PUT by id, GET by id, GET list by name
    (VENDORS.md §4); answers in ``{"statusCode", "data"}`` envelopes."""

    name = "salescaling"
    api_key = "salescaling-test-key"
    PATH = "/api/v1/opportunities"

    def routes(self) -> list[Route]:
        return [
            Route("POST", self.PATH, "write", self.create),
            Route("PUT", self.PATH + "/{id}", "write", self.update),
            Route("GET", self.PATH, "lookup", self.list),
            Route("GET", self.PATH + "/{id}", "read", self.read),
        ]

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        given = request.headers.get("x-api-key", "")
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return Refusal(401, {"statusCode": 401, "count": 0, "data": None,
                             "error": "Unauthorized - missing or invalid API key"})  # fmt: skip

    def create(self, request: web.Request, raw: bytes) -> Written:
        body, stamp = body_of(raw), now_iso()
        record_id = str(uuid.uuid4())
        record = {**body, "id": record_id, "createdAt": stamp, "updatedAt": stamp}
        self.keep(record_id, record, body.get("name"))
        written = self.written(record_id, body, {"statusCode": 201, "count": 1, "data": record})
        return Written(written.answer, written.deal, 201)

    def update(self, request: web.Request, raw: bytes) -> Written:
        record_id = request.match_info["id"]
        record = self.get(record_id, {"statusCode": 404, "count": 0, "data": None})
        body = body_of(raw)
        record.update(body, updatedAt=now_iso())
        return self.written(record_id, body, {"statusCode": 200, "count": 1, "data": record})

    def list(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        page, limit = int(request.query.get("page") or 1), int(request.query.get("limit") or 50)
        matches = self.named(request.query.get("name"))
        shown = matches[(page - 1) * limit : page * limit]
        return {"statusCode": 200, "count": len(shown), "data": shown}

    def read(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        missing = {"statusCode": 404, "count": 0, "data": None}
        return {"statusCode": 200, "count": 1, "data": self.get(request.match_info["id"], missing)}


class Icloudready(Named):
    """``POST /api/v2/signin`` for a bearer token; opportunities created by POST, changed by
    PATCH, read by id, listed with ``q`` on the name (VENDORS.md §5)."""

    name = "icloudready"
    credentials = {"email": "ops@example.com", "password": "icr-test-password"}
    API = "/api/v2"

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()

    def routes(self) -> list[Route]:
        path = f"{self.API}/opportunities"
        return [
            Route("POST", f"{self.API}/signin", "token", self.signin),
            Route("POST", path, "write", self.create),
            Route("PATCH", path + "/{id}", "write", self.update),
            Route("GET", path, "lookup", self.list),
            Route("GET", path + "/{id}", "read", self.read),
        ]

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        if request.path.endswith("/signin"):
            return None  # its own check: the credentials in the body
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.tokens:
            return None
        return Refusal(401, {"message": "Unauthorized"})

    def name_of(self, record: dict[str, Any]) -> str | None:
        info = record.get("opportunityInformation")
        name = info.get("name") if isinstance(info, dict) else None
        return name if isinstance(name, str) else None

    def signin(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        if body_of(raw) != self.credentials:
            raise Refusal(401, {"message": "Invalid email or password"})
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return {"token": token}

    def create(self, request: web.Request, raw: bytes) -> Written:
        body, stamp = body_of(raw), now_iso()
        record_id = secrets.token_hex(12)  # a MongoDB ObjectId's 24 hex digits
        record = {**body, "_id": record_id, "createdAt": stamp, "updatedAt": stamp}
        self.keep(record_id, record, self.name_of(body))
        return self.written(record_id, body, {"data": record})

    def update(self, request: web.Request, raw: bytes) -> Written:
        record_id = request.match_info["id"]
        record = self.get(record_id, {"message": "Opportunity not found"})
        body = body_of(raw)
        record.update(body, updatedAt=now_iso())
        return self.written(record_id, body, {"data": record})

    def list(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        query = request.query
        matches = self.named(query.get("q"))
        order = query.get("sortBy") or "updatedAt"
        matches.sort(key=lambda r: read_timestamp(r.get(order)) or datetime.min.replace(tzinfo=UTC),
                     reverse=query.get("order", "desc") == "desc")  # fmt: skip
        page, limit = int(query.get("page") or 1), int(query.get("limit") or 100)
        return {"data": matches[(page - 1) * limit : page * limit], "total": len(matches)}

    def read(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        return self.get(request.match_info["id"], {"message": "Opportunity not found"})


LEAN_VENDORS: dict[str, type[Named]] = {
    "siro": Siro,
    "leadway": Leadway,
    "ivvy": Ivvy,
    "salescaling": Salescaling,
    "icloudready": Icloudready,
}
