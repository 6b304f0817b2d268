"""Running the daemon under uvicorn, with a shutdown that leaves no tool process behind, and
deadlines for slow clients.

On SIGTERM or Ctrl-C uvicorn stops accepting connections; runs in flight then get
`shutdown_timeout` seconds to finish, after which they are cancelled (their process
groups terminated, then killed) and their clients told so. Any group still registered
when the interpreter exits is killed by llmrun's process layer. The daemon's private files
go when it stops, SIGTERM included; a start kills what the tools of an llmrun killed
outright left behind and removes its files (see llmrun/private.py).

uvicorn waits for a request as long as its client takes to send it, so a client that sends
its headers a byte at a time holds a connection (and a file descriptor) for ever. The
HTTP protocol here adds read deadlines and a cap on open connections (see ReadDeadlines).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .. import private, process
from ..errors import ConfigError
from ..runners.base import Runner
from . import request_ids
from .app import ServerState, create_app
from .settings import ServerSettings

log = logging.getLogger("llmrun.server")

# Beyond the drain deadline: time for cancelled runs to kill their tools (SIGTERM, grace, SIGKILL).
CLEANUP_SECONDS = 10.0

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTPProtocol
else:
    _HTTPProtocol = object  # the mixin's base is uvicorn's protocol, h11 or httptools: see http_protocol()

TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 26\r\nretry-after: 1\r\nx-should-retry: true\r\nconnection: close\r\n\r\n"
    b"too many open connections\n"
)


class ReadDeadlines(_HTTPProtocol):
    """Read deadlines and a connection cap, mixed into uvicorn's HTTP protocol.

    - The request line and headers must arrive within `header_timeout` of the connection's
      start, or of the first byte of a later request on it (however many bytes trickle in).
    - A body may pause at most `body_timeout` between reads, and must be complete within
      `body_total_timeout` of its head. Time in which the server itself holds reading (a
      full buffer the app has not read yet) does not count.
    - Once a request is read, nothing here limits its answer: a stream may last for hours.
      Idle keep-alive connections are closed by uvicorn after `timeout_keep_alive`.

    A connection past a deadline is closed. Beyond `max_connections` open connections, a new
    one is answered 503 and closed at once.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    body_total_timeout = 120.0
    max_connections = 512

    _deadline: asyncio.TimerHandle | None = None
    _waiting_for = ""  # "head", "body", or "" while the app has the request
    _body_cycle: object = None  # the request whose body is being read
    _body_due = 0.0  # loop time by which that body must be complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refusing a connection: %d connections are open", len(self.connections) - 1)
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(received=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def _watch(self, *, received: bool = False) -> None:
        """Set the deadline for what the connection waits for now."""
        cycle = self.cycle
        if self.transport.is_closing():
            self._set_deadline(None)
        elif cycle is None or cycle.response_complete:
            if self._waiting_for == "head":
                pass  # armed once per request: trickling bytes do not extend it
            elif cycle is None or received:  # a new connection, or the next request begins
                self._waiting_for = "head"
                self._set_deadline(self.header_timeout)
            else:  # idle between requests: uvicorn's keep-alive timeout applies
                self._waiting_for = "idle"
                self._set_deadline(None)
        elif cycle.more_body:
            now = self.loop.time()
            if self._waiting_for != "body" or self._body_cycle is not cycle:
                self._waiting_for, self._body_cycle, self._body_due = "body", cycle, now + self.body_total_timeout
            self._set_deadline(min(self.body_timeout, self._body_due - now))
        else:
            self._waiting_for, self._body_cycle = "", None
            self._set_deadline(None)

    def _set_deadline(self, seconds: float | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if seconds is None else self.loop.call_later(max(0.0, seconds), self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting_for == "body" and self.flow.read_paused:
            # The app has not read what came: the server is the slow one.
            self._body_due = max(self._body_due, self.loop.time() + self.body_timeout)
            self._set_deadline(self.body_timeout)
            return
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closing the connection of %s: its request's %s did not arrive in time", client, self._waiting_for)
            self.transport.close()


def http_protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the deadlines of `settings`."""
    fields = {
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "body_total_timeout": settings.body_total_timeout,
        "max_connections": settings.max_connections,
    }
    return type("LlmrunHTTPProtocol", (ReadDeadlines, AutoHTTPProtocol), fields)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with llmrun's drain between closing the listeners and the app's shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What exists once the app has started (modules, the app, pydantic's validators) lives as
        # long as the process. Left to the collector, each full collection walks it all, a pause
        # of tens of milliseconds for every stream at once; frozen, a collection walks only what
        # requests made. Once per process (a test process starts many servers).
        if gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        import asyncio

        draining = asyncio.ensure_future(
            self.state.inflight.drain(self.state.settings.shutdown_timeout, cleanup=CLEANUP_SECONDS)
        )
        try:
            await super().shutdown(sockets)
        finally:
            await draining


def make_server(
    settings: ServerSettings,
    *,
    runners: Mapping[str, Runner] | None = None,
    log_level: str = "info",
    access_log: bool = True,
    **uvicorn_options: Any,
) -> DrainingServer:
    """The server for `settings`; `uvicorn_options` go to uvicorn.Config (e.g. log_config=None)."""
    app = create_app(settings, runners=runners)
    config = uvicorn.Config(
        app,
        # asyncio's own loop even where uvloop is installed: the process layer's exit codes and
        # kills rely on asyncio's child handling (under uvloop a tool's exit reads as a SIGKILL).
        **{"loop": "asyncio", **uvicorn_options},
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        http=http_protocol(settings),
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout + CLEANUP_SECONDS) + 1,
    )
    return DrainingServer(config, app.state.llmrun)


def listening_sockets(settings: ServerSettings) -> list[socket.socket] | None:
    """The sockets to serve on when there is an Ollama port besides the main one (the same app
    answers on both); None leaves the binding of the one port to uvicorn."""
    if settings.ollama_port is None:
        return None
    sockets: list[socket.socket] = []
    for port in (settings.port, settings.ollama_port):
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on the accepted connections.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host.strip("[]"), port))
        except OSError as exc:
            for opened in (*sockets, sock):
                opened.close()
            raise ConfigError(f"cannot listen on {settings.host}:{port}: {exc.strerror}") from None
        sockets.append(sock)
    return sockets


def serve(settings: ServerSettings, *, log_level: str = "info", **kwargs: Any) -> None:
    """Run until SIGTERM or Ctrl-C."""
    _configure_logging(log_level)
    server = make_server(settings, log_level=log_level, **kwargs)
    sockets = listening_sockets(settings)
    key = "required" if settings.api_key else "not required"
    log.info(
        "llmrun serve on http://%s:%d (API key %s; tools: %s; agent tools %s)",
        settings.host,
        settings.port,
        key,
        settings.tools,
        "allowed" if settings.allow_tools else "off",
    )
    if settings.ollama_port is not None:
        log.info("the Ollama API also on http://%s:%d", settings.host, settings.ollama_port)
    # What an llmrun killed outright left behind: its tools' own children, its private files.
    if killed := process.kill_orphaned_tools():
        log.warning("killed %d process group(s) left by an llmrun that died: %s", len(killed), killed)
    private.sweep()
    with private.cleanup_on_signals():
        server.run(sockets=sockets)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("llmrun")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     [%(request_id)s] %(message)s"))
        handler.addFilter(request_ids.LOG_FILTER)  # records of any logger below llmrun get the id
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
