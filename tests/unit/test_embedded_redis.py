"""The embedded Redis (``oppsync run``/``demo`` without ``REDIS_URL``) is its owner's only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from worker.sandbox.embedded_redis import start_redis


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_redis_refuses_a_connection_without_its_password(tmp_path: Path) -> None:
    server = start_redis(directory=tmp_path / "redis")
    try:
        # given the server running / when a local user connects without the password
        for password in (None, "guess"):
            stranger = redis.Redis(port=server.port, password=password, socket_timeout=2)
            # then nothing is read or written
            with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
                stranger.lpush("ingest", "forged")
            stranger.close()
        # and the URL handed to the processes works
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


def test_embedded_redis_files_are_the_owners_only(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    folder.mkdir(mode=0o755)
    (folder / "left-by-an-earlier-run.aof").write_text("x")
    (folder / "left-by-an-earlier-run.aof").chmod(0o644)
    server = start_redis(directory=folder, appendonly=True)
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.bgrewriteaof()
        client.close()
    finally:
        server.stop()
    # then the folder is 0700 and every file in it (data, config, password) is 0600
    assert mode(folder) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any("aof" in p.name for p in files if p.name != "left-by-an-earlier-run.aof")
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_embedded_redis_password_is_not_on_its_command_line(tmp_path: Path) -> None:
    server = start_redis(directory=tmp_path / "redis")
    try:
        # every local user can read a process's command line (ps, /proc/<pid>/cmdline)
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.password.encode() not in cmdline
        assert server.password not in server.address
    finally:
        server.stop()


def test_embedded_redis_restart_on_its_folder_keeps_the_password(tmp_path: Path) -> None:
    first = start_redis(directory=tmp_path / "redis")
    url = first.url
    first.stop()
    # when it is started again on the same folder (a restart) / then the old URL still works
    again = start_redis(port=first.port, directory=first.directory)
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        again.stop()
