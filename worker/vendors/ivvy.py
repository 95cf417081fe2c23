"""iVvy's adapter: HMAC-SHA1 signed RPC calls to write and read venue opportunities.

Every iVvy call is ``POST {IVVY_BASE_URL}/api/1.0/{namespace}?action={action}`` with a JSON
body, signed per VENDORS.md §3.2 (developer.ivvy.com, "Signing the request"): ``Content-MD5``
is the lowercase hex MD5 of the body, ``IVVY-Date`` the time, and ``X-Api-Authorization:
IWS {key}:{signature}`` an HMAC-SHA1 over the lowercased string to sign. The signing is pure
(``string_to_sign``/``signature``) so the documented test vectors are unit tests.

Writes use ``venue?action=addOrUpdateOpportunity`` (``id`` => update). iVvy creates are not
idempotent and opportunities have no external id (§3.3), so we stamp our key in
``externalUrls`` and, after a lost answer, look it up with ``crm?action=getOpportunityList``.
iVvy documents no delete action: ``delete`` refuses with reason ``unsupported``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Generator, Iterator
from collections.abc import Mapping as HeaderMapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from marshmallow import ValidationError

from schemas import ivvy as schema
from schemas.envelope import InboundEvent
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity
from worker.errors import ConfigError, InvalidPayload, Permanent
from worker.vendors.base import SchemaTranslation, UpsertResult, invalid_payload
from worker.vendors.facts import VendorFacts
from worker.vendors.http import VendorHTTP

if TYPE_CHECKING:
    from worker.settings import VendorSettings

FACTS = VendorFacts(
    name="ivvy",
    base_url="https://api.ap-southeast-2.ivvy.com",
    quota="600/minute",
    required=("IVVY_API_KEY", "IVVY_API_SECRET", "IVVY_VENUE_ID", "IVVY_TYPE_ID", "IVVY_SOURCE_ID"),
    optional=("IVVY_STAGE_ID", "IVVY_SNS_TOPIC_ARN", "IVVY_SNS_CERT_HOSTS", "IVVY_SNS_CA_BUNDLE"),
    integer_ids=("IVVY_VENUE_ID", "IVVY_TYPE_ID", "IVVY_SOURCE_ID", "IVVY_STAGE_ID"),
    native_signature="sns",
    native_headers=("x-amz-sns-message-type",),
    # "The total policy retry time for an HTTP/S endpoint cannot be greater than 3,600
    # seconds" (docs.aws.amazon.com/sns/latest/dg/sns-message-delivery-retries.html).
    redelivery_seconds=3600,
    api_key_variable="IVVY_API_KEY",  # iVvy names the API key behind a change
    topic_variable="IVVY_SNS_TOPIC_ARN",
)

API_VERSION = "1.0"
CONTENT_TYPE = "application/json"
PAGE_SIZE = 100
#: iVvy's "The opportunity does not exist" (add-or-update-opportunity, specific codes).
NOT_FOUND_CODE = 24222


# -- request signing (VENDORS.md §3.2) ------------------------------------------------------
def content_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def ivvy_date(now: datetime) -> str:
    """The ``IVVY-Date`` value: iVvy's timestamp format, ``yyyy-mm-dd HH:MM:SS UTC``."""
    return now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ivvy_headers(headers: HeaderMapping[str, str]) -> str:
    """Headers named ``IVVY*``: ``-``/``_`` removed from the name, ``name=value``, sorted,
    joined by ``&`` (only ``IVVY-Date`` gives ``IVVYDate=<value>``)."""
    pairs = sorted(
        (
            (name.replace("-", "").replace("_", ""), value)
            for name, value in headers.items()
            if name.lower().startswith("ivvy")
        ),
        key=lambda pair: pair[0].lower(),
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def string_to_sign(
    *,
    method: str,
    content_md5: str,
    content_type: str,
    date: str,
    path_and_query: str,
    ivvy_header_text: str,
) -> str:
    """``date`` is the ``Date`` header, or ``""`` when ``IVVY-Date`` is sent instead."""
    parts = (method, content_md5, content_type, date, path_and_query, API_VERSION, ivvy_header_text)
    return "".join(parts).lower()


def signature(secret: str, to_sign: str) -> str:
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).hexdigest()


