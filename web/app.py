"""The Flask application factory: receiver, health, metrics and status, on one runtime."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask
from werkzeug.exceptions import HTTPException

from web import health, limits, metrics, openapi, receiver, status
from web.publisher import Publisher
from web.sns import SnsVerifier
from worker.logs import configure as configure_logs
from worker.runtime import Runtime, build_runtime
from worker.settings import Settings, get_settings


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logs(settings.secret_values(), settings.log_level)
    app = Flask("oppsync")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # The web process does no vendor I/O: it needs Redis, not the vendor clients.
    app.extensions["oppsync.runtime"] = runtime or build_runtime(settings, with_adapters=False)
    ivvy = settings.vendor["ivvy"]
    app.extensions["oppsync.publisher"] = Publisher()
    app.extensions["oppsync.sns"] = SnsVerifier(
        topic_arn=ivvy.get("IVVY_SNS_TOPIC_ARN") or None,
        cert_hosts=tuple(
            h.strip()
            for h in (ivvy.get("IVVY_SNS_CERT_HOSTS") or "sns.*.amazonaws.com").split(",")
            if h.strip()
        ),
        ca_bundle=ivvy.get("IVVY_SNS_CA_BUNDLE"),
    )
    app.register_blueprint(receiver.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(openapi.bp)

    @app.before_request
    def fresh_log_context() -> None:
        # Server threads are reused: without this, one request's correlation id would be
        # logged with the next request handled by the same thread. Registered before the
        # limiter's own before-request check, so its 429 lines carry no stale id either.
        structlog.contextvars.clear_contextvars()

    limits.install(app, settings)

    @app.errorhandler(HTTPException)
    def http_problem(exc: HTTPException) -> Any:
        # Every error body is JSON with a human sentence (413 from MAX_CONTENT_LENGTH too).
        reason = (exc.name or "error").lower().replace(" ", "_")
        # Keep the headers the error carries (405's Allow, for one).
        carried = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return receiver.problem(exc.code or 500, exc.description or exc.name, reason, carried)

    return app
