"""A deadline for a whole vendor call, from its connection to the last byte of its answer.

httpx's timeouts bound each socket operation, not the call: a vendor (or a proxy in front of
it) that sends its answer a byte at a time, each byte inside the read timeout, would hold a
push thread for as long as it likes, and the threads are shared by every vendor, so one slow
vendor would in the end delay them all. Here each socket operation of a call gets at most
what is left of the call's deadline (``within_deadline``), and none once it has passed: the
call then fails as a timeout does (``httpx.ConnectTimeout`` before the request was sent,
``httpx.ReadTimeout`` or ``httpx.WriteTimeout`` after), which ``worker/vendors/http.py``
maps as it maps any timeout.

The deadline is set per call in a context variable, so one pooled client serves calls with
and without one, from any thread.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

#: httpx's own pool limits, for a client that names none.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
#: When the call running in this context must be over (``time.monotonic()``), if it must.
_deadline: ContextVar[float | None] = ContextVar("oppsync_call_deadline", default=None)


@contextmanager
def within_deadline(seconds: float) -> Iterator[None]:
    """Every socket operation of the calls in this block ends ``seconds`` from now at the
    latest (an earlier deadline already set stays)."""
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout``, shortened to what is left of the deadline; ``expired`` once none is."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline passed before the vendor's answer was complete")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes never outlast the current call's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each wrapped in a ``DeadlineStream``."""

    def __init__(self, backend: httpcore.NetworkBackend | None = None) -> None:
        self._backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (its pool, TLS and error mapping) over a ``DeadlineBackend``."""

    def __init__(
        self, limits: httpx.Limits = DEFAULT_LIMITS, verify: ssl.SSLContext | bool = True
    ) -> None:
        # One TLS context (loading the CA bundle takes about 20 ms), from the environment as
        # httpx makes it (SSL_CERT_FILE), for both pools below.
        ssl_context = httpx.create_ssl_context(verify=verify)
        super().__init__(limits=limits, verify=ssl_context)
        # httpx builds its pool without a way to name the network backend; the pool is
        # httpcore's public class, built here as httpx builds it, with the backend named.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )
