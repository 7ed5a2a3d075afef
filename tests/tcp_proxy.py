"""A TCP proxy a test controls, for cutting a client off a server.

    proxy = TcpProxy(("127.0.0.1", broker_port), listen_port=port)
    proxy.start()     # accept and forward
    proxy.cut()       # drop every connection and refuse new ones
    proxy.restore()   # accept again, on the same port

``cut()`` closes the listening socket (a connect is refused, as when the
server's host is unreachable at the TCP level) and shuts down both sides
of every forwarded connection (a client sees its connection reset or
closed mid-request). ``restore()`` listens again on the same port, so a
client that keeps the address reconnects by itself. Threads only: one
accept thread, and one thread per direction of each connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Pair:
    client: socket.socket
    upstream: socket.socket
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forwards connections on ``127.0.0.1:listen_port`` (0: a free port,
    see ``port``) to ``target``. Counts accepted connections in
    ``accepted`` and cuts in ``cuts``."""

    def __init__(self, target: tuple[str, int], *, listen_port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = listen_port
        self.accepted = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` to give clients."""
        return f"{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (on ``port``, or a free one the first time) and forward."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            self.port = int(listener.getsockname()[1])
            self._listener = listener
            self._accept_thread = threading.Thread(target=self._accept, args=(listener,),
                                                   name=f"proxy-accept-{self.port}", daemon=True)
            self._accept_thread.start()

    restore = start

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
            self.cuts += 1
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
            listener.close()
        for pair in pairs:
            pair.close()
        if self._accept_thread is not None:
            self._accept_thread.join(5)

    def stop(self) -> None:
        self.cut()

    def open_connections(self) -> int:
        with self._lock:
            return sum(not p.closed.is_set() for p in self._pairs)

    # --- forwarding --------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    pair.close()
                    return
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink),
                                 name=f"proxy-pump-{self.port}", daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not pair.closed.is_set():
                data = source.recv(_CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
