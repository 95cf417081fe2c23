"""A stateful fake of SIRO's integration API for opportunities, served over real HTTP.

Modelled on VENDORS.md §1 and vendor-docs/siro-sync-opportunity.txt:

* every request needs ``Authorization: Bearer <token>``; anything else gets 401
  ``{"message": "Unauthorized"}``;
* ``PUT /v1/integrations/sync/opportunities`` upserts by ``externalId`` (required): the same
  ``externalId`` keeps the same ``id`` (a UUID). The body replaces the record — whether SIRO
  keeps omitted fields is undocumented, so the fake takes the harsher reading. Bad types or
  an unknown ``disposition`` get 422 ``{"message": "<field> …"}``. The answer is
  ``{"data": {…}}`` with the documented response fields;
* ``GET /v1/integrations/opportunities/{id}`` returns the flat stored record, which also
  holds ``opportunityContacts`` and ``deletedAt`` (not in the docs' answer [?]);
  soft-deleted records (``deletedAt`` set) are still returned;
* ``GET /v1/integrations/opportunities?externalId=&recordingId=&cursor=`` pages of 25 with
  ``cursor``/``pageSize``/``limit``/``total``/``hasNextPage``;
* ``DELETE /v1/integrations/opportunities/{id}`` removes the record.

SIRO sends no opportunity webhooks (VENDORS.md §1.7); ``emit_standard`` stands for the
customer's own automation posting a Standard Webhooks delivery.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, request

from schemas.siro import format_timestamp
from schemas.timestamps import parse_timestamp
from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.variants import Variants

SYNC_PATH = "/v1/integrations/sync/opportunities"
OPPORTUNITIES_PATH = "/v1/integrations/opportunities"
DISPOSITIONS = ("OPEN", "LOST", "WON")
#: The fields of the documented sync answer (``data``).
RESPONSE_FIELDS = (
    "id", "externalId", "createdAt", "updatedAt", "organizationId", "name", "amount",
    "closedAt", "disposition", "recordingId", "accountId", "account", "opportunityUsers",
)  # fmt: skip


def _optional(errors: list[str], path: str, value: Any, kind: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        errors.append(f"{path} must be {what}")


def _date_time(errors: list[str], path: str, value: Any) -> None:
    _optional(errors, path, value, str, "a string")
    if isinstance(value, str):
        try:
            parse_timestamp(value)
        except ValueError:
            errors.append(f"{path} must be a date-time string")


def _strings(errors: list[str], path: str, value: Any) -> None:
    if value is not None and (
        not isinstance(value, list) or not all(isinstance(v, str) for v in value)
    ):
        errors.append(f"{path} must be an array of strings")


def _objects(errors: list[str], path: str, value: Any) -> list[dict[str, Any]]:
    """The entries of an optional array of objects, each with a string ``externalId``."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        errors.append(f"{path} must be an array of objects")
        return []
    for i, entry in enumerate(value):
        if not isinstance(entry.get("externalId"), str):
            errors.append(f"{path}[{i}].externalId is required and must be a string")
    return value


