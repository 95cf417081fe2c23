"""Salescaling adapter: opportunities over ``/api/v1/opportunities`` with an ``x-api-key``.

Plain CRUD, no upsert (VENDORS.md §4.3, https://docs.salescaling.com/api/opportunities):
``POST`` creates, ``PUT /{id}`` updates with every synced field, ``GET /{id}`` reads,
``GET ?page=&limit=&name=`` lists, ``DELETE /{id}`` deletes. Every answer is the envelope
``{"statusCode", "count", "error", "data"}``.

A create is not idempotent and the record has no field for our key, so after an uncertain
create ``find_existing`` looks for a record with exactly our name created since the attempt.
Salescaling has no opportunity webhooks: it is polled, or wired through the customer's own
automation with Standard Webhooks (DESIGN.md, contracts), whose payloads ``parse_native`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import salescaling as schema
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
    name="salescaling",
    base_url="https://api.salescaling.com",
    quota="600/minute",
    required=("SALESCALING_API_KEY",),
    polled=True,
)

PATH = "/api/v1/opportunities"
#: Body fields a 400 answer may name (copied onto ``Permanent.field``).
BODY_FIELDS = ("closeProbability", "closeDate", "amount", "status", "description", "name")


def _created_at(record: dict[str, Any]) -> datetime | None:
    return read_timestamp(record.get("createdAt"))


class SalescalingAdapter(SchemaTranslation):
    """The ``VendorAdapter`` for Salescaling (see ``worker.vendors.base``)."""

    name = "salescaling"
    schema = schema
    synced_fields: frozenset[str] = schema.SYNCED_FIELDS
    #: Page size for listing; the docs give no maximum, 100 is the usual ceiling.
    page_size = 100

    def __init__(
        self,
        settings: VendorSettings,
        mapping: Mapping,
        *,
        timeout: float = 10.0,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.http = VendorHTTP(
            self.name,
            settings.base_url,
            timeout=timeout,
            headers={
                "x-api-key": settings.require("SALESCALING_API_KEY"),
                "Accept": "application/json",
            },
            before_request=before_request,
            body_fields=BODY_FIELDS,
        )

    def close(self) -> None:
        self.http.close()

    # -- pure translation ----------------------------------------------------------------
    # -- I/O -----------------------------------------------------------------------------
    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        answer = self.http.request("GET", self.http.record_path(PATH, vendor_id), allow_404=True)
        if answer is None:
            return None
        data = self._data(answer, "GET")
        if data is None:
            return None
        if not isinstance(data, dict):
            raise self._bad_answer("GET", answer)
        return data

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        """Create with ``POST`` or update with ``PUT`` carrying every synced field (``null``
        for an empty one: whether ``PUT`` replaces or merges is undocumented, VENDORS.md §4.3).
        ``key`` cannot be stored: Salescaling has no external-id field."""
        body = schema.to_body(opp, self.mapping)
        if vendor_id is None:
            answer = self.http.request("POST", PATH, json_body=body)
            return UpsertResult(vendor_id=self._created_id(answer), created=True)
        answer = self.http.request("PUT", self.http.record_path(PATH, vendor_id), json_body=body)
        self._data(answer, "PUT")
        return UpsertResult(vendor_id=vendor_id, created=False)

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        """The newest record named exactly ``opp.name`` and created at or after ``since``.
        The ``name`` filter is a partial match (docs), so names are compared here exactly."""
        if not opp.name:
            return None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        best: tuple[datetime, str] | None = None
        for record in self._pages({"name": opp.name}):
            created = _created_at(record)
            if record.get("name") != opp.name or created is None or created < since:
                continue
            if best is None or created > best[0]:
                best = (created, self.record_id(record))
        return None if best is None else best[1]

    def delete(self, vendor_id: str) -> None:
        """Delete the record; one that is already gone (404) counts as deleted."""
        answer = self.http.request("DELETE", self.http.record_path(PATH, vendor_id), allow_404=True)
        if answer is not None:
            self._data(answer, "DELETE")

    def list_records(self) -> Iterator[dict[str, Any]]:
        return self._pages({})

    def probe(self) -> str:
        answer = self.http.request("GET", PATH, params={"page": 1, "limit": 1})
        self._data(answer, "GET")
        total = answer.get("count")
        return (
            f"Salescaling at {self.settings.base_url} accepted the API key and lists "
            f"opportunities ({total} in total)."
        )

    # -- internals -----------------------------------------------------------------------
    def _pages(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every record matching ``params``, page by page (1-based) until a short page.
        ``count`` is not trusted as a stop signal: the docs do not say whether it is the
        total or the page's length. A page with nothing new stops a vendor ignoring ``page``."""
        seen: set[str] = set()
        page = 1
        while True:
            query = {**params, "page": page, "limit": self.page_size}
            answer = self.http.request("GET", PATH, params=query)
            data = self._data(answer, "GET")
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise self._bad_answer("GET", answer)
            ids = {str(r.get("id")) for r in data}
            if data and ids <= seen:
                return
            seen |= ids
            yield from data
            if len(data) < self.page_size:
                return
            page += 1

    def _data(self, answer: Any, method: str) -> Any:
        """``data`` of the documented envelope; anything else is an answer we cannot read."""
        if not isinstance(answer, dict) or "data" not in answer:
            raise self._bad_answer(method, answer)
        return answer["data"]

    def _created_id(self, answer: Any) -> str:
        """``data.id`` of a create. A 2xx we cannot read may still have created the record,
        so that is ``OutcomeUnknown`` (look before creating again), not a permanent failure."""
        data = answer.get("data") if isinstance(answer, dict) else None
        vendor_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(vendor_id, str) or not vendor_id:
            raise OutcomeUnknown(
                "salescaling POST: the answer carries no data.id",
                vendor=self.name,
                answer=str(answer)[:300],
                reason="bad_answer",
            )
        return vendor_id

    def _bad_answer(self, method: str, answer: Any) -> Permanent:
        return Permanent(
            f"salescaling {method}: answer is not the documented envelope",
            vendor=self.name,
            answer=str(answer)[:300],
            reason="bad_answer",
        )
