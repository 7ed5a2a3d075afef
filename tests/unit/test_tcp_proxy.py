"""The tests' TCP proxy (tests/tcp_proxy.py) against a local echo server:
it forwards, a cut drops open connections and refuses new ones, a restore
accepts again on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def test_the_proxy_forwards_cuts_and_restores_on_the_same_port(echo_port):
    with TcpProxy(("127.0.0.1", echo_port)) as proxy:
        port = proxy.port
        assert roundtrip(port, b"hello" * 1000) == b"hello" * 1000
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.sendall(b"x")
        assert held.recv(1) == b"x"

        proxy.cut()
        # The open connection is dropped: the client sees EOF or a reset.
        with contextlib.suppress(ConnectionResetError):
            assert held.recv(1) == b""
        held.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)

        proxy.restore()
        assert proxy.port == port
        assert roundtrip(port, b"again") == b"again"
        assert proxy.cuts == 1 and proxy.accepted == 3
