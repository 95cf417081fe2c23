"""Structured JSON logs with a correlation id per event, and secrets and personal data redacted.

Every log line is one JSON object (structlog). The receiver binds a ``correlation_id`` to each
event; tasks bind it again from the envelope, so one id follows an event through every task.
Configured secrets and tokens are replaced by ``[secret]``, emails and phone numbers by
``[email]`` / ``[phone]``, wherever they appear in a line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
# International numbers (+…); bare digit runs are ids and dates more often than phones.
PHONE = re.compile(r"\+\d[\d ()-]{6,}\d")
# Credentials we were not configured with but may meet: a vendor's session token (iCloudReady
# signs us in), or an ``Authorization`` value echoed in an error answer.
BEARER = re.compile(r"(?i)\b(bearer|IWS)\s+[A-Za-z0-9._~+/=:-]{8,}")


class Redactor:
    """A structlog processor that scrubs every string value of an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        # Each pattern needs a word or character most values lack (ids, levels, times): three
        # regex scans per value were most of a log line's CPU, a share of every webhook's.
        lowered = text.lower()
        if "bearer" in lowered or "iws" in lowered:
            text = BEARER.sub(r"\1 [secret]", text)
        if "@" in text:
            text = EMAIL.sub("[email]", text)
        return PHONE.sub("[phone]", text) if "+" in text else text

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        return {k: self._clean(v) for k, v in event.items()}


def configure(secrets: Iterable[str], level: str = "INFO") -> None:
    """JSON logs on stderr for structlog and the standard library (Celery, gunicorn)."""
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # One write per line: PrintLogger's print() writes the line and its newline apart,
        # and a Celery or gunicorn line written between them (the standard library's handler
        # has its own lock) joined two JSON objects on one line: hundreds per bench run.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: one line per vendor call repeats our own push lines
    # and cost measurable CPU per event (bench); its warnings and errors still show.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


log = structlog.get_logger("oppsync")
