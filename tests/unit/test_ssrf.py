"""No server-side request forgery: oppsync fetches only from hosts its configuration names.

SNS ``SigningCertURL`` and ``SubscribeURL`` are fetched only from ``IVVY_SNS_CERT_HOSTS``;
vendor calls go only to ``<VENDOR>_BASE_URL``, whatever ids a webhook carries; and no
redirect is followed anywhere. Each test points the hostile URL at a real "elsewhere"
server on loopback and checks it received nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from web.sns import DEFAULT_CERT_HOSTS, SnsVerifier
from worker.errors import OppsyncError, Rejected
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.sandbox.stack import VENDORS, stack_env, start_simulators
from worker.settings import from_env
from worker.vendors import build_adapters
from worker.vendors.base import VendorAdapter

AWS = DEFAULT_CERT_HOSTS


class Elsewhere(Simulator):
    """A host nobody configured: it answers every request and remembers it."""

    name = "elsewhere"

    def routes(self) -> None:
        self.app.add_url_rule(
            "/<path:anything>",
            "any",
            lambda anything: self.json_response({"id": "stolen", "path": anything}),
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Elsewhere]:
    server = Elsewhere().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sns() -> Iterator[IvvySimulator]:
    simulator = IvvySimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def verifier(sns: IvvySimulator) -> Iterator[SnsVerifier]:
    checker = SnsVerifier(
        topic_arn=sns.topic_arn, cert_hosts=("127.0.0.1",), timeout=2.0, ca_bundle=tls.ca_bundle()
    )
    yield checker
    checker.close()


def other_host(server: Simulator, path: str = "/x.pem") -> str:
    """The server's address under a host name the patterns do not allow."""
    return server.url.replace("127.0.0.1", "localhost") + path


# -- which URLs the SNS verifier will fetch ---------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com@evil.example/cert.pem",
        "https://sns.us-east-1.amazonaws.com:443@evil.example/cert.pem",
        "https://user:pw@sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com%40evil.example/cert.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.example/cert.pem",
        "https://evil.example#@sns.us-east-1.amazonaws.com/cert.pem",
        "https://evil.example?sns.us-east-1.amazonaws.com/cert.pem",
        "https://evil.example/https://sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
        "https://sns.us-east-1.amazonaws.com./cert.pem.evil.example",
        "https://xsns.us-east-1.amazonaws.com/cert.pem",
        "http://sns.us-east-1.amazonaws.com/cert.pem",
        "ftp://sns.us-east-1.amazonaws.com/cert.pem",
        "file:///etc/passwd",
        "gopher://sns.us-east-1.amazonaws.com:6379/_FLUSHALL",
        "//sns.us-east-1.amazonaws.com/cert.pem",
        "sns.us-east-1.amazonaws.com/cert.pem",
        "https://52.94.236.248/cert.pem",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/latest/meta-data/",
        "https://2130706433/cert.pem",
        "https://0x7f000001/cert.pem",
        "https://localhost/cert.pem",
        "https://[sns.us-east-1.amazonaws.com]/cert.pem",
        "",
    ],
)
def test_sns_verifier_refuses_urls_off_the_aws_hosts(url: str) -> None:
    checker = SnsVerifier(topic_arn=None, cert_hosts=AWS)
    assert checker.allowed_url(url) is False
    checker.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://SNS.AP-SOUTHEAST-2.AMAZONAWS.COM/SimpleNotificationService-abc.pem",
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t",
    ],
)
def test_sns_verifier_takes_https_aws_sns_hosts(url: str) -> None:
    checker = SnsVerifier(topic_arn=None, cert_hosts=AWS)
    assert checker.allowed_url(url) is True
    checker.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.s3.amazonaws.com/cert.pem",
        "https://sns.s3-external-1.amazonaws.com/cert.pem",
        "https://sns.s3.us-east-1.amazonaws.com/cert.pem",
        "https://sns.evil.example.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com:99999/cert.pem",
    ],
)
def test_sns_verifier_wildcard_is_one_dns_label_and_the_port_is_valid(url: str) -> None:
    # given S3 hosts a stranger can own a bucket on ("sns" + ".s3…" ends in amazonaws.com),
    # or a port no URL can have
    checker = SnsVerifier(topic_arn=None, cert_hosts=AWS)
    # then they are not SNS certificate hosts
    assert checker.allowed_url(url) is False
    checker.close()


def test_sns_never_plain_http_even_to_an_allowed_loopback_host() -> None:
    checker = SnsVerifier(topic_arn=None, cert_hosts=("127.0.0.1", "10.0.0.5", "sns.*.example"))
    assert not checker.allowed_url("http://127.0.0.1:8080/cert.pem")
    assert not checker.allowed_url("http://10.0.0.5/cert.pem")
    assert not checker.allowed_url("http://sns.a.example/cert.pem")
    assert checker.allowed_url("https://10.0.0.5/cert.pem")
    checker.close()


# -- what the SNS verifier actually fetches --------------------------------------------------
def signed_notification(sns: IvvySimulator, **changes: Any) -> dict[str, Any]:
    inner = sns.inner_message("OpportunityDeleted", "7", None, None, (0, ""))
    message = sns.sns_message(inner)
    message.update(changes)
    return sns.topic.sign(message)


