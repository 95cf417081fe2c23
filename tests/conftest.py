"""Fixtures shared by every test: a private Redis server for the session, and the seed of
the simulators' answer variants (printed in the header, replayed with the env var)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from worker.sandbox.embedded_redis import EmbeddedRedis, start_redis

#: Seeds every simulator's answer variants this run (tests/simulators/base.Variants): a new
#: one per run unless ``OPPSYNC_VARIANTS_SEED`` gives it, so a failure replays with it.
VARIANTS_SEED = int(
    os.environ.get("OPPSYNC_VARIANTS_SEED") or random.SystemRandom().randrange(2**31)
)


def pytest_report_header(config: pytest.Config) -> str:
    seed = VARIANTS_SEED
    return f"simulator answer variants: seed {seed} (replay: OPPSYNC_VARIANTS_SEED={seed})"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(directory=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
