"""A vendor call ends at its deadline, whatever pace the other end keeps.

httpx bounds each socket read; a host that sends its answer a byte at a time, each byte
inside that bound, would otherwise hold the calling thread for as long as it trickles. Each
test points a client at a real loopback server that does exactly that (over TLS for the
SNS certificate fetch) and measures how long the call lasted.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from web.sns import SnsVerifier
from worker.errors import OutcomeUnknown, Rejected, Transient
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.vendors.deadline import within_deadline
from worker.vendors.http import VendorHTTP

pytestmark = pytest.mark.integration

#: Seconds between two bytes of a trickled answer: well inside every read timeout here.
EVERY = 0.1
#: How long a trickle lasts unless the client hangs up: far past every deadline here.
TRICKLE_SECONDS = 20.0
TIMEOUT = 0.5

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
ANSWER = b'{"id": "7"}'


class Trickler:
    """A loopback HTTP server answering every request by ``pace``: ``"body"`` (the head at
    once, then the body a byte at a time), ``"head"`` (the head a byte at a time) or
    ``"halves"`` (the answer in two halves, ``gap`` seconds apart)."""

    def __init__(self, pace: str, *, tls_context: ssl.SSLContext | None = None, gap: float = 0):
        self.pace, self.gap, self.tls_context = pace, gap, tls_context
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received += chunk
            self.requests += 1
            if self.pace == "halves":
                answer = HEAD % len(ANSWER) + ANSWER
                conn.sendall(answer[:20])
                time.sleep(self.gap)
                conn.sendall(answer[20:])
                time.sleep(1)
                return
            if self.pace == "body":  # a long body announced, then sent a byte at a time
                conn.sendall(HEAD % 100_000)
            else:  # a header line that never ends
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            ends = time.monotonic() + TRICKLE_SECONDS
            while not self._stop.is_set() and time.monotonic() < ends:
                conn.sendall(b" " if self.pace == "body" else b"a")
                time.sleep(EVERY)
        except OSError:
            pass  # the client hung up: what the deadline is for
        finally:
            conn.close()


@contextmanager
def trickler(pace: str, **options: object) -> Iterator[Trickler]:
    server = Trickler(pace, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


@contextmanager
def vendor_client(url: str) -> Iterator[VendorHTTP]:
    client = VendorHTTP("siro", url, timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("pace", ["body", "head"])
def test_vendor_call_trickled_an_answer_ends_at_its_deadline(pace: str) -> None:
    # given a vendor that sends its answer a byte every 0.1 s (each read well in time)
    with trickler(pace) as server, vendor_client(server.url()) as client:
        started = time.monotonic()
        # when a write is sent, then it fails as unanswered (the vendor got it: it may commit)
        with pytest.raises(OutcomeUnknown):
            client.request("POST", "/opportunities", json_body={"name": "Deal"})
        took = time.monotonic() - started
        assert server.requests == 1
    # and no later than the call's deadline (connect + timeout), not when the trickle ends
    assert took < client.call_seconds + 0.5, f"the call lasted {took:.1f} s"


def test_vendor_call_slower_than_one_read_timeout_but_within_its_deadline_is_read() -> None:
    # given an answer in two halves 0.4 s apart, the first after a moment (each read in
    # time, the whole longer than one read timeout but shorter than the call's deadline)
    with trickler("halves", gap=0.4) as server, vendor_client(server.url()) as client:
        # when / then the answer is read whole
        assert client.request("GET", "/opportunities/7") == {"id": "7"}


def test_vendor_call_past_an_outer_deadline_sends_nothing() -> None:
    # given a caller whose own deadline has already passed
    with trickler("halves") as server, vendor_client(server.url()) as client:
        with within_deadline(-1.0), pytest.raises(Transient):
            # when a call is made, then it fails as "not sent", and the vendor saw nothing
            client.request("POST", "/opportunities", json_body={"name": "Deal"})
        assert server.requests == 0


def test_sns_certificate_trickled_is_refused_at_the_timeout() -> None:
    # given a certificate host (allowed, TLS) that trickles the certificate
    sim = IvvySimulator().start()
    try:
        with trickler("body", tls_context=tls.server_context()) as server:
            verifier = SnsVerifier(
                topic_arn=sim.topic_arn,
                cert_hosts=("127.0.0.1",),
                timeout=1.0,
                ca_bundle=tls.ca_bundle(),
            )
            inner = sim.inner_message("OpportunityDeleted", "7", None, None, (0, ""))
            message = {
                **sim.sns_message(inner),
                "SigningCertURL": f"{server.url('https')}/cert.pem",
            }
            started = time.monotonic()
            # when the message is verified, then 503 (SNS delivers again later), in time
            with pytest.raises(Rejected) as caught:
                verifier.verify(message)
            took = time.monotonic() - started
            verifier.close()
            assert server.requests == 1
    finally:
        sim.stop()
    assert caught.value.status == 503
    assert took < 2.0, f"the fetch lasted {took:.1f} s"