@pytest.mark.parametrize(
    "where",
    [
        "localhost",
        "userinfo",
        "other_scheme_host",
    ],
)
def test_sns_certificate_off_the_allowed_hosts_is_never_fetched(
    sns: IvvySimulator, elsewhere: Elsewhere, verifier: SnsVerifier, where: str
) -> None:
    # given a message whose SigningCertURL points at a host nobody allowed
    url = {
        "localhost": other_host(elsewhere),
        "userinfo": f"http://127.0.0.1@localhost:{elsewhere.url.rsplit(':', 1)[1]}/x.pem",
        "other_scheme_host": f"https://127.0.0.1.{elsewhere.url.rsplit(':', 1)[1]}.nip.io/x",
    }[where]
    before = len(elsewhere.log)
    message = {**signed_notification(sns), "SigningCertURL": url}
    # then it is refused and that host saw nothing
    with pytest.raises(Rejected) as refused:
        verifier.verify(message)
    assert refused.value.status == 401
    assert len(elsewhere.log) == before


def test_sns_subscribe_url_off_the_allowed_hosts_is_never_visited(
    sns: IvvySimulator, elsewhere: Elsewhere, verifier: SnsVerifier
) -> None:
    # given a correctly signed confirmation whose SubscribeURL points elsewhere
    confirmation = sns.subscription_confirmation()
    confirmation["SubscribeURL"] = other_host(elsewhere, "/confirm?token=t")
    confirmation = sns.topic.sign(confirmation)
    before = len(elsewhere.log)
    # when it is confirmed / then refused, and the other host was never visited
    with pytest.raises(Rejected) as refused:
        verifier.confirm_subscription(confirmation)
    assert refused.value.status == 401
    assert len(elsewhere.log) == before
    assert not sns.confirmed


@pytest.mark.parametrize("fetch", ["certificate", "subscribe"])
def test_sns_redirects_are_not_followed(
    sns: IvvySimulator, elsewhere: Elsewhere, verifier: SnsVerifier, fetch: str
) -> None:
    # given the allowed host answering 302 to another host
    path = "/sns/cert.pem" if fetch == "certificate" else "/sns/confirm"
    sns.faults.add(
        "error",
        status=302,
        headers={"Location": other_host(elsewhere, "/redirected")},
        path_contains=path,
    )
    before = len(elsewhere.log)
    # when the verifier fetches it
    with pytest.raises(Rejected):
        if fetch == "certificate":
            verifier.verify(signed_notification(sns))
        else:
            verifier.confirm_subscription(sns.subscription_confirmation())
    sns.faults.clear()
    # then it stops at the redirect: the other host saw nothing
    assert len(elsewhere.log) == before


# -- vendor calls -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Any]]:
    started = start_simulators()
    yield started
    for sim in started.values():
        sim.stop()


@pytest.fixture(scope="module")
def adapters(sims: dict[str, Any]) -> Iterator[dict[str, VendorAdapter]]:
    settings = from_env(stack_env("redis://127.0.0.1:1/0", sims))
    built = build_adapters(settings, lambda _vendor: None)
    yield built
    for adapter in built.values():
        adapter.close()


HOSTILE_IDS = [
    "//{elsewhere}/stolen",
    "http://{elsewhere}/stolen",
    "@{elsewhere}/stolen",
    "%2F%2F{elsewhere}%2Fstolen",
    "../../../../{elsewhere}/stolen",
    "\\\\{elsewhere}\\stolen",
    "1#@{elsewhere}/stolen",
    "1?next=http://{elsewhere}/stolen",
]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_vendor_calls_go_only_to_the_configured_host(
    adapters: dict[str, VendorAdapter], elsewhere: Elsewhere, vendor: str, hostile: str
) -> None:
    # given a vendor id from a webhook that names another host
    vendor_id = hostile.format(elsewhere=elsewhere.url.removeprefix("http://"))
    before = len(elsewhere.log)
    # when the worker fetches that record (it may refuse the id, or find nothing)
    try:
        adapters[vendor].fetch(vendor_id)
    except (OppsyncError, ValueError):
        pass
    # then no request left for the other host
    assert len(elsewhere.log) == before


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_redirect_is_not_followed(
    sims: dict[str, Any],
    adapters: dict[str, VendorAdapter],
    elsewhere: Elsewhere,
    vendor: str,
) -> None:
    # given a vendor answering every request with 302 to another host
    sim = sims[vendor]
    sim.faults.add(
        "error", status=302, times=50, headers={"Location": other_host(elsewhere, "/stolen")}
    )
    before = len(elsewhere.log)
    # when the worker fetches a record / then nothing was fetched from the other host
    try:
        adapters[vendor].fetch("1")
    except OppsyncError:
        pass
    finally:
        sim.faults.clear()
    assert len(elsewhere.log) == before


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_redirect_is_an_error(
    sims: dict[str, Any], adapters: dict[str, VendorAdapter], elsewhere: Elsewhere, vendor: str
) -> None:
    # given a vendor answering every request with 302 (and a JSON body that looks like data)
    sim = sims[vendor]
    sim.faults.add(
        "error", status=302, times=50, headers={"Location": other_host(elsewhere, "/stolen")}
    )
    # when the worker fetches a record / then it fails, rather than reading the 302's body
    try:
        with pytest.raises(OppsyncError) as failed:
            adapters[vendor].fetch("1")
    finally:
        sim.faults.clear()
    assert "302" in str(failed.value) or "redirect" in failed.value.reason


def test_elsewhere_really_answers(elsewhere: Elsewhere) -> None:
    """The checks above would pass vacuously if the other host could not be reached."""
    import httpx

    answer = httpx.get(other_host(elsewhere, "/probe"), timeout=2.0)
    assert json.loads(answer.text)["path"] == "probe"
    assert elsewhere.log[-1].path == "/probe"
