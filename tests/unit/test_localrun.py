"""``oppsync run`` and ``oppsync demo`` refuse a port something already listens on, before
starting anything."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from worker.sandbox import demo, localrun


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port another process serves, as a second ``oppsync run``'s web would find it:
    listening with SO_REUSEPORT, like the Procfile's gunicorn."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        server.bind(("0.0.0.0", 0))
        server.listen()
        yield server.getsockname()[1]


def test_localrun_port_taken_is_refused_before_anything_starts(
    listening_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    monkeypatch.setattr(localrun, "_redis", lambda env: started.append("redis"))
    monkeypatch.setattr(localrun.subprocess, "Popen", lambda *a, **k: started.append("honcho"))
    assert localrun.run_stack(sandbox=True, port=listening_port) == 2
    assert started == []
    assert f"Port {listening_port} is already in use" in capsys.readouterr().err


def test_localrun_flower_port_taken_is_refused_too(
    listening_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWER_PORT", str(listening_port))
    with socket.socket() as free:
        free.bind(("0.0.0.0", 0))
        web_port = free.getsockname()[1]  # free again once closed
    assert demo.demo(port=web_port, exit_when_converged=True) == 2
    assert "choose another with FLOWER_PORT" in capsys.readouterr().err


def test_localrun_port_free_once_its_listener_is_gone() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        port = server.getsockname()[1]
        assert localrun.port_in_use(port)
    assert not localrun.port_in_use(port)