class IvvyAuth(httpx.Auth):
    """Signs each request just before it is sent (a retry by the worker is signed afresh)."""

    requires_request_body = True

    def __init__(
        self, api_key: str, api_secret: str, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.clock = clock or (lambda: datetime.now(UTC))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        body = request.content
        md5 = content_md5(body)
        request.headers["Content-Type"] = CONTENT_TYPE
        request.headers["Content-MD5"] = md5
        request.headers["IVVY-Date"] = ivvy_date(self.clock())
        to_sign = string_to_sign(
            method=request.method,
            content_md5=md5,
            content_type=CONTENT_TYPE,
            date="",
            path_and_query=request.url.raw_path.decode(),
            ivvy_header_text=ivvy_headers(request.headers),
        )
        sig = signature(self.api_secret, to_sign)
        request.headers["X-Api-Authorization"] = f"IWS {self.api_key}:{sig}"
        yield request


# -- the adapter ----------------------------------------------------------------------------
def _invalid(what: str, exc: ValidationError) -> InvalidPayload:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return InvalidPayload(f"ivvy {what} is invalid: {messages}", fields=messages)


def _specific_code(answer: str | None) -> int | None:
    """iVvy's ``specificCode`` from an error answer (VENDORS.md §3.6), when there is one."""
    try:
        code = json.loads(answer or "").get("specificCode")
        return int(code) if code is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _int_setting(settings: VendorSettings, variable: str) -> int:
    raw = settings.require(variable)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be an iVvy integer id, got {raw!r}") from None


class IvvyAdapter(SchemaTranslation):
    name = "ivvy"
    schema = schema
    synced_fields: frozenset[str] = schema.SYNCED_FIELDS
    #: iVvy stamps to the second (``yyyy-mm-dd HH:mm:ss``, VENDORS.md; its GitBook's
    #: development-reference/timestamp-format): a change it stamps 12:00:00 happened somewhere
    #: in that second.
    time_resolution = 1.0

    def __init__(
        self,
        settings: VendorSettings,
        mapping: Mapping,
        *,
        timeout: float = 10.0,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        self.mapping = mapping
        self.api_key = settings.require("IVVY_API_KEY")
        self.venue_id = _int_setting(settings, "IVVY_VENUE_ID")
        self.type_id = _int_setting(settings, "IVVY_TYPE_ID")
        self.source_id = _int_setting(settings, "IVVY_SOURCE_ID")
        #: Open deals go here when the mapping names no stage (else the first listed stage).
        self.default_stage_id = (
            _int_setting(settings, "IVVY_STAGE_ID") if settings.get("IVVY_STAGE_ID") else None
        )
        self.http = VendorHTTP(
            self.name,
            settings.base_url,
            timeout=timeout,
            auth=IvvyAuth(self.api_key, settings.require("IVVY_API_SECRET")),
            before_request=before_request,
            body_fields=schema.BODY_FIELDS,
        )
        self._stages: list[dict[str, Any]] | None = None
        self._stages_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def call(self, namespace: str, action: str, body: dict[str, Any]) -> Any:
        """One signed RPC call; iVvy's "does not exist" becomes reason ``not_found``."""
        try:
            return self.http.request(
                "POST", f"/api/{API_VERSION}/{namespace}", params={"action": action}, json_body=body
            )
        except Permanent as exc:
            if _specific_code(exc.answer) == NOT_FOUND_CODE:
                exc.reason = "not_found"
            raise

    # -- pure translation ----------------------------------------------------------------
    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        """An SNS ``Notification`` (its ``Message`` is unwrapped) or the inner iVvy message;
        events about another venue of the account are ignored."""
        try:
            message = schema.unwrap_sns(payload)
            event = schema.parse_native(message)
        except ValidationError as exc:
            raise invalid_payload(self.name, "notification", exc) from None
        venue = schema.message_venue(message)
        if event is None or (venue is not None and venue != self.venue_id):
            return None
        return event

    # -- I/O -----------------------------------------------------------------------------
    def stages(self) -> list[dict[str, Any]]:
        """The tenant's lead stages (``crm?action=getLeadStageList``), read once."""
        with self._stages_lock:
            if self._stages is None:
                answer = self.call("crm", "getLeadStageList", {})
                self._stages = list((answer or {}).get("results") or [])
            return self._stages

    def _stage_for(self, opp: Opportunity) -> int:
        stages = [] if schema.mapped_stage_id(opp, self.mapping) is not None else self.stages()
        stage_id = schema.choose_stage(opp, self.mapping, stages, self.default_stage_id)
        if stage_id is None:
            raise Permanent(
                f"ivvy: no lead stage for status {opp.status}: map one in the mapping file or "
                "name a stage with 'won'/'lost'",
                vendor=self.name,
                field="stageId",
                reason="unmapped_stage",
            )
        return stage_id

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        body = schema.to_body(
            opp,
            self.mapping,
            venue_id=self.venue_id,
            key=key,
            stage_id=self._stage_for(opp),
            vendor_id=vendor_id,
            type_id=self.type_id,
            source_id=self.source_id,
        )
        answer = self.call("venue", "addOrUpdateOpportunity", body)
        if not isinstance(answer, dict) or not answer.get("success") or answer.get("id") is None:
            raise Permanent(
                f"ivvy: addOrUpdateOpportunity did not succeed: {answer!r}"[:500],
                vendor=self.name,
                answer=str(answer)[:2000],
                reason="bad_answer",
            )
        return UpsertResult(vendor_id=str(answer["id"]), created=vendor_id is None)

    def _pages(self, filter_: dict[str, Any]) -> Iterator[dict[str, Any]]:
        start = 0
        while True:
            query = {"venueIds": [self.venue_id], "filter": filter_, "start": start,
                     "perPage": PAGE_SIZE}  # fmt: skip
            answer = self.call("crm", "getOpportunityList", query)
            results = list((answer or {}).get("results") or [])
            yield from results
            total = int(((answer or {}).get("meta") or {}).get("totalResults") or 0)
            start += len(results)
            if not results or start >= total:
                return

    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        if not str(vendor_id).isdigit():
            return None  # iVvy ids are integers: nothing else can exist
        return next(self._pages({"id": int(vendor_id)}), None)

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        """Our key is an ``externalUrls`` ref; look by name first, then by creation time
        (a minute early, for clock skew) in case iVvy altered the name."""
        after = schema.format_timestamp(since - timedelta(minutes=1))
        filters = [{"name": opp.name}] if opp.name else []
        filters.append({"createdDate__GREATERTHAN": after})
        for filter_ in filters:
            for record in self._pages(filter_):
                if schema.has_ref(record, key):
                    return schema.record_id(record)
        return None

    def delete(self, vendor_id: str) -> None:
        # No delete action is documented for opportunities (VENDORS.md §3.3-§3.5).
        raise Permanent("iVvy has no delete action", vendor=self.name, reason="unsupported")

    def list_records(self) -> Iterator[dict[str, Any]]:
        return self._pages({})

    def probe(self) -> str:
        query = {"venueIds": [self.venue_id], "start": 0, "perPage": 1}
        answer = self.call("crm", "getOpportunityList", query)
        total = ((answer or {}).get("meta") or {}).get("totalResults", 0)
        return f"iVvy accepted our signed request: venue {self.venue_id} has {total} opportunities."
