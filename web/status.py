"""``/status``: one server-rendered page for operators, and the dead-letter replay button.

Behind basic auth (``OPPSYNC_ADMIN_USER`` / ``OPPSYNC_ADMIN_PASSWORD``); with no credentials
configured the page is off and says so. It shows each vendor's health (last success, error
rate over the last minutes, rate-limit headroom), queue depths, the latest events with
their outcome, and dead letters. Replay is a POST carrying a CSRF token: an HMAC over the
dead letter's id and a timestamp with a key kept in Redis (so every web process accepts
every other's tokens) and mixed with the admin credentials (so changing them voids old
tokens). A browser sends basic auth with any request to this host, a forged cross-site form
included; the token is what such a form cannot know. It replays only the letter whose form
it was rendered in, for ``TOKEN_TTL_SECONDS``; and a POST whose ``Origin`` (else
``Referer``) names another host, or that the browser marks cross-site (``Sec-Fetch-Site``),
is refused whatever its token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from redis.exceptions import RedisError

from web.metrics import QUEUES, admin_authorized, admin_configured, ask_for_credentials
from worker.runtime import Runtime
from worker.store import metrics
from worker.store.deadletters import DeadLetters
from worker.store.keys import STATUS_CSRF_SECRET
from worker.vendorhealth import WINDOW_MINUTES, QuotaReader, read_health

log = structlog.get_logger("oppsync.web")
bp = Blueprint("status", __name__, template_folder="templates")

#: How long a rendered Replay button works: reload the page after that.
TOKEN_TTL_SECONDS = 15 * 60
EVENTS_SHOWN = 50
LETTERS_SHOWN = 100
OFF = (
    "The status page is off: set OPPSYNC_ADMIN_USER and OPPSYNC_ADMIN_PASSWORD "
    "to turn it on (it is served only behind basic auth).\n"
)


def _runtime() -> Runtime:
    return current_app.extensions["oppsync.runtime"]  # type: ignore[no-any-return]


class CsrfTokens:
    """Issue and check the replay forms' tokens: ``<unix time>.<hex HMAC-SHA256>`` over the
    dead letter's id and the time, so a token replays one letter, for a short while."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cached: bytes | None = None

    def _key(self) -> bytes:
        if self._cached is None:
            client = self.rt.redis
            client.set(STATUS_CSRF_SECRET, secrets.token_hex(32), nx=True)
            secret = str(client.get(STATUS_CSRF_SECRET))
            settings = self.rt.settings
            who = f"{settings.admin_user}:{settings.admin_password}".encode()
            self._cached = hmac.new(secret.encode(), who, hashlib.sha256).digest()
        return self._cached

    def _sign(self, letter_id: str, issued: int) -> str:
        message = f"replay|{letter_id}|{issued}".encode()
        return hmac.new(self._key(), message, hashlib.sha256).hexdigest()

    def issue(self, letter_id: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._sign(letter_id, issued)}"

    def valid(self, token: str, letter_id: str, now: float | None = None) -> bool:
        issued_text, _, signature = token.partition(".")
        if not issued_text.isdigit() or not signature:
            return False
        issued = int(issued_text)
        age = (time.time() if now is None else now) - issued
        if age < -60 or age > TOKEN_TTL_SECONDS:
            return False
        expected = self._sign(letter_id, issued)
        return hmac.compare_digest(signature.encode(), expected.encode())


