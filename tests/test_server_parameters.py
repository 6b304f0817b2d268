"""Sampling parameters through the daemon: each API's fields reach the runner, `stop` ends the
answer, and what a runner cannot honour is named in `x-llmrun-ignored-params` (and `warnings`
where the API allows extra fields), or refused under `--strict-params`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import FakeRun
from .server_support import LiveServer, claude_fake, settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def server(fake: FakeRun, tmp_path: Path) -> Iterator[LiveServer]:
    fake.scenario("mock-stream-json-partial")  # "Hello from mock"
    with LiveServer(settings(tmp_path)) as live:
        yield live


def chat(**fields: object) -> dict:
    return {"model": "claude_code", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_openai_stop_ends_the_answer_and_ignored_parameters_are_named(server: LiveServer) -> None:
    reply = httpx.post(
        f"{server.url}/v1/chat/completions", json=chat(stop="from", seed=3, presence_penalty=0.2), timeout=60
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == "Hello "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert reply.headers["x-llmrun-ignored-params"] == "seed, presence_penalty"
    assert [w.split(":")[0] for w in body["warnings"]] == [
        "ignored parameter seed",
        "ignored parameter presence_penalty",
    ]


def test_an_openai_stream_names_them_in_its_header_and_first_chunk(server: LiveServer) -> None:
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=chat(stream=True, frequency_penalty=0.5), timeout=60
    ) as reply:
        assert reply.headers["x-llmrun-ignored-params"] == "frequency_penalty"
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    warned = [e for e in events if "warnings" in e]
    assert len(warned) == 1 and warned[0]["warnings"][0].startswith("ignored parameter frequency_penalty:")
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "Hello from mock"


def test_nothing_ignored_sends_no_header(server: LiveServer) -> None:
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=chat(stop=["never"]), timeout=60)
    assert reply.status_code == 200 and "x-llmrun-ignored-params" not in reply.headers
    assert reply.json()["choices"][0]["message"]["content"] == "Hello from mock"
    assert "warnings" not in reply.json()


def test_anthropic_stop_sequences(server: LiveServer) -> None:
    body = {
        "model": "claude_code",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": [" mock"],
        "seed": 1,
    }
    reply = httpx.post(f"{server.url}/v1/messages", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"][0]["text"] == "Hello from"
    assert reply.headers["x-llmrun-ignored-params"] == "seed"


def test_ollama_options_are_the_request_parameters(server: LiveServer) -> None:
    body = {
        "model": "claude_code",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"stop": ["from"], "seed": 42, "top_k": 20, "num_ctx": 4096},
    }
    reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"]["content"] == "Hello "
    assert reply.headers["x-llmrun-ignored-params"] == "top_k, seed"  # num_ctx is the tool's to decide


def test_logprobs_are_refused_as_no_tool_reports_them(server: LiveServer) -> None:
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=chat(logprobs=True), timeout=60)
    assert reply.status_code == 400 and "logprobs" in reply.json()["error"]["message"]


def test_a_malformed_stop_is_refused(server: LiveServer) -> None:
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=chat(stop=[1, 2]), timeout=60)
    assert reply.status_code == 400 and "`stop` must be a string or an array of strings" in reply.text


def test_strict_parameters_refuse_what_the_runner_cannot_honour(fake: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, strict_params=True)) as live:
        refused = httpx.post(f"{live.url}/v1/chat/completions", json=chat(seed=3), timeout=60)
        allowed = httpx.post(f"{live.url}/v1/chat/completions", json=chat(stop=["mock"]), timeout=60)
    assert refused.status_code == 400
    assert "Claude Code cannot honour seed" in refused.json()["error"]["message"]
    assert fake.invocations() and len(fake.invocations()) == 1  # only the allowed request ran the tool
    assert allowed.json()["choices"][0]["message"]["content"] == "Hello from "
