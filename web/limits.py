"""Ingress rate limits on the webhook routes: per client and vendor, and per vendor overall.

The limits count in the same Redis as everything else, so every web process shares one
count. ``OPPSYNC_INGRESS_RATE_LIMIT`` (default ``300/second``) bounds one client address on
one vendor route; ``OPPSYNC_INGRESS_VENDOR_RATE_LIMIT`` (default ``3000/second``) bounds a
vendor route over all clients. Over either, the answer is 429 with a JSON sentence and
``Retry-After`` — which HighLevel treats as "deliver again later", as the others do.

Each limit is a fixed window (the ``limits`` library's notation and strategy), parsed once
per process (``IngressLimits``). A delivery's windows are counted by the same Redis script
that queues it (``Deliveries.admit``): one round trip per delivery; any other answer of a
webhook route counts them on their own first. A window found over its limit is remembered
by the process until it ends, so a client flooding past its limit is answered 429 before
its body is verified and without a round trip.

When Redis cannot be reached the limits fail open: the request goes on, and the receiver
answers 503 (429 for HighLevel) itself because it cannot queue either. Behind a PaaS
router the client address is the router's, so ``OPPSYNC_TRUSTED_PROXIES`` says how many
``X-Forwarded-For`` hops to believe (Heroku: 1).

Basic auth on ``/status`` and ``/metrics`` is limited with flask-limiter: only failed
attempts (answers 401) count, per client address, up to ``OPPSYNC_ADMIN_AUTH_RATE_LIMIT``
(default ``10/minute``); past it every request from that client, the right password
included, is answered 429 with ``Retry-After`` until the window ends, so guessing the
password costs a minute per ten guesses. Signed-in requests never count.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import structlog
from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem, parse_many
from werkzeug.middleware.proxy_fix import ProxyFix

from schemas.mapping import VENDORS
from web import metrics, receiver, status
from worker.settings import Settings
from worker.store.deliveries import Admission, Window
from worker.store.keys import INGRESS_LIMITER_PREFIX, ingress_window_key

log = structlog.get_logger("oppsync.web")
#: Strategy of the ``limits`` library for the sign-in limit.
# Fixed windows, as the ingress limits: one Lua call per limit and request (the sliding
# counter took eight Redis commands per limit per webhook in the benchmark).
STRATEGY = "fixed-window"
#: Windows over their limit this process remembers at most (a flood from many addresses
#: must not grow memory); past it, breaches are still answered, from Redis.
REMEMBERED_BREACHES = 4096


def _vendor() -> str:
    # Only known vendors get their own counters: a flood of made-up names must not mint
    # new Redis keys (limiter windows, metrics) per name.
    vendor = (request.view_args or {}).get("vendor")
    return vendor if vendor in VENDORS else "unknown"


def client_and_vendor() -> str:
    """The per-client key: the sender's address on one vendor route."""
    return f"client:{request.remote_addr or '-'}:{_vendor()}"


def vendor_only() -> str:
    """The per-vendor key: one vendor route, whoever sends."""
    return f"vendor:{_vendor()}"


def client_signing_in() -> str:
    """The admin-auth key: the client's address, whatever page it tries."""
    return f"admin:{request.remote_addr or '-'}"


def refused_credentials(response: Response) -> bool:
    """Only an answer asking for credentials again counts against the admin-auth limit."""
    return response.status_code == 401