def cross_site() -> bool:
    """Whether the browser says this request comes from another site: ``Sec-Fetch-Site``,
    else an ``Origin`` (``null`` included), else a ``Referer``, naming another host. Hosts
    are compared without the scheme: behind a TLS-terminating router this process sees
    http for what the browser calls https."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if claimed is None:
        return False  # neither sent (an old browser, a privacy setting): the token decides
    return urlsplit(claimed).netloc.lower() != request.host.lower()


def _gate() -> Response | None:
    """Off without credentials configured; 401 without the right ones."""
    settings = _runtime().settings
    if not admin_configured(settings):
        return Response(OFF, status=403, mimetype="text/plain")
    if not admin_authorized(settings):
        return ask_for_credentials()
    return None


def _harden(response: Response, nonce: str = "") -> Response:
    style = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {style}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Same-origin requests carry Origin and Referer (the replay check reads them; under
    # no-referrer a form's POST says "Origin: null"); nothing leaves for other sites.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


@dataclass(frozen=True)
class VendorRow:
    name: str
    last_success: float | None
    last_error: float | None
    last_error_reason: str
    calls: int
    errors: int
    error_rate: float | None
    errors_by_reason: dict[str, int]
    headroom: list[Any]
    dead_letters: int


def _quota_reader() -> QuotaReader:
    reader = current_app.extensions.get("oppsync.quota_reader")
    if reader is None:
        reader = QuotaReader(_runtime().settings, _runtime().redis)
        current_app.extensions["oppsync.quota_reader"] = reader
    return reader  # type: ignore[no-any-return]


def gather(rt: Runtime) -> dict[str, Any]:
    """Everything the page shows, read from Redis now."""
    vendors = rt.settings.vendors
    letters = DeadLetters(rt.redis)
    counts = letters.counts()
    health = read_health(rt.redis, vendors)
    reader = _quota_reader()
    rows = [
        VendorRow(
            name=v,
            last_success=health[v].last_success,
            last_error=health[v].last_error,
            last_error_reason=health[v].last_error_reason,
            calls=health[v].ok + health[v].errors,
            errors=health[v].errors,
            error_rate=health[v].error_rate,
            errors_by_reason=health[v].errors_by_reason,
            headroom=reader.headroom(v),
            dead_letters=counts.get(v, 0),
        )
        for v in vendors
    ]
    _, latency_sum, latency_count = metrics.read_latency(rt.redis)
    return {
        "vendors": rows,
        "queues": metrics.queue_depths(rt.redis, QUEUES),
        "events": rt.store.recent_events(EVENTS_SHOWN),
        "letters": letters.list(limit=LETTERS_SHOWN),
        "letter_total": sum(counts.values()),
        "worker_seen": rt.store.last_heartbeat(),
        "latency_count": latency_count,
        "latency_mean": latency_sum / latency_count if latency_count else None,
        "window_minutes": WINDOW_MINUTES,
    }


def ago(ts: float | None, now: float) -> str:
    """``12 s ago``; ``never`` for no time."""
    if not ts:
        return "never"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else ""


@bp.get("/status")
def page() -> Response:
    denied = _gate()
    if denied is not None:
        return denied
    rt = _runtime()
    now = time.time()
    nonce = secrets.token_urlsafe(16)
    try:
        view = gather(rt)
    except (RedisError, OSError) as exc:
        return _harden(
            Response(
                f"Redis does not answer ({type(exc).__name__}): nothing to show.\n",
                status=503,
                mimetype="text/plain",
            )
        )
    html = render_template(
        "status.html",
        now=now,
        ago=lambda ts: ago(ts, now),
        utc=utc,
        csrf_token=partial(CsrfTokens(rt).issue, now=now),
        nonce=nonce,
        replayed=request.args.get("replayed", ""),
        gone=request.args.get("gone", ""),
        **view,
    )
    return _harden(Response(html, mimetype="text/html"), nonce)


@bp.post("/status/deadletters/<letter_id>/replay")
def replay(letter_id: str) -> Response:
    """Put one dead letter's job back on its queue, then show the page again."""
    denied = _gate()
    if denied is not None:
        return denied
    rt = _runtime()
    token = request.form.get("csrf_token", "")
    foreign = cross_site()
    if foreign or not CsrfTokens(rt).valid(token, letter_id):
        log.warning("status.replay_refused", letter=letter_id, cross_site=foreign)
        return _harden(
            Response(
                "This form is out of date or did not come from the status page: "
                "reload /status and press Replay again.\n",
                status=403,
                mimetype="text/plain",
            )
        )
    from worker.tasks import replay_dead_letter

    letter = replay_dead_letter(letter_id)
    log.info("status.replay", letter=letter_id, found=letter is not None)
    if letter is not None:
        target = url_for("status.page", replayed=letter_id)
    else:
        target = url_for("status.page", gone=letter_id)
    return _harden(redirect(target + "#deadletters", code=303))  # type: ignore[arg-type]
