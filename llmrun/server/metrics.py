"""`GET /metrics` (Prometheus text format) and an OpenTelemetry span per turn.

Every turn of the engine, whatever API asked for it (Chat Completions, Responses, Messages,
Ollama, MCP), passes through `RunWatch`: it counts the turn and its errors, times its first
chunk and its whole run, and adds up its tokens and cost, all at the turn's start, first
chunk and end; the chunks in between cost one comparison each. The gauges (tool processes,
warm sessions, queue, slots) are read when /metrics is scraped. Each app has a registry of
its own, so that several apps in one process keep separate counts.

`runner` is the runner that answered (a route's target), or the one asked when nothing
answered; `api` comes from the request's path. Requests refused before a turn began
(unknown model, bad body) count as errors too, of runner "none" when none is named.

With `opentelemetry-api` importable, each turn is also a span (`llmrun.turn`) with the
runner, model and token counts; without an SDK configured, the API's spans do nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from .. import __version__, process
from ..errors import LlmrunError
from ..types import ChatChunk, ChatResponse, Usage
from . import request_ids
from .mcp_api import PATH as MCP_PATH
from .ollama_api import is_ollama_path

if TYPE_CHECKING:
    from .app import ServerState
    from .turns import Turn

log = logging.getLogger("llmrun.server")

PATH = "/metrics"

# The tools take from a second to many minutes: buckets that tell these apart.
FIRST_CHUNK_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)
DURATION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


def api_of(path: str) -> str:
    """The API a request speaks, from its path."""
    if path.startswith("/v1/chat/completions"):
        return "openai_chat"
    if path.startswith("/v1/responses"):
        return "openai_responses"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if is_ollama_path(path):
        return "ollama"
    if path.startswith(MCP_PATH):
        return "mcp"
    return "other"


def error_type(exc: BaseException) -> str:
    if isinstance(exc, LlmrunError):
        return type(exc).__name__
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "Cancelled"  # the client went away, or the server is shutting down
    return "InternalError"


class Metrics:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self, state: ServerState) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        run = ["runner", "api"]
        self.requests = Counter("llmrun_requests", "Turns run.", run, registry=self.registry)
        self.errors = Counter(
            "llmrun_errors", "Failed turns and refused requests, by error type.", [*run, "type"], registry=self.registry
        )
        self.first_chunk = Histogram(
            "llmrun_first_chunk_seconds",
            "Time from a turn's start (its wait for a slot included) to its first chunk.",
            run,
            buckets=FIRST_CHUNK_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "llmrun_run_duration_seconds", "Duration of a turn.", run, buckets=DURATION_BUCKETS, registry=self.registry
        )
        self.tokens = Counter(
            "llmrun_tokens",
            "Tokens as the tools report them: input, output, cached (read from a cache), cache_write, reasoning.",
            ["runner", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "llmrun_cost_usd", "Cost in USD, where the tool reports it.", ["runner"], registry=self.registry
        )
        self.registry.register(LiveGauges(state))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def add_usage(self, runner: str, usage: Usage, cost: float | None) -> None:
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                self.tokens.labels(runner, kind).inc(count)
        if cost:
            self.cost.labels(runner).inc(cost)


class LiveGauges:
    """What is running now, read at each scrape."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self.state.limiter.stats()
        # The process layer's own set of live process groups (killed at exit whatever happens).
        yield GaugeMetricFamily("llmrun_tool_processes", "Tool process groups alive.", value=process.live_group_count())
        warm = GaugeMetricFamily(
            "llmrun_warm_sessions", "Warm tool sessions, by runner and role.", labels=["runner", "role"]
        )
        for (runner, role), count in sorted(Tally((e.shape.runner, e.role) for e in self.state.warm.entries).items()):
            warm.add_metric([runner, role], count)
        yield warm
        yield GaugeMetricFamily("llmrun_queue_depth", "Requests waiting for a slot.", value=stats["waiting"])
        yield GaugeMetricFamily("llmrun_slots_in_use", "Slots held by running turns.", value=stats["active"])
        yield GaugeMetricFamily("llmrun_slots", "Slots in all (max_concurrency).", value=stats["max_concurrency"])