class IngressLimits:
    """The webhook routes' limits, parsed once: each request's windows, and the windows this
    process saw over their limit, until they end."""

    def __init__(self, settings: Settings) -> None:
        self.per_client = parse_many(settings.ingress_rate_limit)
        self.per_vendor = parse_many(settings.ingress_vendor_rate_limit)
        self._lock = threading.Lock()
        self._breached: dict[str, float] = {}  # window key -> time.monotonic() it ends

    def windows(self) -> tuple[Window, ...]:
        """This request's windows: its client on its vendor route, then the route."""
        return self._windows(client_and_vendor(), vendor_only())

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one instance per app, kept for good
    def _windows(self, client: str, vendor: str) -> tuple[Window, ...]:
        return (
            *(_window(client, item) for item in self.per_client),
            *(_window(vendor, item) for item in self.per_vendor),
        )

    def items(self) -> list[RateLimitItem]:
        """The limits in the order of ``windows``."""
        return [*self.per_client, *self.per_vendor]

    def known_breach(self, windows: Sequence[Window]) -> dict[int, float]:
        """The windows of ``windows`` this process saw breached and that have not ended:
        position -> seconds left (empty for none)."""
        if not self._breached:  # the common case: no lookup, no clock
            return {}
        now = time.monotonic()
        left = {n: self._breached.get(w.key, now) - now for n, w in enumerate(windows)}
        return {n: seconds for n, seconds in left.items() if seconds > 0}

    def remember(self, windows: Sequence[Window], admission: Admission) -> None:
        """Keep the windows ``admission`` found breached until they end."""
        if not admission.breached:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._breached) >= REMEMBERED_BREACHES:
                self._breached = {k: end for k, end in self._breached.items() if end > now}
            for position, seconds in admission.breached.items():
                if len(self._breached) < REMEMBERED_BREACHES:
                    self._breached[windows[position].key] = now + seconds

    def refusal(self, breached: dict[int, float]) -> Response:
        """429 in the receiver's JSON shape, with ``Retry-After`` for the last breached
        window to end (whole seconds, at least 1, never more than that window)."""
        items = self.items()
        position = max(breached, key=lambda p: breached[p])
        item = items[position]
        wait = max(1, min(item.get_expiry(), math.ceil(breached[position])))
        log.info("webhook.rejected", vendor=_vendor(), reason="rate_limited", limit=str(item))
        return receiver.problem(
            429,
            f"Too many requests to {request.path} ({item}); retry later.",
            "rate_limited",
            {"Retry-After": str(wait)},
        )


def _window(who: str, item: RateLimitItem) -> Window:
    seconds = item.get_expiry()
    return Window(ingress_window_key(who, item.amount, seconds), item.amount, seconds)


def install(app: Flask, settings: Settings) -> Limiter:
    """Limit ``POST /webhooks/<vendor>`` (``IngressLimits``, applied by the receiver) and
    failed sign-ins to ``/status`` and ``/metrics``; health and the OpenAPI page stay free."""
    if settings.trusted_proxies > 0:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.extensions["oppsync.ingress_limits"] = IngressLimits(settings)
    limiter = Limiter(
        client_signing_in,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        strategy=STRATEGY,
        key_prefix=INGRESS_LIMITER_PREFIX,
        swallow_errors=True,  # fail open: Redis down is the pages' to answer
        headers_enabled=False,  # Retry-After is set on a breach only (one Redis call less)
    )
    sign_ins = limiter.shared_limit(  # one count per client across both pages
        settings.admin_auth_rate_limit,
        scope="admin-auth",
        key_func=client_signing_in,
        deduct_when=refused_credentials,
    )
    sign_ins(status.bp)
    sign_ins(metrics.bp)
    hooks = cast(
        tuple[dict[str | None, list[Any]], ...],
        (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs),
    )
    before = [list(registry.get(None, ())) for registry in hooks]
    limiter.init_app(app)
    # flask-limiter hooks every request of the app and works out which limits apply each
    # time: a sixth of a webhook's CPU, measured. Its hooks run on the two pages it limits.
    for registry, had in zip(hooks, before, strict=True):
        added = [hook for hook in registry.get(None, []) if hook not in had]
        registry[None] = had
        for page in (status.bp.name, metrics.bp.name):
            registry.setdefault(page, []).extend(added)
    app.extensions["oppsync.limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, too_many_requests)
    return limiter


def retry_after_seconds(limiter: Limiter) -> int:
    """Whole seconds until the breached window frees a slot (at least 1)."""
    breached = limiter.current_limit
    if breached is None:
        return 1
    try:
        reset_at = breached.reset_at
    except Exception:  # noqa: BLE001 - the storage failed between the breach and now
        return 1
    # reset_at is rounded up to the next second: never ask for more than one window.
    return max(1, min(breached.limit.get_expiry(), math.ceil(reset_at - time.time())))


def too_many_requests(exc: RateLimitExceeded) -> Response:
    """429 in the receiver's JSON shape, with ``Retry-After``."""
    limiter: Limiter = current_app.extensions["oppsync.limiter"]
    return receiver.problem(
        429,
        f"Too many requests to {request.path} ({exc.limit.limit}); retry later.",
        "rate_limited",
        {"Retry-After": str(retry_after_seconds(limiter))},
    )
