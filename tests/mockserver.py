"""Shared plumbing of the mock HTTP APIs: a loopback server thread and a base request handler.

A mock subclasses ``LoopbackMock`` and a handler subclasses ``MockHandler``; the mock owns
the server, records every request and can be closed while handlers still hang or stream.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar, cast

__all__ = ["LoopbackMock", "MockHandler", "MockServer"]

_Mock = TypeVar("_Mock", bound="LoopbackMock")


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    mock: LoopbackMock

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-request is normal here (killed CLIs, close()); real bugs still print.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class MockHandler(BaseHTTPRequestHandler, Generic[_Mock]):
    """Base handler; ``_Mock`` is the mock class serving it, so ``self.mock`` is typed."""

    # HTTP/1.1 so clients may keep the connection alive, like with the real APIs.
    protocol_version = "HTTP/1.1"
    server: MockServer
    json_type = "application/json"
    # Header carrying a fresh request id on every answer, as the real API sends it; None for none.
    request_id_header: str | None = "x-request-id"

    @property
    def mock(self) -> _Mock:
        return cast(_Mock, self.server.mock)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def setup(self) -> None:
        super().setup()
        self.mock._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.mock._track(self.connection, add=False)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _parse(self, body: bytes) -> Any:
        """The request body as JSON, or None when empty or not JSON."""
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def _extra_fields(self, path: str) -> dict[str, Any]:
        """Fields a mock adds to each recorded request."""
        return {}

    def _record(self, body: bytes) -> tuple[str, dict[str, Any] | None]:
        path, _, query = self.path.partition("?")
        parsed = self._parse(body)
        self.mock._record(
            {
                **self._extra_fields(path),
                "method": self.command,
                "path": path,
                "query": query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "json": parsed,
            }
        )
        return path, parsed if isinstance(parsed, dict) else None

    def _send_request_id(self) -> None:
        if self.request_id_header:
            self.send_header(self.request_id_header, "req_mock_" + uuid.uuid4().hex[:24])

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.json_type)
        self.send_header("Content-Length", str(len(data)))
        self._send_request_id()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_stream(self, content_type: str = "text/event-stream; charset=utf-8", *, no_cache: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if no_cache:
            self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._send_request_id()
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        # Chunked transfer so each SSE event is flushed on its own, as the real APIs do.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _pause(self, delay: float) -> bool:
        """Wait `delay` seconds before a delta; True (and drop the connection) if the mock closes meanwhile."""
        if delay > 0 and self.mock._closing.wait(delay):
            self.close_connection = True
            return True
        return False

    def _hang(self) -> None:
        """Say nothing until the mock closes; then drop the connection."""
        self.mock._closing.wait()
        self.close_connection = True


class LoopbackMock:
    """A mock API served from a daemon thread on 127.0.0.1, on a free port.

    Attributes tests may change at any time (each request reads them afresh): ``scenario``,
    ``token_delay`` and ``text``. ``requests`` holds every request received, oldest first.
    """

    def __init__(
        self, handler: type[MockHandler], *, scenario: str, token_delay: float, text: str, thread_name: str
    ) -> None:
        self.scenario = scenario
        self.token_delay = token_delay
        self.text = text
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = MockServer(("127.0.0.1", 0), handler)
        self._server.mock = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=thread_name, daemon=True
        )
        self._thread.start()

    def _awaited_requests(self) -> list[dict[str, Any]]:
        """The requests ``wait_for_requests`` counts."""
        with self._lock:
            return list(self.requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` of the mock's main requests arrived (for hang/cancel tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._awaited_requests()) >= n:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Stop serving; releases hanging handlers and drops open connections."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            # Wakes handler threads parked on idle keep-alive connections.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self: _Mock) -> _Mock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
