"""Vendor HTTP on the process's event loop: answers, and what each kind of failure means.

The meaning of a failure decides whether a create may be sent again at once: only a
request that surely never left (no connection) is ``Transient``; one that may have reached
the vendor (a connection cut after sending, no answer in time, an answer that is not HTTP)
is ``OutcomeUnknown``. Each case runs against a real socket server on loopback.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.errors import OutcomeUnknown, Transient
from worker.vendors.http import VendorHTTP
from worker.vendors.looptransport import event_loop

Handler = Callable[[socket.socket, bytes], None]


class RawServer:
    """A loopback TCP server handing each request's first bytes to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received.append(data)
                self.handler(conn, data)
                if conn.fileno() == -1:
                    return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def answer(conn: socket.socket, data: bytes) -> None:
    """A JSON answer echoing the request line, on a kept-alive connection."""
    line = data.split(b"\r\n", 1)[0].decode()
    body = json.dumps({"line": line}).encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def hang_up(conn: socket.socket, _data: bytes) -> None:
    """The vendor took the request, then the connection dropped: no answer."""
    conn.close()


def stall(conn: socket.socket, _data: bytes) -> None:
    """The vendor took the request and answers only after our read timeout."""
    time.sleep(1.5)


def not_http(conn: socket.socket, _data: bytes) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    conn.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    srv = RawServer(request.param)
    yield srv
    srv.close()


def client(port: int, timeout: float = 0.5) -> VendorHTTP:
    return VendorHTTP("siro", f"http://127.0.0.1:{port}", timeout=timeout)


@pytest.mark.parametrize("server", [answer], indirect=True)
def test_answers_reach_the_thread_that_asked_each(server: RawServer) -> None:
    http = client(server.port)
    try:
        with ThreadPoolExecutor(16) as pool:
            paths = [f"/v1/opportunities/r{n}" for n in range(200)]
            answers = list(pool.map(lambda p: http.request("PUT", p, json_body={"p": p}), paths))
        assert [a["line"] for a in answers] == [f"PUT {p} HTTP/1.1" for p in paths]
    finally:
        http.close()


@pytest.mark.parametrize("server", [hang_up], indirect=True)
def test_connection_cut_after_the_request_was_sent_is_outcome_unknown(server: RawServer) -> None:
    http = client(server.port)
    try:
        with pytest.raises(OutcomeUnknown) as info:
            http.request("POST", "/v1/opportunities", json_body={"name": "Gala"})
        assert info.value.reason == "no_answer"
        assert b"Gala" in b"".join(server.received)  # it did reach the vendor
    finally:
        http.close()


_answered: set[int] = set()


def answer_once_then_hang_up(conn: socket.socket, data: bytes) -> None:
    """The first request on a connection is answered; the next one is taken, then cut."""
    if conn.fileno() in _answered:
        _answered.discard(conn.fileno())
        conn.close()
        return
    answer(conn, data)
    _answered.add(conn.fileno())


@pytest.mark.parametrize("server", [answer_once_then_hang_up], indirect=True)
def test_a_put_cut_on_a_kept_alive_connection_is_not_sent_again(server: RawServer) -> None:
    # (aiohttp resends an idempotent request by itself when its pooled connection drops.)
    http = client(server.port)
    try:
        http.request("PUT", "/v1/opportunities/r1", json_body={"name": "Gala"})
        with pytest.raises(OutcomeUnknown):
            http.request("PUT", "/v1/opportunities/r1", json_body={"name": "Gala Dinner"})
        assert sum(b"Gala Dinner" in r for r in server.received) == 1
    finally:
        http.close()


@pytest.mark.parametrize("server", [stall], indirect=True)
def test_no_answer_within_the_timeout_is_outcome_unknown(server: RawServer) -> None:
    http = client(server.port, timeout=0.3)
    try:
        began = time.monotonic()
        with pytest.raises(OutcomeUnknown) as info:
            http.request("POST", "/v1/opportunities", json_body={"name": "Gala"})
        assert info.value.reason == "no_answer"
        assert time.monotonic() - began < 1.4  # the timeout, not the vendor, ended it
    finally:
        http.close()


@pytest.mark.parametrize("server", [not_http], indirect=True)
def test_an_answer_that_is_not_http_is_outcome_unknown(server: RawServer) -> None:
    http = client(server.port)
    try:
        with pytest.raises(OutcomeUnknown):
            http.request("POST", "/v1/opportunities", json_body={"name": "Gala"})
    finally:
        http.close()


def test_nothing_listening_is_transient_since_nothing_was_sent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    http = client(port)  # the port is free again: connecting is refused
    try:
        with pytest.raises(Transient) as info:
            http.request("POST", "/v1/opportunities", json_body={"name": "Gala"})
        assert info.value.reason == "connect" and not isinstance(info.value, OutcomeUnknown)
    finally:
        http.close()


def test_one_loop_serves_every_client_in_the_process() -> None:
    assert event_loop() is event_loop()
    assert event_loop().is_running()


@pytest.mark.parametrize("server", [answer], indirect=True)
def test_a_process_that_called_a_vendor_exits_without_unclosed_session_lines(
    server: RawServer,
) -> None:
    # given a process (a CLI command, a worker) that sent a vendor request
    program = (
        "from worker.vendors.http import VendorHTTP\n"
        f"http = VendorHTTP('siro', 'http://127.0.0.1:{server.port}', timeout=3)\n"
        "print(http.request('PUT', '/v1/opportunities/r1', json_body={})['line'])\n"
    )
    # when it exits
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", program], capture_output=True, text=True, timeout=30
    )
    # then it said what it did, and nothing about sessions left open
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PUT /v1/opportunities/r1 HTTP/1.1"
    assert "Unclosed" not in done.stderr, done.stderr
