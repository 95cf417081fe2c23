"""gunicorn's own access and error lines as oppsync's JSON log lines, redacted like the rest.

The Procfile's ``web`` line names ``--logger-class web.serverlog.JsonLogger``. gunicorn's
default logger writes plain text with the whole request line (query strings carry
``?api_key=…`` as often as not), the user agent, the referer and the basic-auth user name
(where an operator who types the admin password in the wrong box leaves it). This one sends
gunicorn's error lines through the handler ``worker.logs.configure`` installs (JSON, configured
secrets replaced by ``[secret]``) and writes one access line per answer with the method, the
path without its query string, the status, the bytes sent, the duration, the client
address and the event's correlation id when one was queued: nothing a sender chose to put
in a header.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import structlog
from gunicorn.glogging import Logger

from worker.errors import ConfigError
from worker.logs import configure as configure_logs
from worker.settings import get_settings

access_log = structlog.get_logger("gunicorn.access")


def without_query(target: str) -> str:
    """A request target without its query string (``/status?password=x`` -> ``/status``)."""
    return target.split("?", 1)[0]


class QueryStripper(logging.Filter):
    """Cuts the query string off request targets in gunicorn's error lines (``Error handling
    request /x?api_key=…``): any string argument that starts with ``/``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                without_query(a) if isinstance(a, str) and a.startswith("/") else a
                for a in record.args
            )
        return True


class JsonLogger(Logger):
    """gunicorn's logger class: its lines through oppsync's JSON, redacting handler."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        try:
            settings = get_settings()
            secrets, level = settings.secret_values(), settings.log_level
        except ConfigError:
            # The app will refuse to start and say which variable is missing; until then
            # there is no secret configured to redact.
            secrets, level = [], "INFO"
        configure_logs(secrets, level)
        # The root handler is the JSON one: gunicorn's loggers hand their records to it.
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        if not any(isinstance(f, QueryStripper) for f in self.error_log.filters):
            self.error_log.addFilter(QueryStripper())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        seconds = (
            request_time.total_seconds()
            if isinstance(request_time, timedelta)
            else float(request_time)
        )
        access_log.info(
            "http.access",
            method=environ.get("REQUEST_METHOD", "-"),
            path=without_query(environ.get("PATH_INFO") or "-"),
            status=getattr(resp, "status_code", None) or str(getattr(resp, "status", "-")),
            bytes=getattr(resp, "sent", None),
            ms=round(seconds * 1000, 1),
            client=environ.get("REMOTE_ADDR", "-"),
        )
        # The line carries the request's correlation id, if it got one; the next request on
        # this connection (same greenlet) must not.
        structlog.contextvars.clear_contextvars()
