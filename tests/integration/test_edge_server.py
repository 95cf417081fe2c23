"""The Procfile's web server facing hostile clients on loopback: slow and idle connections,
a malformed chunked body, secrets in the request line and the basic-auth user name.

A stack of its own: Redis, the simulators (for their webhook secrets) and the ``web`` line of
the ``Procfile`` exactly as a PaaS runs it; no Celery worker (an answered webhook is one
queued, which is all the edge promises). Every loop here is bounded in time.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import ADMIN_PASSWORD, Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

#: Slow clients held open at once: headers trickled, bodies trickled, and idle connections.
HEADER_TRICKLERS, BODY_TRICKLERS, IDLE = 200, 40, 40
#: Seconds between two pieces a trickling client sends (under the server's per-read bounds).
TRICKLE_EVERY = 0.5


@pytest.fixture(scope="module")
def procfile_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = Path(tmp_path_factory.mktemp("edge"))
    stack = start_stack(log_dir, worker=False)
    yield stack
    stack.stop()


def signed_delivery(stack: Stack) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": str(uuid.uuid4())}).encode()  # a Salescaling id is a UUID
    headers = sign_standard_webhook(stack.sims["salescaling"].webhook_secret, body)
    return body, headers


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.web_port), timeout=5)


class Tricklers:
    """Slow clients: each sends one more piece of its request every ``TRICKLE_EVERY`` s."""

    def __init__(self, stack: Stack) -> None:
        self.pieces: dict[socket.socket, Iterator[bytes]] = {}
        self.idle: list[socket.socket] = []
        self.closed: set[socket.socket] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        for n in range(HEADER_TRICKLERS):
            self.pieces[connect(stack)] = self._headers(n)
        for n in range(BODY_TRICKLERS):
            self.pieces[connect(stack)] = self._body(n)
        self.idle = [connect(stack) for _ in range(IDLE)]

    @staticmethod
    def _headers(n: int) -> Iterator[bytes]:
        yield b"POST /webhooks/salescaling HTTP/1.1\r\n"
        for i in range(1000):
            yield f"X-Slow-{n}-{i}: a\r\n".encode()

    @staticmethod
    def _body(n: int) -> Iterator[bytes]:
        yield (
            b"POST /webhooks/salescaling HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        for _ in range(999):
            yield b" "

    def _run(self) -> None:
        while not self.stop.wait(TRICKLE_EVERY):
            for sock, pieces in self.pieces.items():
                if sock in self.closed:
                    continue
                try:
                    sock.send(next(pieces))
                except OSError:
                    self.closed.add(sock)

    def __enter__(self) -> Tricklers:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in [*self.pieces, *self.idle]:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (an answer before the close is fine)."""
    sock.settimeout(0.05)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_edge_answers_signed_deliveries_while_280_slow_clients_hang_on(
    procfile_web: Stack,
) -> None:
    stack = procfile_web
    # given 280 connections open at once: 200 trickling header lines, 40 trickling a body
    # a byte at a time, 40 sending nothing
    with Tricklers(stack) as slow, httpx.Client(timeout=httpx.Timeout(1.0)) as client:
        time.sleep(2 * TRICKLE_EVERY)  # every trickler has started its request
        # when a vendor delivers signed webhooks meanwhile, each on a fresh connection
        answers = []
        for _ in range(20):
            body, headers = signed_delivery(stack)
            answers.append(
                client.post(
                    f"{stack.web_url}/webhooks/salescaling",
                    content=body,
                    headers={**headers, "Connection": "close"},
                ).status_code
            )
        # then each was queued within the client's 1 s timeout (httpx raises otherwise)
        assert answers == [202] * 20
        # and no slow client is held for good: requests still half sent once the server's
        # bounds have passed (5 s for headers, 10 s for a body) are closed, idle ones too
        everyone = [*slow.pieces, *slow.idle]
        wait_for(lambda: all(closed_by_server(s) for s in everyone), 30, "slow clients kept")


def test_edge_closes_a_stalled_half_sent_body_with_408(procfile_web: Stack) -> None:
    stack = procfile_web
    # given a request whose body stops halfway
    with connect(stack) as sock:
        sock.sendall(
            b"POST /webhooks/salescaling HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id":'
        )
        # when the sender goes silent, then within the server's bound it answers 408 and
        # closes the connection
        sock.settimeout(20)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"


def test_edge_answers_a_malformed_chunked_body_with_400(procfile_web: Stack) -> None:
    stack = procfile_web
    offset = (stack.log_dir / "web.log").stat().st_size
    # given a chunked body whose chunk size is not hexadecimal
    with connect(stack) as sock:
        sock.sendall(
            b"POST /webhooks/salescaling HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n{}\r\n0\r\n\r\n"
        )
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # then a 400 with a sentence, not a 500, and no error-level line in the server's log
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_chunked"
    with open(stack.log_dir / "web.log", "rb") as log:
        log.seek(offset)
        written = log.read().decode(errors="replace")
    assert "Traceback" not in written
    assert '"level": "error"' not in written


def test_edge_server_logs_are_json_and_carry_no_secret(procfile_web: Stack) -> None:
    stack = procfile_web
    offset = (stack.log_dir / "web.log").stat().st_size
    # given requests carrying secrets where a server's own log would put them: the query
    # string, the basic-auth user name (the admin password typed in the wrong box), the
    # user agent and the referer
    token = f"tok-{uuid.uuid4().hex}"
    secret_user = base64.b64encode(f"{ADMIN_PASSWORD}:wrong".encode()).decode()
    headers = {
        "Authorization": f"Basic {secret_user}",
        "User-Agent": f"agent-{token}",
        "Referer": f"https://example.com/?ref={token}",
    }
    with httpx.Client(timeout=5) as client:
        query = {"api_key": token, "password": ADMIN_PASSWORD}
        for path in ("/status", "/metrics", "/healthz", "/webhooks/salescaling", "/nowhere"):
            client.get(f"{stack.web_url}{path}", params=query, headers=headers)
        client.post(f"{stack.web_url}/webhooks/salescaling", params=query, headers=headers)
    # when the server has written its lines (access lines are written after each answer)
    time.sleep(0.5)
    with open(stack.log_dir / "web.log", "rb") as log:
        log.seek(offset)
        written = log.read().decode(errors="replace")
    lines = [line for line in written.splitlines() if line.strip()]
    # then every line is one JSON object, each answer has its access line with the path
    # alone, and no secret is in any line
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    paths = {r.get("path") for r in records if r.get("event") == "http.access"}
    assert {"/status", "/metrics", "/nowhere", "/webhooks/salescaling"} <= paths, paths
    assert token not in written
    assert ADMIN_PASSWORD not in written
    assert "api_key=" not in written
