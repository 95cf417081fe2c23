"""iCloudReady adapter: sign-in Bearer auth, create and PATCH opportunities, list to poll.

API page: https://www.icloud-ready.com/docs/api/opportunities/ (VENDORS.md §5). There is no
upsert, no external-id field and no webhook: a create is ``POST /api/v2/opportunities``, an
update ``PATCH /api/v2/opportunities/:id`` ("Any parameters not set will be unchanged", so it
carries every synced field), and changes are learned by polling the list (or through a
customer's automation posting Standard Webhooks). After an uncertain create the record is
looked up by name and creation time. Answers have no published schema; ``schemas.icloudready``
reads them tolerantly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from marshmallow import ValidationError

from schemas import icloudready as icr
from schemas.envelope import InboundEvent, is_thin, thin_event
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity
from worker.errors import OutcomeUnknown, Permanent
from worker.vendors.base import SchemaTranslation, UpsertResult, invalid_payload
from worker.vendors.facts import VendorFacts
from worker.vendors.http import VendorHTTP

if TYPE_CHECKING:
    from worker.settings import VendorSettings

FACTS = VendorFacts(
    name="icloudready",
    base_url="https://api.icloud-ready.com",
    quota="480/minute;4800/hour",  # VENDORS.md §5.6
    required=("ICLOUDREADY_EMAIL", "ICLOUDREADY_PASSWORD"),
    optional=("ICLOUDREADY_CUSTOMER_ID",),
    polled=True,
)

API = "/api/v2"
OPPORTUNITIES = f"{API}/opportunities"
PAGE_SIZE = 100
#: Where the token may be in the sign-in answer (undocumented: DESIGN.md "iCloudReady fields").
TOKEN_KEYS = ("token", "accessToken", "access_token")


class SigninAuth(httpx.Auth):
    """Bearer token from ``POST /api/v2/signin`` (VENDORS.md §5.2), cached and shared by the
    threads using one adapter; on a 401 it signs in again once and repeats the request.

    The token lifetime is undocumented, so a 401 is the only sign that it ran out. A failed
    sign-in ends the flow with the sign-in's own answer, which ``VendorHTTP`` classifies
    (401 -> ``Permanent(reason="auth")``, 429, 5xx).
    """

    requires_response_body = True

    def __init__(
        self,
        signin_url: str,
        email: str,
        password: str,
        *,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.signin_url = signin_url
        self._credentials = {"email": email, "password": password}
        self._before_request = before_request
        self._token: str | None = None
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._token_for(stale=None)
        if token is None:
            return
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        token = yield from self._token_for(stale=token)
        if token is None:
            return
        request.headers["Authorization"] = f"Bearer {token}"
        self._pace()
        yield request

    def _token_for(
        self, *, stale: str | None
    ) -> Generator[httpx.Request, httpx.Response, str | None]:
        """The cached token unless it is ``stale``, else a fresh one (None: sign-in refused).

        The lock is held across the sign-in so that threads finding no token wait for one
        sign-in instead of each making their own; a thread whose token was refused reuses
        the one another thread has already fetched.
        """
        with self._lock:
            if self._token is not None and self._token != stale:
                return self._token
            self._token = None
            self._pace()
            response = yield httpx.Request("POST", self.signin_url, json=self._credentials)
            if not response.is_success:
                return None
            self._token = _token_in(response)
            return self._token

    def _pace(self) -> None:
        # Extra requests count against the vendor's quota too (480/min, VENDORS.md §5.6).
        if self._before_request is not None:
            self._before_request()


def _token_in(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    for holder in (answer, answer.get("data") if isinstance(answer, dict) else None):
        if isinstance(holder, dict):
            for key in TOKEN_KEYS:
                if isinstance(holder.get(key), str) and holder[key]:
                    return str(holder[key])
    raise Permanent(
        "icloudready: sign-in answered without a token",
        vendor="icloudready",
        status=response.status_code,
        reason="auth",
    )


class IcloudreadyAdapter(SchemaTranslation):
    name = "icloudready"
    schema = icr
    synced_fields = icr.SYNCED_FIELDS

    def __init__(
        self,
        settings: VendorSettings,
        mapping: Mapping,
        *,
        timeout: float = 10.0,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.mapping = mapping
        #: Every opportunity belongs to a customer record (VENDORS.md §6.8); fixed at create.
        self.customer = mapping.icloudready_customer or settings.get("ICLOUDREADY_CUSTOMER_ID")
        self.auth = SigninAuth(
            f"{settings.base_url}{API}/signin",
            settings.require("ICLOUDREADY_EMAIL"),
            settings.require("ICLOUDREADY_PASSWORD"),
            before_request=before_request,
        )
        self.http = VendorHTTP(
            self.name,
            settings.base_url,
            timeout=timeout,
            auth=self.auth,
            before_request=before_request,
            body_fields=icr.BODY_KEYS,
        )

    def close(self) -> None:
        self.http.close()

    # -- pure translation ----------------------------------------------------------------
    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        """iCloudReady sends no webhooks of its own; what arrives is a customer automation's
        Standard Webhooks delivery: the record as the API returns it, or ``{"id": …}``."""
        if is_thin(payload):
            try:
                return thin_event(payload)
            except ValidationError as exc:
                raise invalid_payload(self.name, "event id", exc) from None
        opp = self.to_canonical(payload)
        return InboundEvent(
            vendor_id=self.record_id(payload),
            deleted=opp.deleted,
            record=icr.unwrap_record(payload),
            event_time=opp.updated_at,
        )

    # -- I/O -----------------------------------------------------------------------------
    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        answer = self.http.request(
            "GET", self.http.record_path(OPPORTUNITIES, vendor_id), allow_404=True
        )
        if answer is None:
            return None
        try:
            return icr.unwrap_record(answer)
        except ValidationError:
            raise _bad_answer(f"GET {OPPORTUNITIES}/{vendor_id}", "a record", answer) from None

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        """Create (not idempotent: the caller looks with ``find_existing`` before creating
        again after ``OutcomeUnknown``), or PATCH every synced field."""
        if vendor_id is not None:
            body = icr.to_body(opp, self.mapping, create=False)
            self.http.request(
                "PATCH", self.http.record_path(OPPORTUNITIES, vendor_id), json_body=body
            )
            return UpsertResult(vendor_id=vendor_id, created=False)
        body = icr.to_body(opp, self.mapping, create=True, customer=self.customer)
        answer = self.http.request("POST", OPPORTUNITIES, json_body=body)
        try:
            new_id = icr.record_id(answer or {})
        except ValidationError:
            # The create went through but its id is unreadable: look for it, as after a loss.
            raise OutcomeUnknown(
                "icloudready POST /api/v2/opportunities: created, but no id in the answer",
                vendor=self.name,
                answer=str(answer)[:300],
                reason="no_id",
            ) from None
        return UpsertResult(vendor_id=new_id, created=True)

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        """The earliest record named exactly ``opp.name`` created at or after ``since``.

        iCloudReady has nowhere to store our key, so name and creation time are the match.
        Its timestamps have millisecond precision: ``since`` is cut to the millisecond.
        """
        if not opp.name:
            return None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        since = since.replace(microsecond=since.microsecond // 1000 * 1000)
        params = {
            "q": opp.name,
            "limit": PAGE_SIZE,
            "page": 1,
            "sortBy": "createdAt",
            "order": "desc",
        }
        found: list[tuple[datetime, str]] = []
        for record in self._page(params):
            try:
                candidate = icr.to_canonical(record, self.mapping)
                vendor_id = icr.record_id(record)
            except ValidationError:
                continue
            created = candidate.created_at
            if candidate.name == opp.name and created is not None and created >= since:
                found.append((created, vendor_id))
        return min(found)[1] if found else None

    def delete(self, vendor_id: str) -> None:
        # The documented delete path is /opportunities/deleted/:id (sic). Gone already is fine.
        self.http.request(
            "DELETE", self.http.record_path(f"{OPPORTUNITIES}/deleted", vendor_id), allow_404=True
        )

    def list_records(self) -> Iterator[dict[str, Any]]:
        """Every record, most recently updated first, pages of 100 until a short page.

        An edit during the walk moves a record to the front and shifts the rest down a
        place, so a record may be seen twice: each id is yielded once. A page with nothing
        new ends the walk (a server ignoring ``page`` would otherwise loop forever).
        """
        seen: set[str] = set()
        page = 1
        while True:
            params = {"limit": PAGE_SIZE, "page": page, "sortBy": "updatedAt", "order": "desc"}
            records = self._page(params)
            fresh = [r for r in records if self.record_id(r) not in seen]
            for record in fresh:
                seen.add(self.record_id(record))
                yield record
            if len(records) < PAGE_SIZE or not fresh:
                return
            page += 1

    def probe(self) -> str:
        records = self._page({"limit": 1, "page": 1})
        holds = "holds opportunities" if records else "is empty"
        return (
            f"Signed in to iCloudReady at {self.http.client.base_url}; "
            f"the opportunity list {holds}."
        )

    # -- answers -------------------------------------------------------------------------
    def _page(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        answer = self.http.request("GET", OPPORTUNITIES, params=params)
        try:
            return icr.unwrap_list(answer)
        except ValidationError:
            raise _bad_answer(f"GET {OPPORTUNITIES}", "a list of records", answer) from None


def _bad_answer(where: str, expected: str, answer: Any) -> Permanent:
    return Permanent(
        f"icloudready {where}: the answer is not {expected}",
        vendor="icloudready",
        answer=str(answer)[:300],
        reason="bad_answer",
    )
