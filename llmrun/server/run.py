"""Running the daemon under uvicorn, with a shutdown that leaves no tool process behind.

On SIGTERM or Ctrl-C uvicorn stops accepting connections; runs in flight then get
`shutdown_timeout` seconds to finish, after which they are cancelled (their process
groups terminated, then killed) and their clients told so. Any group still registered
when the interpreter exits is killed by llmrun's process layer.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

import uvicorn

from ..runners.base import Runner
from .app import ServerState, create_app
from .settings import ServerSettings

log = logging.getLogger("llmrun.server")

# Beyond the drain deadline: time for cancelled runs to kill their tools (SIGTERM, grace, SIGKILL).
CLEANUP_SECONDS = 10.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with llmrun's drain between closing the listeners and the app's shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

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
        **uvicorn_options,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout + CLEANUP_SECONDS) + 1,
    )
    return DrainingServer(config, app.state.llmrun)


def serve(settings: ServerSettings, *, log_level: str = "info", **kwargs: Any) -> None:
    """Run until SIGTERM or Ctrl-C."""
    _configure_logging(log_level)
    server = make_server(settings, log_level=log_level, **kwargs)
    key = "required" if settings.api_key else "not required"
    log.info(
        "llmrun serve on http://%s:%d (API key %s; tools: %s; agent tools %s)",
        settings.host,
        settings.port,
        key,
        settings.tools,
        "allowed" if settings.allow_tools else "off",
    )
    server.run()


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("llmrun")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
