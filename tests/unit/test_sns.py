"""SNS delivery verification: signatures, certificate hosts, topic pinning, confirmation."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from web.sns import CERT_CACHE_SIZE, SnsVerifier, string_to_sign
from worker.errors import Rejected
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.ivvy import IvvySimulator

LOOPBACK = ("127.0.0.1",)
OTHER_TOPIC = "arn:aws:sns:us-east-1:111122223333:not-ours"


@pytest.fixture(scope="module")
def sim() -> Iterator[IvvySimulator]:
    simulator = IvvySimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def verifier(sim: IvvySimulator) -> Iterator[SnsVerifier]:
    checker = SnsVerifier(
        topic_arn=sim.topic_arn, cert_hosts=LOOPBACK, timeout=2.0, ca_bundle=tls.ca_bundle()
    )
    yield checker
    checker.close()


def notification(sim: IvvySimulator, **kwargs: Any) -> dict[str, Any]:
    inner = sim.inner_message("OpportunityDeleted", "7", None, None, (0, ""))
    return sim.sns_message(inner, **kwargs)


def refused(verifier: SnsVerifier, message: dict[str, Any]) -> Rejected:
    with pytest.raises(Rejected) as caught:
        verifier.verify(message)
    return caught.value


def cert_fetches(sim: IvvySimulator) -> int:
    return len(sim.requests_to("GET", "/sns/cert.pem"))


def test_string_to_sign_lists_the_notification_keys_in_order() -> None:
    # given a notification with a subject / when canonicalised
    message = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "t",
        "Subject": "s",
        "Message": "a\nb",
        "Timestamp": "ts",
        "Signature": "x",
    }
    # then Key\nValue\n for Message, MessageId, Subject, Timestamp, TopicArn, Type only
    expected = (
        "Message\na\nb\nMessageId\nm\nSubject\ns\nTimestamp\nts\nTopicArn\nt\nType\nNotification\n"
    )
    assert string_to_sign(message) == expected.encode()
    # and without a subject the key is left out
    del message["Subject"]
    assert b"Subject" not in string_to_sign(message)


def test_string_to_sign_of_a_confirmation_includes_subscribe_url_and_token() -> None:
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m",
        "TopicArn": "t",
        "Message": "hi",
        "Timestamp": "ts",
        "Token": "tok",
        "SubscribeURL": "u",
        "Subject": "ignored",
    }
    expected = (
        "Message\nhi\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\nToken\ntok\nTopicArn\nt\n"
        "Type\nSubscriptionConfirmation\n"
    )
    assert string_to_sign(message) == expected.encode()


@pytest.mark.parametrize("version", [1, 2])
def test_verify_accepts_a_signed_notification(
    sim: IvvySimulator, verifier: SnsVerifier, version: int
) -> None:
    # given a notification signed with SHA1 (v1) or SHA256 (v2) / when verified
    message = json.loads(json.dumps(notification(sim, signature_version=version)))
    # then nothing is raised
    verifier.verify(message)


def test_verify_refuses_a_tampered_message(sim: IvvySimulator, verifier: SnsVerifier) -> None:
    # given a message changed after signing / then 401
    assert refused(verifier, notification(sim, tamper=True)).status == 401


def test_verify_refuses_an_unexpected_topic(sim: IvvySimulator) -> None:
    # given a verifier pinned to another topic / then 401, before any fetch
    other = SnsVerifier(topic_arn=OTHER_TOPIC, cert_hosts=LOOPBACK, ca_bundle=tls.ca_bundle())
    before = cert_fetches(sim)
    assert refused(other, notification(sim)).status == 401
    assert cert_fetches(sim) == before
    other.close()


@pytest.mark.parametrize("kind", ["notification", "confirmation"])
def test_verify_refuses_every_message_when_no_topic_is_set(sim: IvvySimulator, kind: str) -> None:
    # given no IVVY_SNS_TOPIC_ARN: anyone with an AWS account could create a topic and sign
    unset = SnsVerifier(topic_arn=None, cert_hosts=LOOPBACK, ca_bundle=tls.ca_bundle())
    message = notification(sim) if kind == "notification" else sim.subscription_confirmation()
    before = cert_fetches(sim)
    # when a correctly signed message arrives
    with pytest.raises(Rejected) as caught:
        if kind == "notification":
            unset.verify(message)
        else:
            unset.confirm_subscription(message)
    # then 401 with a sentence naming the variable, nothing fetched, nothing confirmed
    assert caught.value.status == 401
    assert "IVVY_SNS_TOPIC_ARN is not set" in str(caught.value)
    assert cert_fetches(sim) == before
    assert not sim.confirmed
    unset.close()


@pytest.mark.parametrize("topic", [None, OTHER_TOPIC])
def test_verify_fetches_nothing_for_messages_from_a_topic_not_ours(
    sim: IvvySimulator, topic: str | None
) -> None:
    # given a verifier with no topic, or another one, and signed messages each naming a new
    # SigningCertURL on the allowed host
    checker = SnsVerifier(topic_arn=topic, cert_hosts=LOOPBACK, ca_bundle=tls.ca_bundle())
    before = cert_fetches(sim)
    for n in range(50):
        message = notification(sim)
        message["SigningCertURL"] = f"{sim.tls_url}/sns/cert.pem?n={n}"
        # when verified / then refused
        assert refused(checker, message).status == 401
    # and not one certificate was fetched
    assert cert_fetches(sim) == before
    checker.close()


def test_verify_keeps_a_bounded_number_of_certificates(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    # given messages of our topic naming more distinct certificate URLs than are kept
    def from_url(n: int) -> dict[str, Any]:
        message = notification(sim)
        message["SigningCertURL"] = f"{sim.tls_url}/sns/cert.pem?n={n}"
        return message  # SigningCertURL is not part of what is signed

    for n in range(CERT_CACHE_SIZE + 5):
        verifier.verify(from_url(n))
    fetched = cert_fetches(sim)
    # when the first URL comes again / then it was dropped (fetched again): the cache is
    # bounded, while the newest URL is still kept
    verifier.verify(from_url(CERT_CACHE_SIZE + 4))
    assert cert_fetches(sim) == fetched
    verifier.verify(from_url(0))
    assert cert_fetches(sim) == fetched + 1


def test_verify_refuses_a_certificate_host_the_patterns_do_not_allow(sim: IvvySimulator) -> None:
    # given the default patterns (AWS hosts only) and a cert on loopback
    strict = SnsVerifier(topic_arn=sim.topic_arn, cert_hosts=("sns.*.amazonaws.com",))
    before = cert_fetches(sim)
    # when verified / then 401 and the certificate was never fetched
    assert refused(strict, notification(sim)).status == 401
    assert cert_fetches(sim) == before
    strict.close()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem", True),
        ("http://sns.us-east-1.amazonaws.com/cert.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem", False),
        ("https://sns.us-east-1.amazonaws.com@evil.example/cert.pem", False),
        ("https://evil.example/sns.us-east-1.amazonaws.com/cert.pem", False),
        ("http://127.0.0.1:8080/sns/cert.pem", False),  # loopback, but not in the patterns
        ("file:///etc/passwd", False),
    ],
)
def test_allowed_url_is_https_to_a_matching_host(url: str, allowed: bool) -> None:
    checker = SnsVerifier(topic_arn=None, cert_hosts=("sns.*.amazonaws.com",))
    assert checker.allowed_url(url) is allowed
    checker.close()


def test_allowed_url_never_takes_plain_http_even_on_loopback() -> None:
    checker = SnsVerifier(topic_arn=None, cert_hosts=("127.0.0.1", "example.com"))
    assert not checker.allowed_url("http://127.0.0.1:5000/cert.pem")
    assert not checker.allowed_url("http://example.com/cert.pem")
    assert checker.allowed_url("https://127.0.0.1:5000/cert.pem")
    checker.close()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"Type": "Hello"}, 400),
        ({"MessageId": None}, 400),
        ({"Message": 5}, 400),
        ({"SignatureVersion": "3"}, 400),
        ({"Signature": "%%%not base64"}, 401),
        ({"Subject": 7}, 400),
    ],
)
def test_verify_answers_malformed_and_unsigned_input(
    sim: IvvySimulator, verifier: SnsVerifier, change: dict[str, Any], status: int
) -> None:
    assert refused(verifier, {**notification(sim), **change}).status == status


def test_verify_refuses_a_non_object() -> None:
    checker = SnsVerifier(topic_arn=OTHER_TOPIC, cert_hosts=LOOPBACK)
    with pytest.raises(Rejected) as caught:
        checker.verify([1, 2])  # type: ignore[arg-type]
    assert caught.value.status == 400
    checker.close()


def test_verify_fetches_each_certificate_once(sim: IvvySimulator, verifier: SnsVerifier) -> None:
    # given a fresh verifier / when it checks three messages from the same certificate URL
    before = cert_fetches(sim)
    for _ in range(3):
        verifier.verify(notification(sim))
    # then the certificate was fetched once
    assert cert_fetches(sim) == before + 1


def test_verify_refuses_a_certificate_url_that_is_not_a_certificate(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    # given a SigningCertURL on the allowed host that answers 404 or something else
    for path in ("/sns/missing.pem", "/sns/unsubscribe"):
        message = {**notification(sim), "SigningCertURL": f"{sim.tls_url}{path}"}
        # then 401
        assert refused(verifier, message).status == 401


def test_verify_answers_503_when_the_certificate_cannot_be_fetched(sim: IvvySimulator) -> None:
    # given a certificate URL on a loopback port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    checker = SnsVerifier(topic_arn=sim.topic_arn, cert_hosts=LOOPBACK, timeout=1.0)
    message = {**notification(sim), "SigningCertURL": f"https://127.0.0.1:{port}/cert.pem"}
    # then 503: our fetch failed, SNS should deliver again
    assert refused(checker, message).status == 503
    checker.close()


def test_confirm_subscription_visits_the_subscribe_url(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    # given the subscription confirmation the topic sends
    message = json.loads(json.dumps(sim.subscription_confirmation(signature_version=2)))
    # when confirmed / then the simulator saw the SubscribeURL visited
    verifier.confirm_subscription(message)
    assert sim.confirmed


def test_confirm_subscription_refuses_a_notification(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    with pytest.raises(Rejected) as caught:
        verifier.confirm_subscription(notification(sim))
    assert caught.value.status == 400


def test_confirm_subscription_refuses_a_forged_subscribe_url(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    # given a confirmation whose SubscribeURL was changed after signing
    message = {**sim.subscription_confirmation(), "SubscribeURL": "https://evil.example/x"}
    # then the signature no longer holds: 401
    with pytest.raises(Rejected) as caught:
        verifier.confirm_subscription(message)
    assert caught.value.status == 401


def test_confirm_subscription_refuses_a_signed_subscribe_url_off_the_allowed_hosts(
    sim: IvvySimulator, verifier: SnsVerifier
) -> None:
    # given a validly signed confirmation whose SubscribeURL points elsewhere
    message = sim.subscription_confirmation()
    message["SubscribeURL"] = "https://evil.example/confirm"
    sim.topic.sign(message)
    # then 401, and nothing was visited
    with pytest.raises(Rejected) as caught:
        verifier.confirm_subscription(message)
    assert caught.value.status == 401
