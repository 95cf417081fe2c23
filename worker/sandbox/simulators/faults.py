"""Faults a simulator injects on request, each firing a set number of times.

``drop_connection`` and ``trickled`` are how the faults acting on the connection act.

Fault kinds (``Fault.kind``):

* ``"error"``          answer ``status`` (e.g. 500, 503, 429 with ``retry_after``) without
                       touching state.
* ``"timeout"``        sleep ``delay`` seconds before handling (client times out; nothing is
                       committed unless the client waits).
* ``"late_commit"``    hold the request ``delay`` seconds (longer than the client's timeout),
                       then commit it anyway: the client saw a timeout, the record exists
                       once the hold ends. Tests wait for ``held == 0`` before counting.
* ``"lost_response"``  handle the request (state committed), then drop the connection
                       without an answer: the client sees a reset.
* ``"reset"``          drop the connection before handling (nothing committed).
* ``"trickle"``        handle the request (state committed), then send the answer's body a
                       byte every ``delay`` seconds (set it under the client's read timeout:
                       no read ever times out, the answer just never seems to end).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import request


@dataclass
class Fault:
    kind: str
    times: int = 1
    status: int = 500
    retry_after: float | None = None
    delay: float = 5.0
    methods: tuple[str, ...] = ()
    path_contains: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return self.path_contains in path


class FaultPlan:
    """Faults waiting to fire, in order; each fires ``times`` times then is gone."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.fired: list[tuple[str, str, str]] = []

    def add(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind=kind, **kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    self.fired.append((fault.kind, method, path))
                    return fault
        return None


def drop_connection() -> None:
    """Close the client's socket without an answer (werkzeug exposes it in the environ)."""
    sock = request.environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def trickled(body: bytes, every: float) -> Iterator[bytes]:
    """``body`` a byte at a time, ``every`` seconds apart (the ``trickle`` fault)."""
    for at in range(len(body)):
        if at:
            time.sleep(every)
        yield body[at : at + 1]
