"""iVvy's SNS deliveries through the real web: accepted only from the configured topic.

Anyone with an AWS account can create a topic, subscribe our URL and sign for it, so with
iVvy enabled and ``IVVY_SNS_TOPIC_ARN`` unset every SNS message is refused with a 401 that
says why, before any certificate is fetched. With the topic set, the confirmation and the
notifications verify against a certificate served over https (the test CA passed in with
``IVVY_SNS_CA_BUNDLE``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_cli import oppsync
from worker.sandbox.stack import Stack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def no_topic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("no-topic")), worker=False, IVVY_SNS_TOPIC_ARN=""
    )
    yield stack
    stack.stop()


def deliver(stack: Stack, message: dict[str, Any]) -> httpx.Response:
    """POST an SNS message to the web as SNS does (JSON as text/plain, SNS's headers)."""
    headers = {
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": message["MessageId"],
        "x-amz-sns-topic-arn": message["TopicArn"],
        "Content-Type": "text/plain; charset=UTF-8",
    }
    body = json.dumps(message).encode()
    return httpx.post(f"{stack.web_url}/webhooks/ivvy", content=body, headers=headers)


def test_sns_topic_unset_refuses_confirmation_and_notifications(no_topic: Stack) -> None:
    sim = no_topic.sims["ivvy"]
    inner = sim.inner_message("OpportunityDeleted", "7", None, None, (0, ""))
    # when a correctly signed confirmation and notification arrive with no topic configured
    answers = [
        deliver(no_topic, sim.subscription_confirmation()),
        deliver(no_topic, sim.sns_message(inner)),
    ]
    # then both are refused with a 401 naming the variable to set
    for answer in answers:
        assert answer.status_code == 401
        assert "IVVY_SNS_TOPIC_ARN is not set" in answer.json()["message"]
    # and no certificate was fetched, no subscription confirmed
    assert sim.requests_to("GET", "/sns/") == []
    assert not sim.confirmed


def test_sns_topic_set_confirms_over_https_with_the_configured_ca(live: Stack) -> None:
    sim = live.sims["ivvy"]
    sim.topic.confirmed = False
    # when the configured topic's confirmation arrives
    answer = deliver(live, sim.subscription_confirmation())
    # then the certificate was fetched over https and the subscription confirmed
    assert answer.status_code == 200, answer.text
    assert sim.confirmed


def test_sns_topic_unset_is_reported_by_config_check(live: Stack) -> None:
    # given iVvy enabled and no IVVY_SNS_TOPIC_ARN
    env = {k: v for k, v in live.env.items() if k != "IVVY_SNS_TOPIC_ARN"}
    # when an operator checks the configuration
    result = oppsync(env, "config", "check")
    # then one line says iVvy's notifications will be refused and why, and the check fails
    assert result.returncode == 1, result.stdout
    (line,) = [x for x in result.stdout.splitlines() if "IVVY_SNS_TOPIC_ARN" in x]
    assert line.startswith("ivvy: FAILED") and "subscribeToNotifications" in line
