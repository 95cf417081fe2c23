"""How the iVvy simulator shapes an opportunity: blank records, checked changes, inline parties.

The rules follow vendor-docs/ivvy-add-or-update-opportunity.txt and VENDORS.md §3: a refused
change writes nothing, contacts and companies are upserted inline (``updateIfExists``), at most
3 ``externalUrls``; ``vary`` gives the record the shapes iVvy's pages leave open.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from schemas.ivvy import format_timestamp
from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.ivvyrules import invalid, ivvy_now, pick, text_arg
from worker.sandbox.simulators.variants import Variants

STAMPS = ("createdDate", "modifiedDate")
#: The getOpportunityList fields a new record holds as null (crm/get-opportunity-list.md).
NULLS = ("description", "ownerUser", "contact", "company", "currentBookingId", "qualityId",
         "stageId", "stageName", "stageReasonId", "typeId", "type", "subtypeId", "sourceId",
         "sourceName", "channelId", "closedDate")  # fmt: skip
FIELDS = frozenset({"id", "venueId", "name", "externalUrls", *STAMPS, *NULLS})


class IvvyRecords(Simulator):
    """The record shaping ``IvvySimulator`` applies to API writes and to a person's edits."""

    venue_id: int
    stages: list[dict[str, Any]]
    types: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    users: list[dict[str, Any]]
    contacts: list[dict[str, Any]]
    companies: list[dict[str, Any]]

    def _blank(self) -> dict[str, Any]:
        stamp = format_timestamp(ivvy_now())
        return {"id": self.next_id(), "venueId": self.venue_id, "name": "", **dict.fromkeys(NULLS),
                "createdDate": stamp, "modifiedDate": stamp, "externalUrls": []}  # fmt: skip

    def _apply(self, record: dict[str, Any], body: dict[str, Any]) -> None:
        """Check every given key, then write them all (a refusal changes nothing)."""
        new: dict[str, Any] = {}
        if "name" in body:
            new["name"] = text_arg(body, "name")
            if not new["name"]:
                raise invalid("name", "name must not be empty")
        if "description" in body:
            new["description"] = text_arg(body, "description")
        if "stageId" in body:
            stage = pick(self.stages, body, "stageId")
            new.update(stageId=stage["id"], stageName=stage["name"])
        if "typeId" in body:
            kind = pick(self.types, body, "typeId")
            new.update(typeId=kind["id"], type=kind["type"])
        if "sourceId" in body:
            source = pick(self.sources, body, "sourceId")
            new.update(sourceId=source["id"], sourceName=source["name"])
        if "closedDate" in body:
            new["closedDate"] = self._closed_date(body)
        if "ownerUserId" in body:
            user = body["ownerUserId"] is not None and pick(self.users, body, "ownerUserId")
            new["ownerUser"] = dict(user) if user else None
        if "externalUrls" in body:
            new["externalUrls"] = self._external_urls(body["externalUrls"])
        # Contacts and companies are saved as they are read, so they come last.
        if "contact" in body:
            new["contact"] = self._contact(body["contact"])
        if "company" in body:
            new["company"] = self._company(body["company"])
        record.update(new)

    @staticmethod
    def _closed_date(body: dict[str, Any]) -> str | None:
        value = text_arg(body, "closedDate")
        try:
            return date.fromisoformat(value).isoformat() if value else None
        except ValueError:
            raise invalid("closedDate", "closedDate must be yyyy-mm-dd") from None

    @staticmethod
    def _external_urls(given: Any) -> list[dict[str, Any]]:
        links = given or []
        if not isinstance(links, list) or len(links) > 3:
            raise invalid("externalUrls", "at most 3 external urls")
        if not all(isinstance(x, dict) and isinstance(x.get("ref"), str) for x in links):
            raise invalid("externalUrls", "each external url needs a ref")
        return [{"ref": x["ref"], "url": x.get("url"), "label": x.get("label")} for x in links]

    def _contact(self, given: Any) -> dict[str, Any] | None:
        """contact?action=addOrUpdateContact semantics, inline (blank fields read as "")."""
        if given is None or not isinstance(given, dict):
            return self._refuse_party("contact", given)
        fields = {k: text_arg(given, k) or "" for k in ("firstName", "lastName", "email", "phone")}
        match = ("firstName", "lastName", "email")
        return self._saved(self.contacts, fields, match, bool(given.get("updateIfExists")))

    def _company(self, given: Any) -> dict[str, Any] | None:
        if given is None or not isinstance(given, dict) or not text_arg(given, "businessName"):
            return self._refuse_party("company", given)
        fields = {"businessName": given["businessName"], "businessNumber": "", "phone": "",
                  "email": ""}  # fmt: skip
        return self._saved(
            self.companies, fields, ("businessName",), bool(given.get("updateIfExists"))
        )

    @staticmethod
    def _refuse_party(key: str, given: Any) -> None:
        if given is not None:
            raise invalid(key, f"{key} must be an object with its name")

    def _saved(self, registry: list[dict[str, Any]], fields: dict[str, Any],
               match: tuple[str, ...], update_if_exists: bool) -> dict[str, Any]:  # fmt: skip
        """The party matched on ``match`` (with ``updateIfExists``) and updated, else a new one."""
        found = next((p for p in registry if all(p[k] == fields[k] for k in match)), None)
        if found is None or not update_if_exists:
            found = {"id": self.next_id()}
            registry.append(found)
        found.update(fields)
        return dict(found)

    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """iVvy's answers as its pages leave them open (VENDORS.md §3): timestamps
        ``yyyy-mm-dd HH:mm:ss[ UTC]``, ids as numbers or their text, ``""`` for no value,
        keys it adds, and a stage the mapping does not list (stages are tenant-defined)."""
        for key in STAMPS:
            record[key] = variants.timestamp(record.get(key), ("space", "utc"))
        self.unknown_enum(record, variants, {"stageId": 9999, "stageName": "Pending Review"})
        for key in ("id", "venueId", "stageId", "typeId", "sourceId", "qualityId"):
            if isinstance(record.get(key), int) and variants.chance("id_types", 0.3):
                record[key] = str(record[key])
        for key, value in list(record.items()):
            if value is None and variants.chance("optional_keys", 0.3):
                record[key] = ""
        variants.optional(record, ("currentBookingId", "qualityId", "subtypeId", "channelId"))
        return variants.extra_keys(record)
