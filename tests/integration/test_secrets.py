"""Secrets stay secret: never in a log line, an error body or a dead letter; admin pages and
Flower ask for credentials when they are configured.

Runs the real stack with every vendor's tokens, keys, passwords and webhook secrets set
(``worker/sandbox/stack.py``), makes it use all of them (a full sync, a Standard Webhooks delivery
per vendor, refusals that end as dead letters), then greps everything it wrote.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.integration.conftest import wait_idle
from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    others,
    person_creates,
    wait_converged,
)
from worker.sandbox.embedded_redis import free_port
from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import BIN, ROOT, VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = pytest.mark.integration

#: Variables whose values are secrets (the same words ``VendorSettings.secret_values`` uses).
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "BASIC_AUTH")


def configured_secrets(stack: Stack) -> dict[str, str]:
    """Every secret the stack runs with, by variable, plus the tokens vendors issued."""
    found = {
        name: value
        for name, value in stack.env.items()
        if any(word in name for word in SECRET_WORDS) and value
    }
    for n, token in enumerate(sorted(stack.sims["icloudready"].tokens)):
        found[f"icloudready bearer token #{n}"] = token
    # The whsec_ prefix is public; the key is what follows (base64 of the raw secret).
    for name, value in list(found.items()):
        if value.startswith("whsec_"):
            found[f"{name} (key)"] = value.removeprefix("whsec_")
    # A basic-auth pair also travels as base64 in an Authorization header.
    admin = f"{stack.env['OPPSYNC_ADMIN_USER']}:{stack.env['OPPSYNC_ADMIN_PASSWORD']}"
    found["admin Authorization header"] = base64.b64encode(admin.encode()).decode()
    return found


def dead_letter_text(stack: Stack) -> str:
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    letters = DeadLetters(client).list()
    return "\n".join(json.dumps(letter.__dict__, default=str) for letter in letters)


def test_secrets_never_reach_a_log_line_an_answer_or_a_dead_letter(live: Stack) -> None:
    # given a full sync from a native webhook: every vendor's API is called with its
    # credentials (SIRO token, HighLevel token, iVvy key + secret, Salescaling key,
    # iCloudReady sign-in and bearer token)
    vendor_id = person_creates(live, "leadway")
    assert announce(live, "leadway", vendor_id) == 202
    wait_converged(live, others("leadway"), as_held_by("leadway", DEAL))
    # and a Standard Webhooks delivery signed with each vendor's secret
    answers: list[httpx.Response] = []
    for vendor in VENDORS:
        sim = live.sims[vendor]
        (record_id,) = list(sim.records)
        body = json.dumps({"id": record_id}).encode()
        answers.append(
            httpx.post(
                f"{live.web_url}/webhooks/{vendor}",
                content=body,
                headers=sign_standard_webhook(sim.webhook_secret, body),
            )
        )
    # and deliveries refused at the edge (their answers are read below)
    answers.append(httpx.post(f"{live.web_url}/webhooks/siro", content=b'{"id": "1"}'))
    answers.append(
        httpx.post(
            f"{live.web_url}/webhooks/siro",
            content=b'{"id": "1"}',
            headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"},
        )
    )
    # and vendors refusing our credentials, and a record that does not validate: dead letters
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    wait_idle(client)
    for vendor in ("siro", "salescaling", "icloudready"):
        live.sims[vendor].faults.add("error", status=401, times=50)
    edited = live.sims["leadway"].edit(vendor_id, name="Harbour View Gala")
    assert edited["name"] == "Harbour View Gala"
    assert announce(live, "leadway", vendor_id, created=False) == 202
    assert live.sims["salescaling"].send_standard_webhook({"id": "x", "amount": "lots"}) == 202
    wait_for(lambda: len(DeadLetters(client).list()) >= 4, 30, "dead letters did not appear")
    wait_idle(client)
    for sim in live.sims.values():
        sim.faults.clear()
    # when everything oppsync wrote is read back
    secrets = configured_secrets(live)
    assert len(secrets) >= 10, sorted(secrets)  # the check below must have something to find
    logs, letters = live.logs(), dead_letter_text(live)
    assert "credentials refused" in letters  # the refusals are in there, and said why
    # then no configured secret or issued token appears anywhere
    for name, value in secrets.items():
        assert value not in logs, f"{name} appears in the logs"
        assert value not in letters, f"{name} appears in a dead letter"
        for answer in answers:
            assert value not in answer.text, f"{name} appears in an answer"
            assert value not in str(answer.headers), f"{name} appears in answer headers"


@pytest.mark.parametrize("path", ["/metrics", "/status"])
def test_admin_pages_need_the_configured_credentials(stack: Stack, path: str) -> None:
    # given OPPSYNC_ADMIN_USER / OPPSYNC_ADMIN_PASSWORD set (worker/sandbox/stack.py)
    user, password = stack.env["OPPSYNC_ADMIN_USER"], stack.env["OPPSYNC_ADMIN_PASSWORD"]
    url = f"{stack.web_url}{path}"
    # then no credentials or wrong ones get 401 with a challenge, and no data
    for auth in (None, (user, "wrong"), ("someone", password), (user, password + "x")):
        answer = httpx.get(url, auth=auth)
        assert answer.status_code == 401, (auth, answer.status_code)
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert "oppsync_events_received_total" not in answer.text
        assert password not in answer.text
    # and the right ones get the page
    assert httpx.get(url, auth=(user, password)).status_code == 200


def procfile_command(process: str) -> str:
    """The Procfile's command line for ``process`` (run by a shell, as honcho does)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise AssertionError(f"no {process} in the Procfile")


@pytest.fixture
def flower(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, tuple[str, str]]]:
    """Flower exactly as the Procfile runs it, with FLOWER_BASIC_AUTH set."""
    port = free_port()
    credentials = ("flower-admin", "flower-test-password")
    env = {
        **stack.env,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(tmp_path_factory.mktemp("flower") / "flower.db"),
        "FLOWER_BASIC_AUTH": ":".join(credentials),
    }
    log_path = stack.log_dir / "flower.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["bash", "-c", procfile_command("flower")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            return True  # exited: reported below
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1.0).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, "flower did not start")
        if process.poll() is not None:
            said = log_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"flower, as the Procfile runs it, exited:\n{said}")
        yield url, credentials
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_flower_needs_the_configured_credentials(flower: tuple[str, tuple[str, str]]) -> None:
    url, (user, password) = flower
    # no credentials, or wrong ones: 401
    assert httpx.get(f"{url}/").status_code == 401
    assert httpx.get(f"{url}/api/workers", auth=(user, "wrong")).status_code == 401
    # the configured ones: the dashboard
    assert httpx.get(f"{url}/", auth=(user, password)).status_code == 200
