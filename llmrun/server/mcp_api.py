"""MCP over streamable HTTP at /mcp: llmrun's MCP tools (llmrun/mcp_server.py), run by the daemon.

The guard in front of every route (security.py: Host, Origin, API key, JSON bodies, body
size) is in front of /mcp too, so the SDK's own Host/Origin check is off rather than kept
in agreement with it. The endpoint keeps MCP sessions (the SDK's, in memory, closed after
30 idle minutes): a client cancels a call with a notification that reaches the run only
within its session, and a client that ends its session (DELETE) ends its runs with it.
A client that vanishes without either leaves its run to end by itself.

A `prompt` call is a turn of the daemon's engine, as a Chat Completions request is: the
same limits, warm sessions and tool lockdown (`allow_tools`). Its `session` names a
conversation the daemon keeps, scoped to the API key like `X-Llmrun-Session`; it is never
a tool's own session id, which the daemon takes from no client. `cwd` is refused unless the
daemon allows agent tools: in a directory of the client's choosing, a tool would read that
directory's instructions and settings.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.routing import Route

from ..errors import InvalidRequest, SessionNotFound
from ..runners.base import Runner
from ..types import HealthReport
from . import conversations

if TYPE_CHECKING:
    from ..mcp_server import Question, Run
    from .app import ServerState

log = logging.getLogger("llmrun.server")

PATH = "/mcp"


def mount(app: FastAPI, state: ServerState) -> None:
    """Serve MCP at /mcp on `app`; `running(app)` must wrap the app's lifespan. Without the
    mcp package, the daemon serves everything else and says why /mcp is missing."""
    try:
        from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
        from mcp.server.transport_security import TransportSecuritySettings

        from ..mcp_server import build_server
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("mcp", "mcp_types"):
            raise
        log.warning("no MCP at %s: the mcp package is not installed (pip install 'llmrun-cli[server]')", PATH)
        return
    server = build_server(EngineBackend(state))
    server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=state.settings.max_body_bytes,
    )
    app.state.mcp_sessions = server.session_manager
    # A route of its own at exactly /mcp: a mount would answer only below /mcp/.
    app.router.routes.append(Route(PATH, StreamableHTTPASGIApp(server.session_manager), include_in_schema=False))


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """The MCP endpoint's task group, for the app's lifespan; calls still running at its end are cancelled."""
    manager = getattr(app.state, "mcp_sessions", None)
    if manager is None:
        yield
        return
    async with manager.run():
        yield


class EngineBackend:
    """/mcp's runs: turns of the daemon's engine, with the runners of its pool."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.allow_tools = state.settings.allow_tools
        self.scope = conversations.scope_of(state.settings.api_key)
        self._detected: str | None = None

    def names(self) -> list[str]:
        return self.state.pool.names()

    def runner(self, name: str) -> Runner:
        return self.state.pool.get(name)

    def installed(self, runner: Runner) -> bool:
        return self.state.pool.installed(runner)

    async def default_runner(self) -> str:
        """$LLMRUN_RUNNER or the config file's, else the first ready runner (found once, as
        `llmrun chat` finds it: one known to be logged in before one that cannot tell)."""
        from ..cli.selection import configured_runner, no_usable_runner

        if configured := configured_runner():
            return configured
        if self._detected is None:
            reports = await self.state.health_reports()
            ready = [r for r in reports if r.ok and r.authenticated is not False]
            ready.sort(key=lambda r: not r.authenticated)  # stable: registry order otherwise
            if not ready:
                raise no_usable_runner(reports)
            self._detected = ready[0].runner
        return self._detected

    async def health(self, names: list[str]) -> list[HealthReport]:
        reports = {r.runner: r for r in await self.state.health_reports()}
        return [reports.get(name) or HealthReport(runner=name, status="error", message="not checked") for name in names]

    async def start(self, question: Question) -> Run:
        from ..mcp_server import Run

        if question.cwd and not self.allow_tools:
            raise InvalidRequest(
                "`cwd` is refused: the daemon runs the tools in its own directory",
                hint="start the daemon with --allow-tools to let its clients choose the directory",
            )
        spec = question.runner or await self.default_runner()
        model = f"{spec}/{question.model}" if question.model else spec
        name = question.session or secrets.token_urlsafe(18)
        conversation = conversations.for_request(self.scope, name)
        turn = self.state.engine.prepare(question.request(), model, conversation=conversation, stream=True)
        if question.session and not self._holds(turn.runner, turn.key):
            raise SessionNotFound(
                f"{turn.runner.name} has no conversation {question.session!r} here (or it has expired)",
                runner=turn.runner.name,
                hint="leave `session` out to start a new conversation",
            )
        return Run(
            turn.runner,
            self.state.engine.stream(turn),
            lambda response: name if self._holds(turn.runner, turn.key) else None,
        )

    def _holds(self, runner: Runner, key: str | None) -> bool:
        """Whether the daemon keeps the conversation: its tool session stored, or its warm process alive."""
        if key is None:
            return False
        return self.state.store.get(runner.name, key) is not None or self.state.warm.find(runner.name, key) is not None
