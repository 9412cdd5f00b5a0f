"""A TCP proxy in front of a test server that can cut the connection at a chosen request, so a
client sees a real network failure (a reset mid-conversation) without any code patched.

    with run_fault_proxy("127.0.0.1", moto_port) as proxy:
        client endpoint = proxy.url
        proxy.cut_after(b"list-type=2", 1)   # the 2nd listing request and all after it fail
        proxy.heal()                         # pass everything again

Requests are recognised by a byte pattern in what the client sends (an HTTP request line, a
query parameter). The count runs over every connection, since clients reuse and reopen them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; see ``cut_after``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pattern: bytes | None = None
        self._allowed = 0
        self.seen = 0  # requests that matched the pattern since ``cut_after``
        self.cut = 0  # connections cut
        self._closing = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, pattern: bytes, allowed: int) -> None:
        """Let ``allowed`` requests containing ``pattern`` through; cut the connection of
        every later one (and refuse nothing else)."""
        with self._lock:
            self._pattern, self._allowed, self.seen = pattern, allowed, 0

    def heal(self) -> None:
        with self._lock:
            self._pattern = None

    def _admit(self, data: bytes) -> bool:
        with self._lock:
            if self._pattern is None or self._pattern not in data:
                return True
            self.seen += data.count(self._pattern)
            if self.seen <= self._allowed:
                return True
            self.cut += 1
            return False

    def serve(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        try:
            while data := source.recv(65536):
                if inspect and not self._admit(data):
                    # A reset, as when a server or a middlebox dies mid-conversation.
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()


@contextmanager
def run_fault_proxy(host: str, port: int) -> Iterator[FaultProxy]:
    """A ``FaultProxy`` to ``host:port``, serving for the block."""
    proxy = FaultProxy((host, port))
    thread = threading.Thread(target=proxy.serve, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
