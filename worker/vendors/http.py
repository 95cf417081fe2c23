"""One pooled httpx client per vendor per process, and the mapping of HTTP failures to errors.

Explicit timeouts, and a deadline for the whole call (``worker/vendors/deadline.py``: a vendor
trickling its answer cannot hold a thread past it), no redirects (a vendor host comes only
from configuration), no retries inside the client: the worker owns retries.
``VendorHTTP.request`` returns parsed JSON or raises from ``worker.errors``:

* connect failure / connect timeout (nothing was sent)       -> ``Transient``
* read timeout, reset, protocol error (request was sent)    -> ``OutcomeUnknown``
* 429                                                       -> ``RateLimited`` (``retry_after``
  from ``Retry-After`` or HighLevel's ``X-RateLimit-Interval-Milliseconds``)
* 5xx                                                       -> ``OutcomeUnknown``
* 401 / 403                                                 -> ``Permanent`` (reason ``auth``)
* 3xx (redirects are never followed)                        -> ``Permanent`` (``redirect``)
* other 4xx                                                 -> ``Permanent`` with the answer
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker.errors import InvalidPayload, OutcomeUnknown, Permanent, RateLimited, Transient
from worker.vendors.deadline import DeadlineTransport, within_deadline

#: Longest vendor answer kept on an error (and so in a dead letter).
ANSWER_LIMIT = 2000
#: One URL path segment an id may fill: unreserved characters only (RFC 3986 §2.3, so
#: nothing to percent-encode), starting with a letter or digit, so never ``.`` or ``..``
#: (which httpx, like browsers, resolves to the collection or the path above it).
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")


def connect_seconds(timeout: float) -> float:
    """How long a vendor call may take to connect: the timeout, at most 5 s."""
    return min(timeout, 5.0)


def call_seconds(timeout: float) -> float:
    """The longest one vendor call may take, connecting included: its deadline."""
    return connect_seconds(timeout) + timeout


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds the vendor asks us to wait: ``Retry-After`` (seconds or date), else the
    HighLevel rate-limit window (VENDORS.md §2.6: no Retry-After is documented there)."""
    raw = response.headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = parsedate_to_datetime(raw)
                date_header = response.headers.get("date")
                now = parsedate_to_datetime(date_header) if date_header else None
                if now is not None:
                    return max(0.0, (when - now).total_seconds())
            except (TypeError, ValueError):
                pass
    interval = response.headers.get("x-ratelimit-interval-milliseconds")
    if interval and response.headers.get("x-ratelimit-remaining") in ("0", None):
        try:
            return float(interval) / 1000.0
        except ValueError:
            return None
    return None


def _field_in(answer: str, known_fields: tuple[str, ...]) -> str | None:
    """The first known field name that a vendor's error text mentions."""
    for name in known_fields:
        if re.search(rf"\b{re.escape(name)}\b", answer):
            return name
    return None


class VendorHTTP:
    """A vendor's HTTP client; ``before_request`` is where the shared rate limiter waits."""

    def __init__(
        self,
        vendor: str,
        base_url: str,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        before_request: Callable[[], None] | None = None,
        body_fields: tuple[str, ...] = (),
    ) -> None:
        self.vendor = vendor
        self.before_request = before_request
        self.body_fields = body_fields
        #: The longest one call may take, connecting included (its auth flow's sign-in too).
        self.call_seconds = call_seconds(timeout)
        self.client = httpx.Client(
            base_url=base_url,
            headers=headers or {},
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=connect_seconds(timeout)),
            follow_redirects=False,
            # As many kept-alive connections as pushes can run at once (OPPSYNC_PUSH_THREADS'
            # default): more in flight than are kept means connections closed and reopened.
            transport=DeadlineTransport(
                httpx.Limits(max_connections=64, max_keepalive_connections=64)
            ),
        )

    def close(self) -> None:
        self.client.close()

    def record_path(self, collection: str, vendor_id: str) -> str:
        """``{collection}/{vendor_id}``, the one way an adapter puts an id in a URL: an id that
        is not exactly one safe path segment is refused before any request is made."""
        if not isinstance(vendor_id, str) or not SAFE_SEGMENT.fullmatch(vendor_id):
            shown = str(vendor_id)[:40].encode("unicode_escape").decode("ascii")
            raise InvalidPayload(
                f"{self.vendor}: {shown!r} is not an id that fits one URL path segment",
                fields={"id": ["not one safe path segment"]},
                reason="bad_id",
            )
        return f"{collection}/{vendor_id}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        allow_404: bool = False,
    ) -> Any:
        """Send one request; the parsed JSON answer (``None`` for an allowed 404 or empty)."""
        if self.before_request is not None:
            self.before_request()
        kwargs: dict[str, Any] = {"params": params}
        if content is not None:
            kwargs["content"] = content
        elif json_body is not None:
            kwargs["content"] = json.dumps(json_body, separators=(",", ":")).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            with within_deadline(self.call_seconds):
                response = self.client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Transient(
                f"{self.vendor}: could not connect ({type(exc).__name__})",
                vendor=self.vendor,
                reason="connect",
            ) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise OutcomeUnknown(
                f"{self.vendor}: no answer after the request was sent ({type(exc).__name__})",
                vendor=self.vendor,
                reason="no_answer",
            ) from None
        return self._answer(method, path, response, allow_404=allow_404)

    def _answer(self, method: str, path: str, response: httpx.Response, *, allow_404: bool) -> Any:
        status = response.status_code
        answer = response.text[:ANSWER_LIMIT]
        where = f"{self.vendor} {method} {path.split('?')[0]}"
        if status == 404 and allow_404:
            return None
        if status == 429:
            raise RateLimited(
                f"{where}: rate limited",
                vendor=self.vendor,
                status=status,
                answer=answer,
                retry_after=retry_after_seconds(response),
            )
        if status >= 500:
            raise OutcomeUnknown(
                f"{where}: vendor error {status}",
                vendor=self.vendor,
                status=status,
                answer=answer,
                retry_after=retry_after_seconds(response),
                reason=f"http_{status}",
            )
        if status in (401, 403):
            raise Permanent(
                f"{where}: credentials refused ({status})",
                vendor=self.vendor,
                status=status,
                answer=answer,
                reason="auth",
            )
        if 300 <= status < 400:
            # Never followed (the host comes only from configuration), never read as data.
            raise Permanent(
                f"{where}: answered {status} (redirect not followed)",
                vendor=self.vendor,
                status=status,
                answer=answer,
                reason="redirect",
            )
        if status >= 400:
            field = _field_in(answer, self.body_fields)
            detail = f" (field {field!r})" if field else ""
            raise Permanent(
                f"{where}: refused with {status}{detail}: {answer[:300]}",
                vendor=self.vendor,
                status=status,
                answer=answer,
                field=field,
                reason=f"http_{status}",
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise Permanent(
                f"{where}: answer is not JSON",
                vendor=self.vendor,
                status=status,
                answer=answer,
                reason="bad_answer",
            ) from None
