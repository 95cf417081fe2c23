"""A stateful fake of iVvy's venue-opportunity API and its SNS notifications, over real HTTP.

Modelled on VENDORS.md §3 and vendor-docs/ivvy-add-or-update-opportunity.txt. Every call is
``POST /api/1.0/{namespace}?action={action}``, signed as §3.2 says (``Content-MD5``, a date
within 5 minutes, ``X-Api-Authorization: IWS key:hmac``); failures answer iVvy's
``{"errorCode", "message", "specificCode", "additionalMessages"}`` with HTTP status
``errorCode`` (23005, 23016/23017, 24221/24222/24224 are documented codes; our other 2300x
auth codes are placeholders). ``venue?action=addOrUpdateOpportunity`` creates (``name``,
``typeId``, ``sourceId``, ``stageId`` required) or updates by ``id``: integer ids (digit
strings pass, as in the vendor page's example), inline ``contact``/``company`` upserted
(``updateIfExists``), at most 3 ``externalUrls``, absent keys kept and ``null`` clearing.
``crm?action=getOpportunityList`` filters top-level keys (``__CONTAINS``, ``__NOTCONTAINS``,
``__GREATERTHAN``, ``__LESSTHAN``, ``__NOT``, ``ISNULL``) and pages (``start``, ``perPage``
≤ 100); the lead stage/type/source lists answer too.

Notifications are SNS deliveries (``worker/sandbox/simulators/sns.py``), whose signing certificate
and ``SubscribeURL`` the simulator also serves over https (``tls_url``, a certificate from
``worker/sandbox/simulators/tls.py``), as AWS does: ``emit`` sends one now; with ``auto_emit`` each
change is sent just after it happens, ``SourceType`` 1 with the API key as ``SourceInfo`` for API
writes, 0 for ``edit``/``remove`` (a person in iVvy's UI).
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from datetime import timedelta
from typing import Any, Self

from flask import Response, request
from werkzeug.serving import BaseWSGIServer, make_server

from schemas.ivvy import format_timestamp
from schemas.timestamps import parse_timestamp
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.ivvyrecords import FIELDS, STAMPS, IvvyRecords
from worker.sandbox.simulators.ivvyrules import (
    MODIFIERS,
    IvvyError,
    check_signature,
    collection,
    int_arg,
    invalid,
    ivvy_now,
    matches,
)
from worker.sandbox.simulators.sns import FakeSnsTopic

DEFAULT_TOPIC_ARN = "arn:aws:sns:ap-southeast-2:123456789012:ivvy-crm"
DEFAULT_STAGES: tuple[dict[str, Any], ...] = (
    {"id": 69, "name": "New Enquiry", "reasons": []},
    {"id": 70, "name": "Proposal Sent", "reasons": []},
    {"id": 71, "name": "Won", "reasons": [{"id": 127, "reason": "Best offer"}]},
    {"id": 72, "name": "Lost", "reasons": [{"id": 128, "reason": "Price"}]},
)
DEFAULT_TYPES = ({"id": 18, "type": "Conference", "subtypes": []},)
DEFAULT_SOURCES = ({"id": 25, "name": "Website", "description": "", "isReferral": False},)
DEFAULT_USERS = (
    {"id": 12, "firstName": "Alice", "lastName": "Ex", "email": "alice@example.com", "phone": ""},
    {"id": 13, "firstName": "Bob", "lastName": "Ex", "email": "bob@example.com", "phone": ""},
)
SourceOf = tuple[int, str]  # (SourceType, SourceInfo) of a change


class IvvySimulator(IvvyRecords):
    name = "ivvy"
    writes = ("addOrUpdateOpportunity", ("POST",))

    def __init__(
        self,
        *,
        api_key: str = "ivvy-test-key",
        api_secret: str = "ivvy-test-secret",
        venue_id: int = 107,
        stages: tuple[dict[str, Any], ...] = DEFAULT_STAGES,
        types: tuple[dict[str, Any], ...] = DEFAULT_TYPES,
        sources: tuple[dict[str, Any], ...] = DEFAULT_SOURCES,
        users: tuple[dict[str, Any], ...] = DEFAULT_USERS,
        topic_arn: str = DEFAULT_TOPIC_ARN,
        latency: float = 0.0,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.api_key, self.api_secret, self.venue_id = api_key, api_secret, venue_id
        self.stages, self.types, self.sources = list(stages), list(types), list(sources)
        self.users = [dict(user) for user in users]
        self.topic = FakeSnsTopic(topic_arn, base_url=lambda: self.tls_url, send=self.send_webhook)
        self._tls_server: BaseWSGIServer | None = None
        self.contacts: list[dict[str, Any]] = []
        self.companies: list[dict[str, Any]] = []
        #: Send an SNS notification after every change (as a subscribed iVvy account does).
        self.auto_emit = False
        super().__init__(latency=latency, rate_limit=rate_limit)

    @property
    def topic_arn(self) -> str:
        return self.topic.topic_arn

    @property
    def confirmed(self) -> bool:
        """Whether the receiver visited the ``SubscribeURL``."""
        return self.topic.confirmed

    # -- serving ---------------------------------------------------------------------------
    def serve(self, *, keep_alive: bool = False, threads: int = 64) -> Self:
        """Serve as every simulator does, and the same app over https on another port."""
        super().serve(keep_alive=keep_alive, threads=threads)
        self._tls_server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, ssl_context=tls.server_context()
        )
        threading.Thread(
            target=self._tls_server.serve_forever, name="sim-ivvy-tls", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._tls_server is not None:
            self._tls_server.shutdown()
            self._tls_server = None
        super().stop()

    @property
    def tls_url(self) -> str:
        """Where the SNS certificate and ``SubscribeURL`` are served (https)."""
        assert self._tls_server is not None, "simulator not started"
        return f"https://127.0.0.1:{self._tls_server.server_port}"

    def routes(self) -> None:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app.add_url_rule("/api/1.0/<namespace>", "api", self._api, methods=methods)
        self.topic.register(self.app)
        self.actions = {
            ("venue", "addOrUpdateOpportunity"): self._api_write,
            ("crm", "getOpportunityList"): self.opportunity_list,
            ("crm", "getLeadStageList"): lambda body: collection(self.stages, body),
            ("crm", "getLeadTypeList"): lambda body: collection(self.types, body),
            ("crm", "getLeadSourceList"): lambda body: collection(self.sources, body),
            ("test", "ping"): lambda body: {"success": True},
        }

    def check_auth(self) -> Response | None:
        if not request.path.startswith("/api/"):
            return None
        try:
            check_signature(self.api_key, self.api_secret)
        except IvvyError as exc:
            return self.json_response(exc.body, exc.status)
        return None

    def quota_exceeded(self, retry_in: float) -> Response:
        answer = IvvyError(429, "Too Many Requests", 429).body
        return self.json_response(answer, 429, {"Retry-After": str(max(1, round(retry_in)))})

    def _api(self, namespace: str) -> Response:
        handler = self.actions.get((namespace, request.args.get("action", "")))
        body = request.get_json(silent=True) if request.get_data() else {}
        try:
            if handler is None:
                raise IvvyError(404, "The requested action does not exist", 404)
            if not isinstance(body, dict):
                raise IvvyError(400, "The request body must be a JSON object", 23016)
            return self.json_response(handler(body))
        except IvvyError as exc:
            return self.json_response(exc.body, exc.status)

    # -- the API ---------------------------------------------------------------------------
    def _api_write(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.add_or_update(body, source=(1, self.api_key))
        self.wrote(answer["id"])
        if self.variants is not None and self.variants.chance("id_types", 0.3):
            answer["id"] = str(answer["id"])
        return answer

    def add_or_update(self, body: dict[str, Any], *, source: SourceOf) -> dict[str, Any]:
        """``venue?action=addOrUpdateOpportunity``; ``source`` says who made the change."""
        if not body:
            raise IvvyError(400, "The request is empty", 24221)
        if body.get("venueId") is None:
            raise IvvyError(400, "The parameter venueId is required", 23017)
        if int_arg(body, "venueId") != self.venue_id:
            raise IvvyError(400, "The opportunity details are invalid", 24224, "venueId")
        with self.state_lock:
            previous = None
            if body.get("id") is not None:
                previous = self.records.get(str(int_arg(body, "id")))
                if previous is None:
                    raise IvvyError(400, "The opportunity does not exist", 24222)
            for key in () if previous else ("name", "typeId", "sourceId", "stageId"):
                if body.get(key) in (None, ""):
                    raise IvvyError(400, f"The parameter {key} is required", 23017)
            record = copy.deepcopy(previous) if previous else self._blank()
            self._apply(record, body)
            self._store(record, previous, source)
        return {"success": True, "id": record["id"]}

    def _store(
        self, record: dict[str, Any], previous: dict[str, Any] | None, source: SourceOf
    ) -> None:
        # Each change is later than the one before, even within the same second.
        now = ivvy_now()
        if previous is not None:
            now = max(now, parse_timestamp(previous["modifiedDate"]) + timedelta(seconds=1))
        record["modifiedDate"] = format_timestamp(now)
        self.records[str(record["id"])] = record
        subject = "OpportunityUpdated" if previous else "OpportunityAdded"
        self._notify(subject, str(record["id"]), record, previous, source)

    def opportunity_list(self, body: dict[str, Any]) -> dict[str, Any]:
        """``crm?action=getOpportunityList``: filtered, in id order, one page."""
        filter_, venues = body.get("filter") or {}, body.get("venueIds")
        if not isinstance(filter_, dict):
            raise invalid("filter", "filter must be an object")
        if venues is not None and not isinstance(venues, list):
            raise invalid("venueIds", "venueIds must be a list")
        for key in filter_:
            name, _, modifier = key.partition("__")
            if name not in FIELDS or modifier not in MODIFIERS:
                raise invalid("filter", f"cannot filter on {key}")
        wanted_venues = None if venues is None else {str(v) for v in venues}
        with self.state_lock:
            ordered = sorted(self.records.values(), key=lambda r: r["id"])
            found = [
                self.shown(r)
                for r in ordered
                if (wanted_venues is None or str(r["venueId"]) in wanted_venues)
                and all(matches(r, k, v) for k, v in filter_.items())
            ]
        return collection(found, body)

    # -- a person at the venue -------------------------------------------------------------
    def seed(self, record: dict[str, Any]) -> str:
        """Add an opportunity without notifying; keys as ``addOrUpdateOpportunity`` takes
        them (type, source and stage default to the first of each), plus ``createdDate`` /
        ``modifiedDate`` to backdate it. A ``company`` without a ``businessName`` is no company
        (a person leaves it out; the API would refuse it)."""
        if isinstance(record.get("company"), dict) and not record["company"].get("businessName"):
            record = {**record, "company": None}
        defaults = {"name": "Seeded", "typeId": self.types[0]["id"],
                    "sourceId": self.sources[0]["id"], "stageId": self.stages[0]["id"]}  # fmt: skip
        body = {**defaults, **{k: v for k, v in record.items() if k not in STAMPS}}
        with self.state_lock:
            opp = self._blank()
            self._apply(opp, body)
            opp.update({k: record[k] for k in STAMPS if k in record})
            self.records[str(opp["id"])] = opp
        return str(opp["id"])

    def edit(self, vendor_id: str, **changes: Any) -> dict[str, Any]:
        """A person changes the record in iVvy (keys as the API takes them, e.g. ``stageId``);
        ``modifiedDate`` moves on."""
        with self.state_lock:
            previous = self.records[str(vendor_id)]
            record = copy.deepcopy(previous)
            self._apply(record, changes)
            self._store(record, previous, (0, ""))
            return copy.deepcopy(record)

    def remove(self, vendor_id: str) -> None:
        """A person deletes the record in iVvy's UI (the API has no delete action)."""
        with self.state_lock:
            previous = self.records.pop(str(vendor_id))
        self._notify("OpportunityDeleted", str(vendor_id), None, previous, (0, ""))

    # -- notifications ---------------------------------------------------------------------
    def inner_message(
        self,
        subject: str,
        vendor_id: str,
        record: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        source: SourceOf,
    ) -> dict[str, Any]:
        """The iVvy message inside the SNS one (VENDORS.md §3.7, crm-endpoint.md)."""
        body: dict[str, Any]
        if subject == "OpportunityDeleted":
            body = {"venueId": self.venue_id, "opportunityId": int(vendor_id)}
        elif subject == "OpportunityAdded":
            body = {"data": record and self.shown(record)}
        else:
            shown = record and self.shown(record)
            body = {"data": shown, "previousData": (previous and self.shown(previous)) or shown}
        return {
            "TxnId": uuid.uuid4().hex, "Region": "ap-southeast-2",
            "Timestamp": format_timestamp(ivvy_now()), "AccountId": 1001, "Subject": subject,
            "Body": json.dumps(body), "SourceType": source[0], "SourceInfo": source[1],
            "Signature": "", "SigningPublicKeyPath": "",
        }  # fmt: skip

    def sns_message(
        self, inner: dict[str, Any], *, signature_version: int = 1, tamper: bool = False
    ) -> dict[str, Any]:
        """A signed SNS ``Notification`` carrying ``inner`` (not sent)."""
        return self.topic.notification(
            json.dumps(inner), subject=inner.get("Subject"),
            signature_version=signature_version, tamper=tamper,
        )  # fmt: skip

    def subscription_confirmation(self, *, signature_version: int = 1) -> dict[str, Any]:
        return self.topic.subscription_confirmation(signature_version=signature_version)

    def send_sns(self, message: dict[str, Any]) -> int:
        return self.topic.send(message)

    def emit(
        self,
        vendor_id: str,
        subject: str | None = None,
        *,
        signature_version: int = 1,
        tamper: bool = False,
        source_api: str | None = None,
    ) -> int:
        """Send one notification about the record now; returns the receiver's status.
        ``source_api`` makes it an API change by that key (``SourceType`` 1)."""
        with self.state_lock:
            record = copy.deepcopy(self.records.get(str(vendor_id)))
        subject = subject or ("OpportunityUpdated" if record else "OpportunityDeleted")
        source = (1, source_api) if source_api else (0, "")
        inner = self.inner_message(subject, str(vendor_id), record, record, source)
        message = self.sns_message(inner, signature_version=signature_version, tamper=tamper)
        return self.send_sns(message)

    def send_subscription_confirmation(self) -> int:
        return self.send_sns(self.subscription_confirmation())

    def emit_standard(self, vendor_id: str, thin: bool = False) -> int:
        """The venue's own automation posting a Standard Webhooks delivery."""
        record = self.records[str(vendor_id)]
        return self.send_standard_webhook({"id": record["id"]} if thin else self.shown(record))

    def _notify(
        self,
        subject: str,
        vendor_id: str,
        record: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        source: SourceOf,
    ) -> None:
        if self.auto_emit:
            snapshot = copy.deepcopy((record, previous))
            inner = self.inner_message(subject, vendor_id, *snapshot, source)
            self.emit_async(lambda: self.send_sns(self.sns_message(inner)))

    def reset(self) -> None:
        super().reset()
        with self.state_lock:
            self.contacts.clear()
            self.companies.clear()
