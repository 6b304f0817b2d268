"""The FastAPI application: the OpenAI, Anthropic and Ollama APIs and MCP over llmrun's runners."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from .. import __version__
from ..errors import InvalidRequest, LlmrunError, RunnerError
from ..parameters import ignored_params_header
from ..routing import Route, route_header
from ..runners.base import Runner
from ..types import HealthReport
from . import (
    anthropic_api,
    conversations,
    mcp_api,
    metrics,
    multiplex,
    ollama_api,
    openai_api,
    request_ids,
    responses_api,
)
from .attachments import fetch_images
from .common import MethodNotAllowed, PathNotFound, parse_json_body
from .limits import Limiter
from .response import AnswerHeader, Inflight, Output, Pace, RunResponse, error_json
from .runners import RunnerPool
from .security import Guard, error_parts
from .sessions import SessionStore
from .settings import ServerSettings
from .turns import Engine, Turn
from .warm import GroupRecord, WarmPool

log = logging.getLogger("llmrun.server")

SESSION_HEADER = "x-llmrun-session"

_CHAT_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "RUNNER/MODEL, RUNNER:MODEL, a runner, or an alias; a list asks each at once",
        },
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {},
        "response_format": {"type": "object"},
        "temperature": {"type": "number"},
        "max_tokens": {"type": "integer"},
        "user": {"type": "string", "description": "an end user's id (accepted, not used)"},
    },
}
_MESSAGES_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "RUNNER/MODEL, RUNNER:MODEL, a runner, or an alias"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "max_tokens": {"type": "integer"},
        "stream": {"type": "boolean"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object", "properties": {"user_id": {"type": "string"}}},
    },
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class ServerState:
    """What the routes share: settings, runners, limits, sessions, warm processes, runs in flight."""

    def __init__(
        self, settings: ServerSettings, runners: Mapping[str, Runner] | None, store: SessionStore | None
    ) -> None:
        self.settings = settings
        self.pool = RunnerPool(settings.aliases, runners, blocked=_runners_that_would_loop(settings))
        self.limiter = Limiter(
            settings.max_concurrency, settings.max_per_runner, settings.max_queue, settings.queue_timeout
        )
        self.store = store or SessionStore(settings.sessions)
        self.store.prune()
        # The record of warm process groups lives next to the sessions database.
        record = GroupRecord(Path(self.store.path).parent / "warm") if self.store.path != ":memory:" else None
        self.warm = WarmPool(settings, self.pool, record)
        self.engine = Engine(settings, self.pool, self.limiter, self.store, self.warm)
        self.inflight = Inflight()
        self._ready: tuple[float, list[HealthReport]] | None = None
        self._ready_lock = asyncio.Lock()

    def answer(self, output: Output, turn: Turn, *, headers: dict[str, str] | None = None) -> RunResponse:
        """The response that runs `turn` and renders it with `output`: a stream or one body."""
        sent: dict[str, str | AnswerHeader] = {"x-llmrun-runner": turn.runner.name, **(headers or {})}
        sent["x-llmrun-ignored-params"] = ignored_params_header
        if isinstance(turn.runner, Route):
            sent["x-llmrun-route"] = route_header  # who answered, once the answer has begun
        if turn.stream:
            pace = Pace(self.settings.first_chunk_grace, self.settings.keepalive_interval)
            stream = lambda: self.engine.stream(turn)  # noqa: E731
            return RunResponse(output, self.inflight, stream=stream, headers=sent, pace=pace)
        return RunResponse(output, self.inflight, complete=lambda: self.engine.complete(turn), headers=sent)

    async def health_reports(self) -> list[HealthReport]:
        """Every runner's HealthReport, checked at most once per `ready_cache_seconds`."""
        async with self._ready_lock:
            now = time.monotonic()
            if self._ready is not None and now - self._ready[0] < self.settings.ready_cache_seconds:
                return self._ready[1]
            runners = []
            for name in self.pool.names():
                try:
                    runners.append(self.pool.get(name))
                except LlmrunError as exc:
                    log.warning("runner %s cannot be loaded: %s", name, exc)
            reports = await asyncio.gather(*(r.health() for r in runners), return_exceptions=True)
            checked = [
                report
                if isinstance(report, HealthReport)
                else HealthReport(runner=runner.name, status="error", message=f"health check failed: {report}")
                for runner, report in zip(runners, reports, strict=True)
            ]
            self._ready = (time.monotonic(), checked)
            return checked

    async def models(self) -> list[tuple[str, str, str]]:
        """(id, runner, display name) of every model of every installed runner, then the aliases and routes."""
        found: list[tuple[str, str, str]] = []
        for name in self.pool.names():
            try:
                runner = self.pool.get(name)
            except LlmrunError:
                continue
            if not self.pool.installed(runner):
                continue
            try:
                infos = await runner.available_models()
            except RunnerError:
                infos = runner.known_models()
            found += [(f"{runner.name}/{m.id}", runner.name, m.name or m.id) for m in infos]
        for alias, spec in self.settings.aliases.items():
            found.append((alias, spec.partition("/")[0] or "alias", f"{alias} → {spec}"))
        for name, targets in self.pool.routes.items():
            found.append((name, "route", f"{name} → {', '.join(targets)}"))
        return found


