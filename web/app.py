"""The Flask application factory: receiver, health, metrics and status, on one runtime."""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from web import health, receiver
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
    app.extensions["oppsync.sns"] = SnsVerifier(
        topic_arn=ivvy.get("IVVY_SNS_TOPIC_ARN"),
        cert_hosts=tuple(
            h.strip()
            for h in (ivvy.get("IVVY_SNS_CERT_HOSTS") or "sns.*.amazonaws.com").split(",")
            if h.strip()
        ),
    )
    app.register_blueprint(receiver.bp)
    app.register_blueprint(health.bp)

    @app.errorhandler(HTTPException)
    def http_problem(exc: HTTPException) -> Any:
        # Every error body is JSON with a human sentence (413 from MAX_CONTENT_LENGTH too).
        reason = (exc.name or "error").lower().replace(" ", "_")
        return receiver.problem(exc.code or 500, exc.description or exc.name, reason)

    return app
