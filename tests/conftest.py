"""Fixtures shared by every test: a private Redis server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.sandbox.embedded_redis import EmbeddedRedis, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(directory=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