def ollama_cli_port(ollama_host: str | None) -> int:
    """The port the `ollama` command talks to: OLLAMA_HOST's ("host", "host:port" or a URL), else 11434."""
    value = (ollama_host or "").strip()
    try:
        return urlsplit(value if "://" in value else f"http://{value}").port or 11434
    except ValueError:
        return 11434


def _runners_that_would_loop(settings: ServerSettings) -> dict[str, str]:
    """Serving the Ollama API on the port the `ollama` command uses sends that runner's requests
    (its model listing included, which /api/tags itself asks for) back here, without end."""
    if settings.ollama_port is None or settings.ollama_port != ollama_cli_port(os.environ.get("OLLAMA_HOST")):
        return {}
    reason = (
        f"the ollama runner is off in this server: its `ollama` command talks to port {settings.ollama_port}, "
        "where this server answers as Ollama"
    )
    log.warning("%s", reason)
    return {"ollama": reason}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        raw = await request.body()
    except ClientDisconnect:
        # Nobody is left to read the answer; a typed error keeps the logs quiet.
        raise InvalidRequest("the client went away before its request body arrived") from None
    return parse_json_body(raw)


def create_app(
    settings: ServerSettings,
    *,
    runners: Mapping[str, Runner] | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The daemon's ASGI app. `runners` adds or replaces runners by name (tests, embedding)."""
    state = ServerState(settings, runners, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.warm.start()
        try:
            async with mcp_api.running(app):
                yield
            await state.inflight.drain(0 if state.inflight.draining else settings.shutdown_timeout)
        finally:
            await state.warm.aclose()
            state.store.close()

    app = FastAPI(
        title="llmrun",
        version=__version__,
        description="The OpenAI, Anthropic and Ollama APIs and MCP over the AI command-line tools on this machine.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.llmrun = state

    @app.exception_handler(LlmrunError)
    async def _llmrun_error(request: Request, exc: LlmrunError) -> Response:
        return error_json(*error_parts(request.url.path, exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: LlmrunError
        if exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 404:
            error = PathNotFound(f"no such endpoint: {request.method} {request.url.path}")
        else:
            error = LlmrunError(str(exc.detail))
            error.http_status = exc.status_code
        return error_json(*error_parts(request.url.path, error))

    scope = conversations.scope_of(settings.api_key)

    def _conversation(request: Request) -> conversations.Conversation:
        return conversations.for_request(scope, request.headers.get(SESSION_HEADER))

    @app.post("/v1/chat/completions", openapi_extra=_body_doc(_CHAT_SCHEMA), tags=["OpenAI"])
    async def chat_completions(request: Request) -> Response:
        """OpenAI Chat Completions, streaming (SSE) or not."""
        parsed = openai_api.parse(await _json_body(request), fetch_image_urls=settings.fetch_image_urls)
        parsed.request = await fetch_images(parsed.request, max_total_bytes=settings.max_body_bytes)
        conversation = _conversation(request)
        if parsed.models:  # a list: every model asked at once
            return multiplex.answer(state, parsed, conversation)
        turn = state.engine.prepare(parsed.request, parsed.model, conversation=conversation, stream=parsed.stream)
        return state.answer(openai_api.Output(parsed.model, include_usage=parsed.include_usage), turn)

    responses_api.add_routes(app, state, read_body=_json_body, conversation_of=_conversation)
    ollama_api.add_routes(app, state, read_body=_json_body, conversation_of=_conversation)

    @app.post("/v1/messages", openapi_extra=_body_doc(_MESSAGES_SCHEMA), tags=["Anthropic"])
    async def messages(request: Request) -> Response:
        """Anthropic Messages, streaming (SSE) or not."""
        parsed = anthropic_api.parse(await _json_body(request), fetch_image_urls=settings.fetch_image_urls)
        parsed.request = await fetch_images(parsed.request, max_total_bytes=settings.max_body_bytes)
        conversation = _conversation(request)
        turn = state.engine.prepare(parsed.request, parsed.model, conversation=conversation, stream=parsed.stream)
        return state.answer(anthropic_api.Output(parsed.model), turn)

    @app.post("/v1/messages/count_tokens", tags=["Anthropic"])
    async def count_tokens(request: Request) -> dict[str, int]:
        """A rough count (4 characters a token): the tools do not expose their tokenizers."""
        body = await _json_body(request)
        text = json.dumps([body.get("system"), body.get("messages"), body.get("tools")], ensure_ascii=False)
        return {"input_tokens": max(1, len(text) // 4)}

    @app.get("/v1/models", tags=["OpenAI", "Anthropic"])
    async def models(request: Request) -> dict[str, Any]:
        """Every model of every installed runner as `runner/model`, and the configured aliases."""
        found = await state.models()
        if "anthropic-version" in request.headers:
            data = [
                {"type": "model", "id": mid, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}
                for mid, _, name in found
            ]
            return {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        return {
            "object": "list",
            "data": [{"id": mid, "object": "model", "created": 0, "owned_by": owner} for mid, owner, _ in found],
        }

    @app.get("/v1/models/{model_id:path}", tags=["OpenAI", "Anthropic"])
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        for mid, owner, name in await state.models():
            if mid == model_id:
                if "anthropic-version" in request.headers:
                    return {"type": "model", "id": mid, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}
                return {"id": mid, "object": "model", "created": 0, "owned_by": owner}
        target = state.pool.resolve(model_id)  # a valid name that is not listed still resolves
        return {"id": model_id, "object": "model", "created": 0, "owned_by": target.runner_name}

    @app.get("/health", tags=["llmrun"])
    async def health() -> dict[str, Any]:
        """Liveness: the server answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/health/ready", tags=["llmrun"])
    async def ready() -> Response:
        """Readiness per runner; 503 when no runner is usable."""
        reports = await state.health_reports()
        usable = [r.runner for r in reports if r.ok]
        body = {
            "status": "ready" if usable else "unavailable",
            "usable": usable,
            "runners": {
                r.runner: r.model_dump(include={"status", "version", "authenticated", "message", "hint"})
                for r in reports
            },
        }
        return JSONResponse(body, status_code=200 if usable else 503)

    @app.get("/v1/runners", tags=["llmrun"])
    async def runners_route() -> dict[str, Any]:
        """Known runners: installed or not, capabilities, models, warm sessions; and the server's limits."""
        out = []
        for name in state.pool.names():
            try:
                runner = state.pool.get(name)
            except LlmrunError as exc:
                out.append({"name": name, "error": str(exc)})
                continue
            meta = runner.metadata().model_dump()
            meta["installed"] = state.pool.installed(runner)
            if runner.capabilities.warm:
                meta["warm"] = state.warm.describe(runner.name)
            out.append(meta)
        return {"object": "list", "data": out, "limits": {**state.limiter.stats(), **state.warm.limits()}}

    mcp_api.mount(app, state)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> dict[str, str]:
        return {"name": "llmrun", "version": __version__}

    app.add_middleware(
        Guard,
        bound_host=settings.host,
        api_key=settings.api_key,
        allowed_hosts=settings.allowed_hosts,
        max_body_bytes=settings.max_body_bytes,
        cors_origins=settings.cors_origins,
    )
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        # Outside the guard, so that browsers' preflight requests (which carry no key) pass.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                *("authorization", "x-api-key", "content-type", "anthropic-version", SESSION_HEADER),
                *("mcp-session-id", "mcp-protocol-version", "last-event-id"),  # MCP clients in a browser
                "x-request-id",
            ],
            expose_headers=["mcp-session-id", "x-request-id"],
        )
    metrics.mount(app, state)
    request_ids.install(app)  # the outermost middleware: every answer, refusals included, carries the id
    return app
