"""Pytest plugin: a real Redis server for integration tests.

Fixtures:
- `redis_server`: Debian's `redis-server` started for the session as a user
  process on a free loopback port, without persistence (`--save ''
  --appendonly no`), in the foreground of its own process group, stopped at
  teardown. Its log is kept (path in the terminal summary) if a test failed.
- `redis_url`: `redis://127.0.0.1:PORT/N` with a database of its own for
  each test (flushed first), so tests never see each other's keys.

If `redis-server` is not installed the fixture fails and says how to
install it (`apt-get install redis-server`; `infra/bootstrap.sh` does it
when it runs as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest

_KEPT = pytest.StashKey[list[Path]]()
_DATABASES = 16  # redis' default number of databases
_next_db = count()


@dataclass(frozen=True)
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path, attempts: int = 3) -> RedisServer:
    """Start `redis-server` on a free loopback port (retrying if another
    process took the port first); fails the test if it is
    missing or never answers (the test fails, saying what to do)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `apt-get install -y redis-server` "
                    "(infra/bootstrap.sh installs it when run as root)", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "redis.log"
    for _ in range(attempts):
        port = _free_port()
        log = log_path.open("ab")
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir),
             "--databases", str(_DATABASES)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if _ready(port):
                return RedisServer(port, process, log_path)
            time.sleep(0.05)
        _stop(process)
    pytest.fail(f"redis-server did not start; see {log_path}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running redis-server for the session (loopback, random port)."""
    failed_before = request.session.testsfailed
    workdir = tmp_path_factory.mktemp("redis")
    server = start_redis(workdir)
    try:
        yield server
    finally:
        _stop(server.process)
        if request.session.testsfailed > failed_before:
            request.config.stash.setdefault(_KEPT, []).append(server.log_path)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL of a freshly flushed database of `redis_server`, new for this
    test (round robin over the server's databases)."""
    import redis

    db = next(_next_db) % _DATABASES
    client = redis.Redis.from_url(redis_server.url(db))
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url(db)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kept = terminalreporter.config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.write_line("redis-server logs kept for failed tests:")
        for path in kept:
            terminalreporter.write_line(f"  {path}")
