"""Ingress rate limits on the webhook routes: per client and vendor, and per vendor overall.

flask-limiter counts in the same Redis as everything else, so every web process shares one
count. ``OPPSYNC_INGRESS_RATE_LIMIT`` (default ``300/second``) bounds one client address on
one vendor route; ``OPPSYNC_INGRESS_VENDOR_RATE_LIMIT`` (default ``3000/second``) bounds a
vendor route over all clients. Over either, the answer is 429 with a JSON sentence and
``Retry-After`` — which HighLevel treats as "deliver again later", as the others do.

When Redis cannot be reached the limiter fails open (``swallow_errors``): the request goes
on, and the receiver answers 503 (429 for HighLevel) itself because it cannot queue either.
Behind a PaaS router the client address is the router's, so ``OPPSYNC_TRUSTED_PROXIES``
says how many ``X-Forwarded-For`` hops to believe (Heroku: 1).

Basic auth on ``/status`` and ``/metrics`` is limited the same way: only failed attempts
(answers 401) count, per client address, up to ``OPPSYNC_ADMIN_AUTH_RATE_LIMIT`` (default
``10/minute``); past it every request from that client, the right password included, is
answered 429 with ``Retry-After`` until the window ends, so guessing the password costs a
minute per ten guesses. Signed-in requests never count.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from werkzeug.middleware.proxy_fix import ProxyFix

from schemas.mapping import VENDORS
from web import metrics, receiver, status
from worker.settings import Settings
from worker.store.keys import INGRESS_LIMITER_PREFIX

#: Strategy of the ``limits`` library: one Lua call per hit, no burst at window edges.
# Fixed one-second windows: one Lua call per limit and request (the sliding counter took
# eight Redis commands per limit per webhook in the benchmark); burst protection per second
# is what an ingress limit is for.
STRATEGY = "fixed-window"


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


def install(app: Flask, settings: Settings) -> Limiter:
    """Limit ``POST /webhooks/<vendor>`` and failed sign-ins to ``/status`` and ``/metrics``
    on ``app``; health and the OpenAPI page stay free."""
    if settings.trusted_proxies > 0:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    limiter = Limiter(
        client_and_vendor,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        strategy=STRATEGY,
        key_prefix=INGRESS_LIMITER_PREFIX,
        swallow_errors=True,  # fail open: a Redis outage is the receiver's to answer
        headers_enabled=False,  # Retry-After is set on a breach only (one Redis call less)
    )
    limiter.limit(settings.ingress_rate_limit, key_func=client_and_vendor)(receiver.bp)
    limiter.limit(settings.ingress_vendor_rate_limit, key_func=vendor_only)(receiver.bp)
    sign_ins = limiter.shared_limit(  # one count per client across both pages
        settings.admin_auth_rate_limit,
        scope="admin-auth",
        key_func=client_signing_in,
        deduct_when=refused_credentials,
    )
    sign_ins(status.bp)
    sign_ins(metrics.bp)
    limiter.init_app(app)
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
    """429 in the receiver's JSON shape, with ``Retry-After``; on webhook routes counted like
    their other outcomes."""
    limiter: Limiter = current_app.extensions["oppsync.limiter"]
    if request.blueprint == receiver.bp.name:
        runtime = current_app.extensions["oppsync.runtime"]
        receiver.metrics_safe(runtime.redis, _vendor(), "rate_limited")
    return receiver.problem(
        429,
        f"Too many requests to {request.path} ({exc.limit.limit}); retry later.",
        "rate_limited",
        {"Retry-After": str(retry_after_seconds(limiter))},
    )
