"""The benchmark's simulators keep connections alive and still enforce auth and their quota."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from worker.bench.sims import RemoteSimulator
from worker.sandbox.simulators.leadway import API_VERSION, LeadwaySimulator

PIPELINES = "/opportunities/pipelines?locationId=ve9EPM428h8vShlRW1KT"
HEADERS = {"Authorization": "Bearer leadway-test-token", "Version": API_VERSION}


def local_port(answer: httpx.Response) -> int:
    """The client's end of the TCP connection the answer came over."""
    return int(answer.extensions["network_stream"].get_extra_info("client_addr")[1])


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteSimulator]:
    # What the benchmark runs: a simulator in a child process, here with a quota of 2.
    sim = RemoteSimulator("leadway", latency=0.0, rate_limit=(2, 60.0))
    yield sim
    sim.stop()


def test_a_bench_simulator_reuses_one_connection_and_enforces_auth_and_quota(
    remote: RemoteSimulator,
) -> None:
    with httpx.Client(base_url=remote.url, timeout=5.0) as client:
        first = client.get(PIPELINES, headers=HEADERS)
        second = client.get(PIPELINES, headers=HEADERS)
        assert first.status_code == second.status_code == 200, first.text
        assert "close" not in first.headers.get("connection", "").lower()
        assert local_port(first) == local_port(second)  # one TCP connection for both

        denied = client.get(PIPELINES)  # no credentials
        assert denied.status_code == 401
        over = client.get(PIPELINES, headers=HEADERS)  # 3rd of a quota of 2 (a 401 counts for none)
        assert over.status_code == 429
        assert local_port(denied) == local_port(over) == local_port(first)


def test_in_process_keep_alive_server_stops() -> None:
    sim = LeadwaySimulator(rate_limit=None).serve(keep_alive=True, threads=4)
    url = sim.url
    try:
        with httpx.Client(base_url=sim.url, timeout=5.0) as client:
            assert client.get(PIPELINES, headers=HEADERS).status_code == 200
            assert client.get(PIPELINES).status_code == 401
        assert [entry.status for entry in sim.log] == [200, 401]
    finally:
        sim.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + PIPELINES, timeout=1.0)
