"""What every vendor simulator shares: a real HTTP server on loopback, state, faults, a log.

A simulator is a Flask app served by werkzeug in a daemon thread on 127.0.0.1 (port chosen by
the OS), or with ``serve(keep_alive=True)`` by waitress: HTTP/1.1 connections kept alive as a
real vendor keeps them, on a fixed pool of threads (the benchmark's simulators; werkzeug's
server closes every connection and starts a thread for each). Faults ``lost_response`` and
``reset`` drop the connection through werkzeug's socket, so they need werkzeug.

Tests reach its state directly (``sim.records``) and switch faults on with
``sim.faults.add(...)``; every request is logged in ``sim.log`` so tests can count creates,
and ``sim.held`` counts the requests it is still handling (a held one may yet commit).

How a vendor answers is switchable too (issue 16): ``sim.omit`` names record keys left out
of every record it answers or announces, and ``sim.variants`` (a seeded ``Variants``)
makes each answer pick among the forms the vendor's page allows or leaves open. Both shape
answers only: ``sim.records`` stays the vendor's own state, so tests read what it holds.
Fault kinds are listed in ``faults.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

import httpx
from flask import Flask, Response, request
from standardwebhooks import Webhook
from werkzeug.serving import BaseWSGIServer, make_server

from worker.sandbox.simulators.faults import FaultPlan, drop_connection, trickled
from worker.sandbox.simulators.variants import Variants


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    body: Any
    status: int
    at: float
    #: Held past the client's timeout before it was handled (a late commit): the client saw
    #: no answer, and writes again once that write can no longer commit.
    late: bool = False


class SlidingWindow:
    """The vendor's own quota: at most ``limit`` requests in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until a slot frees)."""
        now = time.monotonic()
        with self._lock:
            while self._hits and now - self._hits[0] >= self.window:
                self._hits.popleft()
            if len(self._hits) >= self.limit:
                return False, 0, self.window - (now - self._hits[0])
            self._hits.append(now)
            return True, self.limit - len(self._hits), 0.0


