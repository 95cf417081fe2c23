"""The receiver keeps to its published OpenAPI description (``GET /openapi.yaml``).

schemathesis reads the description from the running stack (gunicorn, real Redis, the
limiter), generates valid and invalid requests for every operation, and checks each answer:
never a 5xx, only documented status codes, content types, headers and bodies, and invalid
requests refused. Correct signatures cannot be generated without the keys, so "valid input
is accepted" is left to the fuzz and sync tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from worker.sandbox.stack import Stack

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


#: (path, method, how requests are drawn): the webhook route gets invalid requests too.
RUNS = [
    ("/webhooks/{vendor}", "POST", GenerationMode.POSITIVE),
    ("/webhooks/{vendor}", "POST", GenerationMode.NEGATIVE),
    ("/healthz", "GET", GenerationMode.POSITIVE),
    ("/readyz", "GET", GenerationMode.POSITIVE),
    ("/openapi.yaml", "GET", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize(("path", "method", "mode"), RUNS)
def test_receiver_answers_as_its_openapi_says(
    stack: Stack, path: str, method: str, mode: GenerationMode
) -> None:
    # given the description the running receiver serves
    schema = schemathesis.openapi.from_url(f"{stack.web_url}/openapi.yaml")
    operation = schema[path][method]

    # when schemathesis sends it requests drawn from that description
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def answers_conform(case: schemathesis.Case) -> None:
        # then every answer is one the description documents, and none is a 5xx
        case.call_and_validate(checks=CHECKS, timeout=10)

    answers_conform()


def test_receiver_publishes_every_route_and_answer(stack: Stack) -> None:
    # given the served description
    answer = httpx.get(f"{stack.web_url}/openapi.yaml")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/yaml")
    spec = schemathesis.openapi.from_url(f"{stack.web_url}/openapi.yaml").raw_schema
    # then it is OpenAPI 3 and names every route and every answer the receiver gives
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/webhooks/{vendor}", "/healthz", "/readyz", "/openapi.yaml"}
    answers = spec["paths"]["/webhooks/{vendor}"]["post"]["responses"]
    assert set(answers) == {"200", "202", "400", "401", "404", "408", "413", "429", "503"}
    vendors = spec["paths"]["/webhooks/{vendor}"]["post"]["parameters"][0]["schema"]["enum"]
    assert vendors == ["siro", "leadway", "ivvy", "salescaling", "icloudready"]


@pytest.mark.parametrize("size", [1_048_576 + 1, 8 * 1_048_576])
def test_receiver_refuses_an_oversize_chunked_body_over_http(stack: Stack, size: int) -> None:
    # given a body over OPPSYNC_MAX_BODY_BYTES (1 MiB) sent chunked, with no Content-Length
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        while sent < size:
            piece = b"[" * min(64 * 1024, size - sent)
            sent += len(piece)
            yield piece

    # when gunicorn hands it to the receiver
    try:
        answer = httpx.post(
            f"{stack.web_url}/webhooks/siro",
            content=chunks(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        # the server answered and closed before taking the rest: a refusal too
        return
    # then the documented JSON 413
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "too_large"