class RunWatch:
    """Counts, times and traces each turn of the engine (see turns.RunObserver)."""

    def __init__(self, metrics: Metrics | None, tracer: Any | None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    async def stream(self, turn: Turn, chunks: AsyncGenerator[ChatChunk, None]) -> AsyncGenerator[ChatChunk, None]:
        run = _Run(self, turn)
        final: ChatChunk | None = None
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if run.first_at is None:
                        run.first(chunk)
                    if chunk.finish_reason is not None:
                        final = chunk
                    yield chunk
        except BaseException as exc:
            # Closed once the answer is whole (its final chunk sent) is no failure.
            failed = exc if final is None or not isinstance(exc, (GeneratorExit, asyncio.CancelledError)) else None
            run.end(final, failed)
            raise
        run.end(final, None)

    async def complete(self, turn: Turn, response: Awaitable[ChatResponse]) -> ChatResponse:
        run = _Run(self, turn)
        try:
            done = await response
        except BaseException as exc:
            run.end(None, exc)
            raise
        run.runner = done.runner or run.runner
        run.end(ChatChunk(finish_reason=done.finish_reason, usage=done.usage, cost_usd=done.cost_usd, model=done.model))
        return done


class _Run:
    """One turn being watched."""

    def __init__(self, watch: RunWatch, turn: Turn) -> None:
        self.metrics = watch.metrics
        info = request_ids.current()
        self.api = api_of(info.path) if info is not None else "unknown"
        self.runner = turn.runner.name
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.span = None
        if watch.tracer is not None:
            attributes = {"llmrun.runner": self.runner, "llmrun.api": self.api, "gen_ai.operation.name": "chat"}
            if turn.request.model:
                attributes["gen_ai.request.model"] = turn.request.model
            if info is not None:
                attributes["llmrun.request_id"] = info.id
            self.span = watch.tracer.start_span("llmrun.turn", attributes=attributes)

    def first(self, chunk: ChatChunk) -> None:
        self.first_at = time.monotonic()
        self.runner = chunk.runner or self.runner  # a route's first chunk names its target that answered
        if self.span is not None and self.span.is_recording():
            self.span.add_event("first chunk")

    def end(self, final: ChatChunk | None, error: BaseException | None = None) -> None:
        """The turn is over: `final` is its final chunk, if it got that far."""
        ended = time.monotonic()
        usage, cost = (final.usage, final.cost_usd) if final is not None else (None, None)
        if self.metrics is not None:
            labels = (self.runner, self.api)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.duration.labels(*labels).observe(ended - self.started)
            if self.first_at is not None:
                self.metrics.first_chunk.labels(*labels).observe(self.first_at - self.started)
            if error is not None:
                self.metrics.errors.labels(*labels, error_type(error)).inc()
            if usage is not None or cost:
                self.metrics.add_usage(self.runner, usage or Usage(), cost)
        if self.span is not None:
            self._end_span(final, error)

    def _end_span(self, final: ChatChunk | None, error: BaseException | None) -> None:
        span = self.span
        assert span is not None
        if span.is_recording():
            span.set_attribute("llmrun.answered_by", self.runner)
            usage, cost = (final.usage, final.cost_usd) if final is not None else (None, None)
            if final is not None and final.model:
                span.set_attribute("gen_ai.response.model", final.model)
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                span.set_attribute("llmrun.usage.cached_tokens", usage.cache_read_tokens)
                span.set_attribute("llmrun.usage.reasoning_tokens", usage.reasoning_tokens)
            if cost is not None:
                span.set_attribute("llmrun.cost_usd", cost)
            if error is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, error_type(error)))
                if isinstance(error, Exception):
                    span.record_exception(error)
        span.end()


def tracer() -> Any | None:
    """llmrun's OpenTelemetry tracer, when the API is installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("llmrun", __version__)


def mount(app: FastAPI, state: ServerState) -> None:
    """Serve /metrics on `app` and watch every turn of its engine. Without prometheus_client,
    the daemon serves everything else (spans included) and says why /metrics is missing."""
    metrics: Metrics | None
    try:
        metrics = Metrics(state)
    except ModuleNotFoundError as exc:
        if exc.name != "prometheus_client":
            raise
        log.warning("no metrics at %s: prometheus_client is not installed (pip install 'llmrun-cli[server]')", PATH)
        metrics = None
    traces = tracer()
    if metrics is None and traces is None:
        return
    state.engine.observer = RunWatch(metrics, traces)
    if metrics is None:
        return
    counted = metrics

    handle = app.exception_handlers[LlmrunError]

    async def count_refusal(request: Request, exc: Exception) -> Response:
        # A request refused before its turn began; failures of a turn are counted by RunWatch.
        counted.errors.labels(getattr(exc, "runner", None) or "none", api_of(request.url.path), error_type(exc)).inc()
        response = handle(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(LlmrunError, count_refusal)

    @app.get(PATH, include_in_schema=False)
    async def metrics_route() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(counted.render(), media_type=CONTENT_TYPE_LATEST)
