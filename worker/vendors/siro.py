"""SIRO's adapter: opportunities written by idempotent upsert on ``externalId``, read by id.

SIRO's integration API (VENDORS.md §1, vendor-docs/siro-sync-opportunity.txt) authenticates
with ``Authorization: Bearer <SIRO_API_TOKEN>`` (an organisation integration token). Creating
and updating are the same ``PUT /v1/integrations/sync/opportunities``, keyed by ``externalId``
(our canonical key), so a retried create can never make a second record; after a lost answer
the record is found with ``GET /v1/integrations/opportunities?externalId=``. SIRO sends no
opportunity webhooks (§1.7): it is polled, or wired through the customer's automation with
Standard Webhooks carrying the record or ``{"id": …}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from schemas import siro as schema
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity
from worker.errors import Permanent
from worker.vendors.base import SchemaTranslation, UpsertResult
from worker.vendors.facts import VendorFacts
from worker.vendors.http import VendorHTTP

if TYPE_CHECKING:
    from worker.settings import VendorSettings

FACTS = VendorFacts(
    name="siro",
    base_url="https://functions.siro.ai/api-externalApi",
    quota="1000/minute",  # VENDORS.md §1.6
    required=("SIRO_API_TOKEN",),
    polled=True,
)

SYNC_PATH = "/v1/integrations/sync/opportunities"
OPPORTUNITIES_PATH = "/v1/integrations/opportunities"
#: ``UpsertResult.extra`` key for the ``externalId`` a record is synced under: ours for
#: records we created, the upstream CRM's for records SIRO's own connectors made.
EXTERNAL_ID = "external_id"


class SiroAdapter(SchemaTranslation):
    name = "siro"
    upserts_by_key = True  # PUT sync upserts by externalId (our key)
    schema = schema
    synced_fields: frozenset[str] = schema.SYNCED_FIELDS

    def __init__(
        self,
        settings: VendorSettings,
        mapping: Mapping,
        *,
        timeout: float = 10.0,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.mapping = mapping
        token = settings.require("SIRO_API_TOKEN")
        self.http = VendorHTTP(
            self.name,
            settings.base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            before_request=before_request,
            body_fields=schema.BODY_FIELDS,
        )

    def close(self) -> None:
        self.http.close()

    # -- pure translation ----------------------------------------------------------------
    # -- I/O -----------------------------------------------------------------------------
    def _bad_answer(self, what: str, answer: Any) -> Permanent:
        return Permanent(
            f"siro {what}: unexpected answer",
            vendor=self.name,
            answer=str(answer)[:2000],
            reason="bad_answer",
        )

    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        answer = self.http.request(
            "GET", self.http.record_path(OPPORTUNITIES_PATH, vendor_id), allow_404=True
        )
        if answer is None:
            return None
        # The docs show a flat record; tolerate the sync answer's {"data": …} envelope too.
        if isinstance(answer, dict) and "id" not in answer and isinstance(answer.get("data"), dict):
            answer = answer["data"]
        if not isinstance(answer, dict):
            raise self._bad_answer("GET opportunity", answer)
        return answer

    def _external_id(self, key: str, vendor_id: str | None, extra: dict[str, str]) -> str:
        """The ``externalId`` to write under. A record SIRO's own CRM connector made carries
        that CRM's id; writing ours instead would make a second record (DESIGN.md inv. 2)."""
        if vendor_id is None:
            return key
        if extra.get(EXTERNAL_ID):
            return extra[EXTERNAL_ID]
        record = self.fetch(vendor_id)
        if record is None:
            return key  # gone from SIRO: the PUT makes it again under our key
        return schema.key_of(record) or key

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        """One idempotent ``PUT`` (create and update alike, every synced field sent).
        ``created`` is true when SIRO had no record under this id before, including one
        deleted in SIRO since we linked it (the same ``externalId`` then gets a new id)."""
        external_id = self._external_id(key, vendor_id, extra)
        body = schema.to_body(opp, self.mapping, key=external_id)
        answer = self.http.request("PUT", SYNC_PATH, json_body=body)
        data = answer.get("data") if isinstance(answer, dict) else None
        try:
            new_id = schema.record_id(data if isinstance(data, dict) else {})
        except ValidationError:
            raise self._bad_answer("PUT sync", answer) from None
        return UpsertResult(
            vendor_id=new_id,
            created=vendor_id is None or new_id != vendor_id,
            extra={EXTERNAL_ID: external_id},
        )

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        """The record synced under our key; exact, so ``since`` is not needed."""
        for record in self._pages({"externalId": key}):
            return self.record_id(record)
        return None

    def delete(self, vendor_id: str) -> None:
        self.http.request(
            "DELETE", self.http.record_path(OPPORTUNITIES_PATH, vendor_id), allow_404=True
        )

    def list_records(self) -> Iterator[dict[str, Any]]:
        """Every opportunity, soft-deleted ones included, following ``cursor`` pages (25)."""
        yield from self._pages({})

    def _pages(self, filters: dict[str, str]) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = {**filters, **({"cursor": cursor} if cursor else {})}
            answer = self.http.request("GET", OPPORTUNITIES_PATH, params=params)
            if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
                raise self._bad_answer("GET opportunities", answer)
            yield from answer["data"]
            cursor = answer.get("cursor")
            if not answer.get("hasNextPage") or not cursor:
                return
            if cursor in seen:
                raise self._bad_answer("GET opportunities (cursor repeats)", answer)
            seen.add(cursor)

    def probe(self) -> str:
        answer = self.http.request("GET", OPPORTUNITIES_PATH)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise self._bad_answer("GET opportunities", answer)
        total = answer.get("total", len(answer["data"]))
        return f"SIRO answered: the token can read {total} opportunities."