class KeepAliveServer:
    """A WSGI app served by waitress on 127.0.0.1: HTTP/1.1 keep-alive, a fixed thread pool.

    ``threads`` bounds the requests handled at once (each sleeps the simulated latency);
    idle connections are kept ``channel_timeout`` seconds, longer than a client keeps them
    (httpx: 5 s), so a client never reuses one the server is closing. The ``waitress``
    logger is quieted: it warns whenever requests wait for a thread.
    """

    def __init__(self, app: Any, *, threads: int) -> None:
        from waitress.server import create_server

        logging.getLogger("waitress").setLevel(logging.ERROR)
        self._map: dict[int, Any] = {}
        self._server = create_server(
            app,
            map=self._map,
            host="127.0.0.1",
            port=0,
            threads=threads,
            connection_limit=1000,  # waitress' default (100) is below what clients pool
            backlog=1024,
            channel_timeout=120,
            asyncore_use_poll=True,  # select() stops at 1024 file descriptors
        )
        self.server_port: int = self._server.effective_port
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self._thread = threading.current_thread()
        self._server.run()  # until every socket of the map is closed

    def shutdown(self) -> None:
        self._server.close()  # no new connection
        self._server.task_dispatcher.shutdown(timeout=5)  # requests under way finish
        for channel in list(self._map.values()):  # kept-alive connections
            channel.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def sign_standard_webhook(secret: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Headers for a Standard Webhooks delivery of ``body`` signed with ``secret`` (whsec_…)."""
    msg_id = msg_id or f"msg_{time.time_ns()}"
    timestamp = time.time()
    from datetime import UTC, datetime

    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


class Simulator:
    """Base of every vendor fake. Subclasses register routes in ``routes()``."""

    name = "vendor"
    #: Where this vendor's writes go: a path fragment and the methods (faults aimed at
    #: writes, and the ``late_commit`` variant, match on these).
    writes: tuple[str, tuple[str, ...]] = ("", ())

    def __init__(self, *, latency: float = 0.0, rate_limit: tuple[int, float] | None = None):
        self.latency = latency
        self.records: dict[str, dict[str, Any]] = {}
        self.state_lock = threading.RLock()
        self.faults = FaultPlan()
        self.log: list[LoggedRequest] = []
        self.quota = SlidingWindow(*rate_limit) if rate_limit else None
        self.rate_limited = 0
        self._held = 0
        self._held_lock = threading.Lock()
        #: Where this vendor sends its webhooks (None: it sends none).
        self.webhook_url: str | None = None
        #: Standard Webhooks secret used when the vendor is wired through its automation.
        self.webhook_secret: str | None = None
        #: "fat" sends the record, "thin" only {"id": …} (Standard Webhooks deliveries).
        self.webhook_mode = "fat"
        self.webhook_answers: list[int] = []
        #: Record keys left out of every record answered or announced (absent, not null).
        self.omit: set[str] = set()
        #: Seeded answer forms (None: the plain form every time).
        self.variants: Variants | None = None
        #: Each record as our last API write left it (``as_written``).
        self._written: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._server: BaseWSGIServer | KeepAliveServer | None = None
        self._emitter = httpx.Client(timeout=10.0)
        self.app = Flask(f"sim-{self.name}")
        self.app.before_request(self._before)
        self.app.after_request(self._after)
        self.app.teardown_request(self._done)
        self.routes()

    # -- to be provided by each vendor ---------------------------------------------------
    def routes(self) -> None:
        raise NotImplementedError

    def check_auth(self) -> Response | None:
        """Return an error response when the request is not authenticated as the vendor
        requires, else None."""
        return None

    def quota_exceeded(self, retry_in: float) -> Response:
        return self.json_response(
            {"message": "Too Many Requests"}, 429, {"Retry-After": str(max(1, round(retry_in)))}
        )

    # -- serving -------------------------------------------------------------------------
    def start(self) -> Self:
        """Serve on loopback by werkzeug (a thread and a connection per request)."""
        return self.serve()

    def serve(self, *, keep_alive: bool = False, threads: int = 64) -> Self:
        """Serve on loopback: by werkzeug as ``start``, or with ``keep_alive`` by waitress
        (connections reused, ``threads`` handling requests)."""
        if keep_alive:
            self._server = KeepAliveServer(self.app, threads=threads)
        else:
            self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(
            target=self._server.serve_forever, name=f"sim-{self.name}", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._emitter.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "simulator not started"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def held(self) -> int:
        """Requests received and not yet answered (a held create may still commit)."""
        with self._held_lock:
            return self._held

    # -- helpers for subclasses -----------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    @staticmethod
    def json_response(
        data: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            json.dumps(data), status=status, headers=headers or {}, mimetype="application/json"
        )

    # -- how records are answered ----------------------------------------------------------
    def vary(self, record: dict[str, Any], variants: Variants) -> dict[str, Any]:
        """The record in forms this vendor's page allows (each simulator says which)."""
        return record

    def shown(self, record: dict[str, Any]) -> dict[str, Any]:
        """A stored record as this vendor answers it: a copy, ``omit`` keys left out, then
        in the forms ``variants`` picks for this answer."""
        answer = copy.deepcopy(record)
        for key in self.omit:
            answer.pop(key, None)
        if self.variants is not None:
            answer = self.vary(answer, self.variants)
        return answer

    def wrote(self, vendor_id: object) -> None:
        """Remember the record as an API write (oppsync's) just left it."""
        with self.state_lock:
            record = self.records.get(str(vendor_id))
            if record is not None:
                self._written[str(vendor_id)] = copy.deepcopy(record)

    def as_written(self, record: dict[str, Any], key: str, id_key: str = "id") -> bool:
        """Whether ``record[key]`` is still what our last API write left there (no person
        has changed it since): leaving it out or garbling it tells oppsync nothing new."""
        with self.state_lock:
            written = self._written.get(str(record.get(id_key)))
            return written is not None and key in written and written[key] == record.get(key)

    def omit_written(
        self, record: dict[str, Any], variants: Variants, keys: Iterable[str], id_key: str = "id"
    ) -> dict[str, Any]:
        """Leave out (sometimes) synced keys whose value is still what we wrote."""
        for key in keys:
            written = key in record and self.as_written(record, key, id_key)
            if written and variants.chance("omit_written", 0.3):
                del record[key]
        return record

    def unknown_enum(
        self,
        record: dict[str, Any],
        variants: Variants,
        changes: dict[str, Any],
        id_key: str = "id",
    ) -> dict[str, Any]:
        """Sometimes a value the mapping does not know (``changes``: key -> that value; the
        first key decides), only while the key still holds what we wrote."""
        first = next(iter(changes))
        if self.as_written(record, first, id_key) and variants.chance("unknown_enums", 0.2):
            record.update(changes)
        return record

    def requests_to(self, method: str, path_contains: str) -> list[LoggedRequest]:
        return [r for r in self.log if r.method == method and path_contains in r.path]

    def reset(self) -> None:
        with self.state_lock:
            self.records.clear()
            self._written.clear()
            self.omit.clear()
            self.log.clear()
            self.faults.clear()
            self.webhook_answers.clear()
            self.rate_limited = 0

    # -- webhooks ------------------------------------------------------------------------
    def send_webhook(self, body: bytes, headers: dict[str, str]) -> int:
        """Deliver one webhook now (synchronously); returns the receiver's status code."""
        assert self.webhook_url, "no webhook_url set"
        answer = self._emitter.post(self.webhook_url, content=body, headers=headers)
        self.webhook_answers.append(answer.status_code)
        return answer.status_code

    def send_standard_webhook(self, payload: dict[str, Any]) -> int:
        """A Standard Webhooks delivery, as a vendor's automation tool would send it."""
        assert self.webhook_secret, "no webhook_secret set"
        body = json.dumps(payload).encode()
        return self.send_webhook(body, sign_standard_webhook(self.webhook_secret, body))

    def emit_async(self, emit: Callable[[], Any]) -> None:
        """Send a webhook after the current response, as vendors do."""
        if self.webhook_url:
            threading.Timer(0.05, emit).start()

    # -- request hooks -------------------------------------------------------------------
    def _before(self) -> Response | None:
        with self._held_lock:
            self._held += 1
        request.environ["sim.held"] = True
        if self.latency:
            time.sleep(self.latency)
        denied = self.check_auth()
        if denied is not None:
            return denied
        if self.quota is not None:
            allowed, _remaining, retry_in = self.quota.allow()
            if not allowed:
                self.rate_limited += 1
                return self.quota_exceeded(retry_in)
        fault = self.faults.take(request.method, request.full_path)
        if fault is None:
            if self._late_variant():
                request.environ["sim.late"] = True
                time.sleep(self.variants.late_commit_delay)  # type: ignore[union-attr]
            return None
        request.environ["sim.fault"] = fault
        if fault.kind == "error":
            headers = dict(fault.headers)
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return self.json_response(
                {"message": f"simulated {fault.status}"}, fault.status, headers
            )
        if fault.kind in ("timeout", "late_commit"):
            request.environ["sim.late"] = fault.kind == "late_commit"
            time.sleep(fault.delay)
        if fault.kind == "reset":
            drop_connection()
            return Response(status=599)
        return None

    def _late_variant(self) -> bool:
        """Whether this write (a create or an update; SIRO's upsert by our key too) is held
        past the client's timeout, then committed: a vendor may always be that slow."""
        path, methods = self.writes
        return (
            self.variants is not None
            and request.method in methods
            and path in request.full_path
            and self.variants.chance("late_commit", self.variants.late_commit_share)
        )

    def _after(self, response: Response) -> Response:
        fault = request.environ.get("sim.fault")
        body = request.get_json(silent=True)
        self.log.append(
            LoggedRequest(
                request.method,
                request.path,
                request.query_string.decode(),
                body,
                response.status_code,
                time.time(),
                late=bool(request.environ.get("sim.late")),
            )
        )
        if fault is not None and fault.kind == "lost_response":
            drop_connection()
        if fault is not None and fault.kind == "trickle":
            response.response = trickled(response.get_data(), fault.delay)
        return response

    def _done(self, _error: BaseException | None) -> None:
        """The request is handled (answered, dropped or failed): no longer held."""
        if request.environ.pop("sim.held", False):
            with self._held_lock:
                self._held -= 1