def validate_sync(body: Any) -> list[str]:
    """What SIRO would refuse in a sync body (empty when it is acceptable)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errors: list[str] = []
    external_id = body.get("externalId")
    if not isinstance(external_id, str) or not external_id.strip():
        errors.append("externalId is required and must be a non-empty string")
    for name in ("name", "remoteCreatedAt", "lastActivityAt", "accountId"):
        _optional(errors, name, body.get(name), str, "a string")
    _optional(errors, "amount", body.get("amount"), int | float, "a number")
    for name in ("closedAt", "deletedAt"):
        _date_time(errors, name, body.get(name))
    if body.get("disposition") not in (None, *DISPOSITIONS):
        errors.append(f"disposition must be one of {', '.join(DISPOSITIONS)}")
    account = body.get("account")
    if account is not None and not (
        isinstance(account, dict) and isinstance(account.get("externalId"), str)
    ):
        errors.append("account must be an object with a string externalId")
    for i, contact in enumerate(
        _objects(errors, "opportunityContacts", body.get("opportunityContacts"))
    ):
        path = f"opportunityContacts[{i}]"
        _optional(errors, f"{path}.name", contact.get("name"), str, "a string")
        _strings(errors, f"{path}.emailAddresses", contact.get("emailAddresses"))
        _strings(errors, f"{path}.phoneNumbers", contact.get("phoneNumbers"))
        if not isinstance(contact.get("isPrimary", False), bool):
            errors.append(f"{path}.isPrimary must be a boolean")
    for i, user in enumerate(_objects(errors, "opportunityUsers", body.get("opportunityUsers"))):
        _optional(errors, f"opportunityUsers[{i}].email", user.get("email"), str, "a string")
    return errors


def _normalised(value: str | None) -> str | None:
    """A date-time as SIRO answers it (it stores timestamps, naive ones as UTC)."""
    return format_timestamp(parse_timestamp(value)) if value else None


class SiroSimulator(Simulator):
    name = "siro"
    writes = ("/sync/opportunities", ("PUT",))

    def __init__(
        self,
        *,
        token: str = "siro-test-token",
        organization_id: str | None = None,
        page_size: int = 25,
        latency: float = 0.0,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.token = token
        self.organization_id = organization_id or str(uuid.uuid4())
        self.page_size = page_size
        #: Synced accounts by their ``externalId``: the same one resolves to the same id.
        self.accounts: dict[str, dict[str, Any]] = {}
        super().__init__(latency=latency, rate_limit=rate_limit)

    # -- API -----------------------------------------------------------------------------
    def routes(self) -> None:
        add = self.app.add_url_rule
        add(SYNC_PATH, "sync", self._sync, methods=["PUT"])
        add(OPPORTUNITIES_PATH, "list", self._list, methods=["GET"])
        add(OPPORTUNITIES_PATH + "/<opp_id>", "get", self._get, methods=["GET"])
        add(OPPORTUNITIES_PATH + "/<opp_id>", "delete", self._delete, methods=["DELETE"])
        self.app.register_error_handler(404, lambda _: self._message("Not Found", 404))
        self.app.register_error_handler(405, lambda _: self._message("Method Not Allowed", 405))

    def check_auth(self) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._message("Unauthorized", 401)
        return None

    def _message(self, message: str, status: int) -> Response:
        return self.json_response({"message": message}, status)

    def _sync(self) -> Response:
        body = request.get_json(silent=True)
        errors = validate_sync(body)
        if errors or not isinstance(body, dict):
            return self._message("; ".join(errors), 422)
        record, _created = self.apply_sync(body)
        self.wrote(record["id"])
        return self.json_response({"data": self.shown({k: record[k] for k in RESPONSE_FIELDS})})

    def _get(self, opp_id: str) -> Response:
        with self.state_lock:
            record = self.records.get(opp_id)
        if record is None:
            return self._message("Opportunity not found", 404)
        return self.json_response(self.shown(record))

    def _list(self) -> Response:
        external_id = request.args.get("externalId")
        recording_id = request.args.get("recordingId")
        try:
            start = self._offset(request.args.get("cursor"))
        except ValueError:
            return self._message("Invalid cursor", 400)
        with self.state_lock:
            matches = [
                r
                for r in self.records.values()
                if (external_id is None or r["externalId"] == external_id)
                and (recording_id is None or r["recordingId"] == recording_id)
            ]
        page = matches[start : start + self.page_size]
        more = start + self.page_size < len(matches)
        cursor = base64.urlsafe_b64encode(f"o:{start + self.page_size}".encode()).decode()
        return self.json_response(
            {
                "data": [self.shown(r) for r in page],
                "cursor": cursor if more else None,
                "pageSize": self.page_size,
                "limit": self.page_size,
                "total": len(matches),
                "hasNextPage": more,
            }
        )

    @staticmethod
    def _offset(cursor: str | None) -> int:
        """The offset an opaque cursor stands for; ``ValueError`` for one never issued."""
        if not cursor:
            return 0
        try:
            text = base64.urlsafe_b64decode(cursor.encode()).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(cursor) from None
        if not text.startswith("o:") or not text[2:].isdigit():
            raise ValueError(cursor)
        return int(text[2:])

    def _delete(self, opp_id: str) -> Response:
        with self.state_lock:
            record = self.records.pop(opp_id, None)
        if record is None:
            return self._message("Opportunity not found", 404)
        return self.json_response({"data": record})

    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """SIRO's answers as its page leaves them open (VENDORS.md §1): timestamps as
        ``…Z`` or ``2024-02-28 20:09:58.692`` (and so any ISO form), optional keys left out or
        null, ``opportunityContacts``/``deletedAt`` not promised at all, unknown keys."""
        any_form = ("iso-z", "iso-offset", "iso-east", "space", "iso-naive")
        for key in ("createdAt", "updatedAt", "deletedAt"):
            if key in record:
                record[key] = variants.timestamp(record[key], any_form)
        if "closedAt" in record:  # only its day is read, as written: no other zone
            record["closedAt"] = variants.timestamp(record["closedAt"], ("space", "iso-z"))
        # The documented answer has no opportunityContacts: it may come or not.
        self.omit_written(record, variants, ("opportunityContacts",))
        self.unknown_enum(record, variants, {"disposition": "PENDING"})
        variants.optional(record, ("organizationId", "recordingId", "accountId", "createdAt"))
        if record.get("deletedAt") is None:
            variants.optional(record, ("deletedAt",))
        return variants.extra_keys(record)

    # -- state ---------------------------------------------------------------------------
    def _stamp(self, previous: dict[str, Any] | None = None) -> str:
        """Now, to the millisecond, and always after the record's last ``updatedAt``."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if previous is not None and previous.get("updatedAt"):
            now = max(now, parse_timestamp(previous["updatedAt"]) + timedelta(milliseconds=1))
        return format_timestamp(now)

    def _account(self, body: dict[str, Any]) -> dict[str, Any] | None:
        # ``accountId`` (an override by SIRO's internal id) is accepted but not modelled.
        sent = body.get("account")
        if sent is None:
            return None
        # "supplying just an externalId will resolve to an already-synced account"
        account = self.accounts.setdefault(
            sent["externalId"], {"id": str(uuid.uuid4()), "externalId": sent["externalId"]}
        )
        if "name" in sent or "name" not in account:
            account["name"] = sent.get("name")
        return dict(account)

    def apply_sync(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store a valid sync body as SIRO would; (the stored record, whether it is new)."""
        with self.state_lock:
            existing = next(
                (r for r in self.records.values() if r["externalId"] == body["externalId"]), None
            )
            stamp = self._stamp(existing)
            account = self._account(body)
            record = {
                "id": existing["id"] if existing else str(uuid.uuid4()),
                "externalId": body["externalId"],
                "createdAt": existing["createdAt"] if existing else stamp,
                "updatedAt": stamp,
                "organizationId": self.organization_id,
                "name": body.get("name"),
                "amount": body.get("amount"),
                "closedAt": _normalised(body.get("closedAt")),
                "disposition": body.get("disposition"),
                "recordingId": existing["recordingId"] if existing else None,
                "accountId": account["id"] if account else None,
                "account": account,
                "opportunityUsers": [
                    {"externalId": u["externalId"], "email": u.get("email"), "name": u.get("name")}
                    for u in body.get("opportunityUsers") or []
                ],
                "opportunityContacts": [
                    {
                        "externalId": c["externalId"],
                        "name": c.get("name"),
                        "emailAddresses": list(c.get("emailAddresses") or []),
                        "phoneNumbers": list(c.get("phoneNumbers") or []),
                        "isPrimary": bool(c.get("isPrimary", False)),
                    }
                    for c in body.get("opportunityContacts") or []
                ],
                "deletedAt": _normalised(body.get("deletedAt")),
            }
            self.records[record["id"]] = record
            return record, existing is None

    def reset(self) -> None:
        with self.state_lock:
            super().reset()
            self.accounts.clear()

    # -- test hooks ----------------------------------------------------------------------
    def seed(self, record: dict[str, Any] | None = None) -> str:
        """Add a record as SIRO's own CRM connector would (its ``externalId`` is that CRM's
        id unless given), with any record keys overridden; returns its id."""
        fields = dict(record or {})
        with self.state_lock:
            external_id = fields.setdefault("externalId", f"crm-{self.next_id()}")
            stored, _ = self.apply_sync({"externalId": external_id or f"crm-{self.next_id()}"})
            del self.records[stored["id"]]
            stored.update(fields)
            self.records[stored["id"]] = stored
            return str(stored["id"])

    def edit(self, vendor_id: str, **changes: Any) -> dict[str, Any]:
        """A person changes the record in SIRO (record keys, e.g. ``disposition="WON"``)."""
        with self.state_lock:
            record = self.records[vendor_id]
            record.update(changes)
            record["updatedAt"] = self._stamp(record)
            return dict(record)

    def emit_standard(self, vendor_id: str, thin: bool = False) -> int:
        """The customer's automation posts the record (or ``{"id": …}``) as a Standard
        Webhooks delivery to ``webhook_url``; returns the receiver's status code."""
        with self.state_lock:
            payload = {"id": vendor_id} if thin else self.shown(self.records[vendor_id])
        return self.send_standard_webhook(payload)

    def emit(self, vendor_id: str) -> int:
        """``emit_standard`` in the configured ``webhook_mode`` ("fat" or "thin")."""
        return self.emit_standard(vendor_id, thin=self.webhook_mode == "thin")
