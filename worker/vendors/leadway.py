"""The Leadway (white-label HighLevel / LeadConnector) adapter: opportunities over its v2 API.

Every call carries ``Authorization: Bearer <LEADWAY_API_TOKEN>`` and ``Version: 2021-07-28``
(VENDORS.md §2.2). Writes go through ``POST /opportunities/upsert`` (``id`` => update). A
HighLevel opportunity needs a contact, so each write first makes sure of one with
``POST /contacts/upsert`` unless the links already hold its id for the same contact fields
(``UpsertResult.extra`` = ``{"contact": id, "contact_fp": hash}``; DESIGN.md "Leadway
contacts"). Upsert without ``id`` is not idempotent (VENDORS.md §2.3): after an uncertain
create, ``find_existing`` searches the pipeline by contact and name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import leadway as schema
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity
from schemas.timestamps import read_timestamp
from worker.errors import OutcomeUnknown, Permanent
from worker.vendors.base import SchemaTranslation, UpsertResult
from worker.vendors.facts import VendorFacts
from worker.vendors.http import VendorHTTP

if TYPE_CHECKING:
    from worker.settings import VendorSettings

FACTS = VendorFacts(
    name="leadway",
    base_url="https://services.leadconnectorhq.com",
    quota="100/10 seconds;200000/day",  # VENDORS.md §2.6
    required=("LEADWAY_API_TOKEN", "LEADWAY_LOCATION_ID", "LEADWAY_PIPELINE_ID"),
    optional=("LEADWAY_WEBHOOK_PUBLIC_KEY", "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY"),
    native_signature="highlevel",
    native_headers=("x-ghl-signature", "x-wh-signature"),
    # Six retries 10 minutes apart plus jitter, "~1 hr 10 min" worst case
    # (help.gohighlevel.com, "Automated Webhook Retries"; VENDORS.md §2.7).
    redelivery_seconds=70 * 60,
    retry_status=429,  # HighLevel redelivers only on 429 (VENDORS.md §2.7)
    quota_scope_variable="LEADWAY_LOCATION_ID",  # the quota is per location (VENDORS.md §2.6)
)

API_VERSION = "2021-07-28"
PAGE_SIZE = 100  # the search's maximum (VENDORS.md §2.5)
#: Contacts remembered per sync key, so a retry after a lost answer reuses the contact.
CONTACT_MEMORY = 4096


class LeadwayAdapter(SchemaTranslation):
    name = "leadway"
    schema = schema
    synced_fields = schema.SYNCED_FIELDS

    def __init__(
        self,
        settings: VendorSettings,
        mapping: Mapping,
        *,
        timeout: float = 10.0,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.mapping = mapping
        self.location_id = settings.require("LEADWAY_LOCATION_ID")
        self.pipeline_id = settings.require("LEADWAY_PIPELINE_ID")
        token = settings.require("LEADWAY_API_TOKEN")
        self.http = VendorHTTP(
            self.name,
            settings.base_url,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {token}",
                "Version": API_VERSION,
                "Accept": "application/json",
            },
            before_request=before_request,
            body_fields=schema.BODY_FIELDS,
        )
        self._first_stage_id: str | None = None
        self._contacts: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def close(self) -> None:
        self.http.close()

    # -- pure translation ----------------------------------------------------------------
    # -- I/O -----------------------------------------------------------------------------
    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        answer = self.http.request(
            "GET", self.http.record_path("/opportunities", vendor_id), allow_404=True
        )
        if answer is None:
            return None
        return self._opportunity(answer, "GET /opportunities/{id}")

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        contact = schema.contact_body(opp, location_id=self.location_id)
        fingerprint = schema.contact_fingerprint(contact)
        contact_id = self._known_contact(key, extra, fingerprint)
        reused = contact_id is not None
        if contact_id is None:
            contact_id = self._upsert_contact(contact)
        self._remember(key, contact_id, fingerprint)
        try:
            answer = self._upsert_opportunity(opp, vendor_id, contact_id)
        except Permanent as exc:
            # The contact we kept may have been deleted or merged in Leadway since: make
            # sure of one again, once (VENDORS.md §2.4, contacts upsert).
            answer_text = (exc.answer or "").lower()
            if not reused or exc.status not in (400, 404, 422) or "contact" not in answer_text:
                raise
            contact_id = self._upsert_contact(contact)
            self._remember(key, contact_id, fingerprint)
            answer = self._upsert_opportunity(opp, vendor_id, contact_id)
        record = self._opportunity(answer, "POST /opportunities/upsert")
        created = answer.get("new")
        return UpsertResult(
            vendor_id=str(record["id"]),
            created=bool(created) if isinstance(created, bool) else vendor_id is None,
            extra={"contact": contact_id, "contact_fp": fingerprint},
        )

    def requests_for(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> int:
        """The opportunity, its contact unless known, and the pipeline's stages when a new
        deal needs the first stage and this process has not read it yet."""
        fingerprint = schema.contact_fingerprint(
            schema.contact_body(opp, location_id=self.location_id)
        )
        contact = self._known_contact(key, extra, fingerprint) is None
        stages = (
            vendor_id is None
            and self._first_stage_id is None
            and schema.stage_to_send(opp, self.mapping) is None
        )
        return 1 + int(contact) + int(stages)

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        params: dict[str, Any] = {"pipeline_id": self.pipeline_id}
        remembered = self._contacts.get(key)
        if remembered is not None:
            params["contact_id"] = remembered[0]
        if opp.name:
            params["q"] = opp.name
        matches = []
        for record in self._search(params):
            created = read_timestamp(record.get("createdAt"))
            if record.get("id") and record.get("name") == opp.name and created and created >= since:
                matches.append((created, str(record["id"])))
        return min(matches)[1] if matches else None

    def delete(self, vendor_id: str) -> None:
        self.http.request(
            "DELETE", self.http.record_path("/opportunities", vendor_id), allow_404=True
        )

    def list_records(self) -> Iterator[dict[str, Any]]:
        """Every opportunity of ``LEADWAY_PIPELINE_ID`` (the one pipeline we sync)."""
        return self._search({"pipeline_id": self.pipeline_id})

    def probe(self) -> str:
        stages = self._pipeline_stages()
        return (
            f"Leadway answered: pipeline {self.pipeline_id} of location {self.location_id} "
            f"has {len(stages)} stages."
        )

    # -- internals -----------------------------------------------------------------------
    def _known_contact(self, key: str, extra: dict[str, str], fingerprint: str) -> str | None:
        if extra.get("contact") and extra.get("contact_fp") == fingerprint:
            return extra["contact"]
        remembered = self._contacts.get(key)
        if remembered is not None and remembered[1] == fingerprint:
            return remembered[0]
        return None

    def _remember(self, key: str, contact_id: str, fingerprint: str) -> None:
        self._contacts[key] = (contact_id, fingerprint)
        self._contacts.move_to_end(key)
        while len(self._contacts) > CONTACT_MEMORY:
            self._contacts.popitem(last=False)

    def _upsert_contact(self, body: dict[str, Any]) -> str:
        answer = self.http.request("POST", "/contacts/upsert", json_body=body)
        contact = answer.get("contact") if isinstance(answer, dict) else None
        if not isinstance(contact, dict) or not contact.get("id"):
            raise OutcomeUnknown(
                "leadway POST /contacts/upsert: answer has no contact id",
                vendor=self.name,
                answer=str(answer)[:300],
                reason="bad_answer",
            )
        return str(contact["id"])

    def _upsert_opportunity(
        self, opp: Opportunity, vendor_id: str | None, contact_id: str
    ) -> dict[str, Any]:
        default_stage = None
        if vendor_id is None and schema.stage_to_send(opp, self.mapping) is None:
            default_stage = self._default_stage_id()
        body = schema.to_body(
            opp,
            self.mapping,
            pipeline_id=self.pipeline_id,
            location_id=self.location_id,
            contact_id=contact_id,
            vendor_id=vendor_id,
            default_stage_id=default_stage,
        )
        answer = self.http.request("POST", "/opportunities/upsert", json_body=body)
        return answer if isinstance(answer, dict) else {}

    def _opportunity(self, answer: Any, where: str) -> dict[str, Any]:
        record = answer.get("opportunity") if isinstance(answer, dict) else None
        if not isinstance(record, dict) or not record.get("id"):
            # A write may have been committed even so: look before creating again.
            raise OutcomeUnknown(
                f"leadway {where}: answer has no opportunity",
                vendor=self.name,
                answer=str(answer)[:300],
                reason="bad_answer",
            )
        return record

    def _pipeline_stages(self) -> list[dict[str, Any]]:
        answer = self.http.request(
            "GET", "/opportunities/pipelines", params={"locationId": self.location_id}
        )
        pipelines = answer.get("pipelines", []) if isinstance(answer, dict) else []
        for pipeline in pipelines:
            if isinstance(pipeline, dict) and pipeline.get("id") == self.pipeline_id:
                return [s for s in pipeline.get("stages") or [] if isinstance(s, dict)]
        raise Permanent(
            f"leadway: LEADWAY_PIPELINE_ID {self.pipeline_id} is not a pipeline of location "
            f"{self.location_id}",
            vendor=self.name,
            reason="config",
        )

    def _default_stage_id(self) -> str:
        """The first stage of our pipeline (DESIGN.md, create-time defaults), read once."""
        if self._first_stage_id is None:
            stages = self._pipeline_stages()
            if not stages or not stages[0].get("id"):
                raise Permanent(
                    f"leadway: pipeline {self.pipeline_id} has no stages",
                    vendor=self.name,
                    reason="config",
                )
            self._first_stage_id = str(stages[0]["id"])
        return self._first_stage_id

    def _search(self, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every search result, page by page (``meta.nextPage`` until it runs out)."""
        page: int | None = 1
        while page is not None:
            params = {"location_id": self.location_id, "limit": PAGE_SIZE, "page": page, **filters}
            answer = self.http.request("GET", "/opportunities/search", params=params)
            records = answer.get("opportunities") if isinstance(answer, dict) else None
            if not records:
                return
            yield from (r for r in records if isinstance(r, dict))
            following = (answer.get("meta") or {}).get("nextPage")
            page = following if isinstance(following, int) and following > page else None
