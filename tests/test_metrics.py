"""Metrics and tracing: the daemon's /metrics, request ids, a span per turn, and the library's totals.

The daemon runs under uvicorn (LiveServer) with in-process runners; clients are the openai
SDK and httpx. /metrics is read back with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import llmrun
from llmrun.errors import LlmrunError, RateLimitError
from llmrun.runners.base import Runner
from llmrun.server import request_ids
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport, Message, Usage

from .server_support import LiveServer, settings

pytestmark = pytest.mark.timeout(60)

USAGE = Usage(input_tokens=11, output_tokens=7, cache_read_tokens=5, reasoning_tokens=2)
COST = 0.125


class MeteredRunner(Runner):
    """Answers "Hello there" with known usage and cost; or fails with `error`; or, given a
    `gate`, waits for it before answering (a run that holds its slot while a test looks)."""

    name = "metered"
    display_name = "Metered"
    default_model = "m1"
    capabilities = Capabilities(streaming=True, token_streaming=True, usage=True)
    builtin_models = (("m1", ()),)

    def __init__(self, error: LlmrunError | None = None, gate: threading.Event | None = None) -> None:
        self.error = error
        self.gate = gate
        self.started = threading.Event()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.started.set()
        if self.gate is not None:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error
        yield ChatChunk(delta="Hello ")
        yield ChatChunk(delta="there")
        yield ChatChunk(finish_reason="stop", usage=USAGE, cost_usd=COST, model="m1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok", version="1.0")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer, **headers: str) -> Samples:
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    runners = {"metered": MeteredRunner(), "failing": FailingRunner()}
    with LiveServer(settings(tmp_path), runners=runners) as live:
        yield live


class FailingRunner(MeteredRunner):
    name = "failing"

    def __init__(self) -> None:
        super().__init__(error=RateLimitError("slow down", runner="failing"))


def client(server: LiveServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=20, **kwargs)


# --- /metrics -----------------------------------------------------------------------------


def test_metrics_show_a_run_through_the_openai_sdk(server: LiveServer) -> None:
    before = scrape(server)
    assert value(before, "llmrun_requests_total", runner="metered", api="openai_chat") == 0

    done = client(server).chat.completions.create(model="metered", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "Hello there"
    chunks = list(
        client(server).chat.completions.create(
            model="metered", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks

    after = scrape(server)
    run = {"runner": "metered", "api": "openai_chat"}
    assert value(after, "llmrun_requests_total", **run) == 2
    assert value(after, "llmrun_tokens_total", runner="metered", kind="input") == 2 * USAGE.input_tokens
    assert value(after, "llmrun_tokens_total", runner="metered", kind="output") == 2 * USAGE.output_tokens
    assert value(after, "llmrun_tokens_total", runner="metered", kind="cached") == 2 * USAGE.cache_read_tokens
    assert value(after, "llmrun_tokens_total", runner="metered", kind="reasoning") == 2 * USAGE.reasoning_tokens
    assert value(after, "llmrun_cost_usd_total", runner="metered") == pytest.approx(2 * COST)
    assert value(after, "llmrun_run_duration_seconds_count", **run) == 2
    assert value(after, "llmrun_first_chunk_seconds_count", **run) == 2
    assert value(after, "llmrun_run_duration_seconds_bucket", **run, le="+Inf") == 2
    assert value(after, "llmrun_errors_total", **run, type="RateLimitError") == 0
    # Nothing is running now.
    assert value(after, "llmrun_slots_in_use") == 0
    assert value(after, "llmrun_queue_depth") == 0
    assert value(after, "llmrun_tool_processes") >= 0


def test_the_api_label_follows_the_path(server: LiveServer) -> None:
    answer = httpx.post(
        f"{server.url}/v1/messages",
        json={"model": "metered", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text
    samples = scrape(server)
    assert value(samples, "llmrun_requests_total", runner="metered", api="anthropic") == 1
    assert value(samples, "llmrun_requests_total", runner="metered", api="openai_chat") == 0


def test_errors_are_counted_by_type(server: LiveServer) -> None:
    with pytest.raises(openai.RateLimitError):
        client(server).chat.completions.create(model="failing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="no_such_runner", messages=[{"role": "user", "content": "hi"}])

    samples = scrape(server)
    failed = {"runner": "failing", "api": "openai_chat"}
    assert value(samples, "llmrun_errors_total", **failed, type="RateLimitError") == 1
    assert value(samples, "llmrun_requests_total", **failed) == 1
    assert value(samples, "llmrun_tokens_total", runner="failing", kind="input") == 0
    # Refused before a turn began: counted, under no runner.
    refused = [
        labels
        for (name, labels), count in samples.items()
        if name == "llmrun_errors_total" and count == 1 and ("runner", "failing") not in labels
    ]
    assert len(refused) == 1
    assert dict(refused[0])["api"] == "openai_chat"
    assert dict(refused[0])["type"] in ("RunnerNotFound", "ModelNotFound")


def test_gauges_show_a_run_in_progress(tmp_path: Path) -> None:
    gate = threading.Event()
    runner = MeteredRunner(gate=gate)
    with LiveServer(settings(tmp_path), runners={"metered": runner}) as live:
        asking = threading.Thread(
            target=lambda: client(live).chat.completions.create(
                model="metered", messages=[{"role": "user", "content": "hi"}]
            )
        )
        asking.start()
        try:
            assert runner.started.wait(20)
            running = scrape(live)
        finally:
            gate.set()
            asking.join(20)
        assert value(running, "llmrun_slots_in_use") == 1
        assert value(running, "llmrun_slots") == live.settings.max_concurrency
        assert value(running, "llmrun_requests_total", runner="metered", api="openai_chat") == 0  # counted when done
        assert value(scrape(live), "llmrun_slots_in_use") == 0


def test_metrics_need_the_key_when_one_is_set(tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, api_key="s3cret"), runners={"metered": MeteredRunner()}) as live:
        refused = httpx.get(f"{live.url}/metrics", timeout=20)
        assert refused.status_code == 401
        assert "llmrun_" not in refused.text
        assert value(scrape(live, authorization="Bearer s3cret"), "llmrun_slots_in_use") == 0


def test_each_app_counts_its_own(tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path / "a"), runners={"metered": MeteredRunner()}) as first:
        client(first).chat.completions.create(model="metered", messages=[{"role": "user", "content": "hi"}])
        with LiveServer(settings(tmp_path / "b"), runners={"metered": MeteredRunner()}) as second:
            assert value(scrape(first), "llmrun_requests_total", runner="metered", api="openai_chat") == 1
            assert value(scrape(second), "llmrun_requests_total", runner="metered", api="openai_chat") == 0


# --- request ids --------------------------------------------------------------------------


def chat_body(model: str = "metered", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_a_sane_request_id_is_echoed(server: LiveServer) -> None:
    answer = httpx.post(
        f"{server.url}/v1/chat/completions", json=chat_body(), headers={"x-request-id": "trace-42"}, timeout=20
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize("offered", [None, "x" * 129, "bad\tid", "caf\u00e9"])
def test_a_missing_or_odd_request_id_is_replaced(server: LiveServer, offered: str | None) -> None:
    headers = {} if offered is None else {"x-request-id": offered.encode("latin-1")}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(), headers=headers, timeout=20)
    assert answer.status_code == 200
    made = answer.headers["x-request-id"]
    assert made != offered and made.startswith("req_") and request_ids.sane(made)
    again = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(), timeout=20)
    assert again.headers["x-request-id"] != made  # one for each request


def test_request_id_on_a_stream_and_on_errors(server: LiveServer) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json=chat_body(stream=True),
        headers={"x-request-id": "stream-1"},
        timeout=20,
    ) as streamed:
        assert streamed.headers["x-request-id"] == "stream-1"
        assert "[DONE]" in streamed.read().decode()

    failed = httpx.post(
        f"{server.url}/v1/chat/completions", json=chat_body("failing"), headers={"x-request-id": "err-1"}, timeout=20
    )
    assert failed.status_code == 429
    assert failed.headers["x-request-id"] == "err-1"

    refused = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "text/plain"}, timeout=20
    )
    assert refused.status_code == 415  # refused by the guard, before any route
    assert request_ids.sane(refused.headers["x-request-id"])

    anthropic_error = httpx.post(
        f"{server.url}/v1/messages",
        json={"model": "failing", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-request-id": "anth-1"},
        timeout=20,
    )
    assert anthropic_error.status_code == 429
    assert anthropic_error.headers["x-request-id"] == "anth-1"
    assert anthropic_error.json()["request_id"] == "anth-1"
    assert anthropic_error.headers["request-id"] == "anth-1"


def test_every_log_line_of_a_request_carries_its_id(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmrun")
    answer = httpx.post(
        f"{server.url}/v1/chat/completions", json=chat_body(), headers={"x-request-id": "logged-7"}, timeout=20
    )
    assert answer.status_code == 200
    mine = [r for r in caplog.records if r.name.startswith("llmrun") and "runner=metered" in r.getMessage()]
    assert len(mine) >= 2, [r.getMessage() for r in caplog.records]  # the turn's start and its end
    assert {getattr(r, "request_id", None) for r in mine} == {"logged-7"}


def test_the_log_filter_marks_records_outside_a_request() -> None:
    record = logging.LogRecord("llmrun.server", logging.INFO, __file__, 1, "hello", None, None)
    assert request_ids.LOG_FILTER.filter(record)
    assert record.request_id == "-"  # type: ignore[attr-defined]


# --- tracing ------------------------------------------------------------------------------


def test_a_span_per_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # This test's provider, not the process-wide one (which can be set only once).
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    runners = {"metered": MeteredRunner(), "failing": FailingRunner()}
    with LiveServer(settings(tmp_path), runners=runners) as live:
        answer = httpx.post(
            f"{live.url}/v1/chat/completions",
            json=chat_body("metered/m1"),
            headers={"x-request-id": "span-1"},
            timeout=20,
        )
        assert answer.status_code == 200
        failed = httpx.post(f"{live.url}/v1/chat/completions", json=chat_body("failing"), timeout=20)
        assert failed.status_code == 429

    spans = [span for span in exporter.get_finished_spans() if span.name == "llmrun.turn"]  # FastAPI makes its own
    assert len(spans) == 2
    ok, bad = spans
    assert ok.attributes is not None and bad.attributes is not None
    assert ok.attributes["llmrun.runner"] == "metered"
    assert ok.attributes["llmrun.api"] == "openai_chat"
    assert ok.attributes["llmrun.request_id"] == "span-1"
    assert ok.attributes["gen_ai.request.model"] == "m1"
    assert ok.attributes["gen_ai.response.model"] == "m1"
    assert ok.attributes["gen_ai.usage.input_tokens"] == USAGE.input_tokens
    assert ok.attributes["gen_ai.usage.output_tokens"] == USAGE.output_tokens
    assert ok.attributes["llmrun.cost_usd"] == COST
    assert ok.status.is_ok
    assert bad.attributes["llmrun.runner"] == "failing"
    assert not bad.status.is_ok


# --- the library's totals -----------------------------------------------------------------


def test_usage_totals_after_two_library_runs() -> None:
    runner = MeteredRunner()
    before = llmrun.usage_totals()

    async def twice() -> None:
        await runner.complete(ChatRequest(messages=[Message.user("one")]))
        async with runner.session() as session:
            await session.complete("two")

    asyncio.run(twice())
    spent = llmrun.usage_totals() - before
    assert spent.requests == 2
    assert spent.input_tokens == 2 * USAGE.input_tokens
    assert spent.output_tokens == 2 * USAGE.output_tokens
    assert spent.cache_read_tokens == 2 * USAGE.cache_read_tokens
    assert spent.reasoning_tokens == 2 * USAGE.reasoning_tokens
    assert spent.cost_usd == pytest.approx(2 * COST)


def test_a_failed_run_is_not_added() -> None:
    before = llmrun.usage_totals()
    with pytest.raises(RateLimitError):
        asyncio.run(FailingRunner().complete(ChatRequest(messages=[Message.user("one")])))
    assert llmrun.usage_totals() == before


def test_totals_line() -> None:
    from llmrun.cli.render import totals_line
    from llmrun.totals import UsageTotals

    line = totals_line(UsageTotals(requests=3, input_tokens=1200, output_tokens=30, cache_read_tokens=7, cost_usd=0.5))
    assert line == "total of 3 answers · tokens: 1,200 in (+7 cache read), 30 out · $0.5000"


async def test_mcp_calls_are_counted_and_carry_their_request_ids(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    httpx2 = pytest.importorskip("httpx2")
    mcp = pytest.importorskip("mcp")
    from mcp.client.streamable_http import streamable_http_client

    caplog.set_level(logging.INFO, logger="llmrun")
    sent: list[str] = []

    async def number(request: Any) -> None:
        sent.append(f"mcp-{len(sent)}")
        request.headers["x-request-id"] = sent[-1]

    async with httpx2.AsyncClient(timeout=30, event_hooks={"request": [number]}) as http_client:
        transport = streamable_http_client(f"{server.url}/mcp", http_client=http_client)
        async with mcp.Client(transport, mode="legacy") as session:
            for _ in range(2):
                done = await session.call_tool("prompt", {"prompt": "hi", "runner": "metered"})
                assert not done.is_error

    samples = await asyncio.to_thread(scrape, server)
    assert value(samples, "llmrun_requests_total", runner="metered", api="mcp") == 2
    starts = [r for r in caplog.records if r.getMessage().startswith("turn: runner=metered")]
    ids = [getattr(r, "request_id", None) for r in starts]
    assert len(ids) == 2 and len(set(ids)) == 2  # each call its own request's id
    assert set(ids) <= set(sent)


@pytest.mark.parametrize("answers", [1, 2])
def test_an_interactive_chat_with_usage_ends_with_the_totals(
    answers: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmrun.cli.chat import ChatOptions
    from llmrun.cli.interactive import Conversation

    from .cli_support import private_state

    private_state(monkeypatch, tmp_path)
    typed = [f"question {n}" for n in range(answers)]

    def fake_input(prompt: str = "") -> str:
        if not typed:
            raise EOFError
        return typed.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    out, err = io.StringIO(), io.StringIO()
    assert Conversation(MeteredRunner(), ChatOptions(usage=True), out=out, err=err).loop() == 0
    totals = [line for line in err.getvalue().splitlines() if line.startswith("total of")]
    if answers == 1:
        assert totals == []  # the answer's own usage line says the same
    else:
        assert totals == ["total of 2 answers | tokens: 22 in (+10 cache read), 14 out | $0.2500"]
