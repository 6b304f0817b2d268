"""Tests of the mock Anthropic API itself, so CLI tests can trust what it serves."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Importable whatever pytest's import mode is (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mockapi import MockAnthropic, split_deltas

TEXT_EVENTS = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


@pytest.fixture
def api() -> Iterator[MockAnthropic]:
    with MockAnthropic() as mock:
        yield mock


def _post(url: str, body: dict[str, Any], path: str = "/v1/messages?beta=true", timeout: float = 5) -> Any:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": "sk-test"},
        method="POST",
    )
    return urllib.request.urlopen(req, timeout=timeout)


def _body(stream: bool | None = True, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test-1",
        "max_tokens": 100,
        "messages": messages or [{"role": "user", "content": "hello"}],
    }
    if stream is not None:
        body["stream"] = stream
    return body


def _sse(resp: Any) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body into (event name, data) pairs, checking name == data.type."""
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for frame in resp.read().decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def _text_of(events: list[tuple[str, dict[str, Any]]], index: int) -> str:
    return "".join(
        d["delta"].get("text", "") for name, d in events if name == "content_block_delta" and d["index"] == index
    )


def test_stream_text_event_sequence(api: MockAnthropic) -> None:
    events = _sse(_post(api.url, _body()))
    assert [name for name, _ in events] == TEXT_EVENTS
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_mock_")
    assert start["model"] == "claude-test-1"
    assert start["usage"]["input_tokens"] == 12
    assert start["usage"]["cache_read_input_tokens"] == 0
    assert start["usage"]["cache_creation_input_tokens"] == 0
    assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == ["Hello ", "from ", "mock"]
    assert events[7][1]["delta"]["stop_reason"] == "end_turn"
    assert events[7][1]["usage"]["output_tokens"] == 7


def test_requests_are_recorded_without_query(api: MockAnthropic) -> None:
    _post(api.url, _body()).read()
    [rec] = api.message_requests
    assert rec["method"] == "POST"
    assert rec["path"] == "/v1/messages"
    assert rec["headers"]["x-api-key"] == "sk-test"
    assert rec["json"]["model"] == "claude-test-1"


@pytest.mark.parametrize("stream", [False, None])
def test_non_stream_json(api: MockAnthropic, stream: bool | None) -> None:
    msg = json.load(_post(api.url, _body(stream=stream)))
    assert msg["type"] == "message"
    assert msg["content"] == [{"type": "text", "text": "Hello from mock"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["output_tokens"] == 7


def test_text_override(api: MockAnthropic) -> None:
    api.text = "A much longer answer than the default one"
    events = _sse(_post(api.url, _body()))
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) == 3
    assert _text_of(events, 0) == api.text


def test_thinking_block_comes_first(api: MockAnthropic) -> None:
    api.scenario = "thinking"
    events = _sse(_post(api.url, _body()))
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert kinds == ["thinking_delta", "thinking_delta", "signature_delta"]
    assert _text_of(events, 1) == "Hello from mock"


def test_usage_cached(api: MockAnthropic) -> None:
    api.scenario = "usage_cached"
    usage = _sse(_post(api.url, _body()))[0][1]["message"]["usage"]
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (100, 20)


def test_tool_use_then_tool_result(api: MockAnthropic) -> None:
    api.scenario = "tool_use"
    events = _sse(_post(api.url, _body()))
    start = [d["content_block"] for n, d in events if n == "content_block_start"][1]
    assert start["type"] == "tool_use" and start["name"] == "Bash"
    assert start["id"].startswith("toolu_mock_")
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1)
    assert json.loads(partial) == {"command": "echo mock-tool-ran", "description": "Print a marker"}
    assert [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"

    # Second turn: a trailing role "system" message (as Claude Code sends) must not hide the result.
    history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": [start | {"input": {"command": "echo mock-tool-ran"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": start["id"], "content": "mock-tool-ran"}]},
        {"role": "system", "content": "reminder"},
    ]
    events = _sse(_post(api.url, _body(messages=history)))
    assert _text_of(events, 0) == "Tool finished: Hello from mock"
    assert [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("scenario", "status", "err_type", "message"),
    [
        ("http_401", 401, "authentication_error", "invalid x-api-key"),
        ("http_429", 429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
        ("http_500", 500, "api_error", "Internal server error"),
        ("http_529", 529, "overloaded_error", "Overloaded"),
    ],
)
def test_http_errors(api: MockAnthropic, scenario: str, status: int, err_type: str, message: str) -> None:
    api.scenario = scenario
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(api.url, _body())
    err = info.value
    assert err.code == status
    assert json.load(err) == {"type": "error", "error": {"type": err_type, "message": message}}
    if status in (429, 529):
        assert err.headers["retry-after"] == "0"


def test_probe_count_tokens_and_404(api: MockAnthropic) -> None:
    head = urllib.request.urlopen(urllib.request.Request(api.url + "/", method="HEAD"), timeout=5)
    assert head.status == 200
    assert json.load(_post(api.url, {"messages": []}, "/v1/messages/count_tokens")) == {"input_tokens": 12}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(api.url + "/v1/nope", timeout=5)
    assert info.value.code == 404
    assert json.load(info.value)["error"]["type"] == "not_found_error"


def test_slow_paces_deltas(api: MockAnthropic) -> None:
    api.scenario = "slow"
    api.token_delay = 0.05
    t0 = time.monotonic()
    events = _sse(_post(api.url, _body()))
    assert time.monotonic() - t0 >= 6 * 0.05
    assert _text_of(events, 0) == "one two three four five six"


def test_hang_is_released_by_close() -> None:
    api = MockAnthropic(scenario="hang")
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(_post(api.url, _body(), timeout=20).read())
        except Exception as exc:  # the connection is dropped without a response
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert api.wait_for_requests(1)
    time.sleep(0.2)
    assert thread.is_alive() and not outcome  # really hanging

    api.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], Exception)


def test_split_deltas() -> None:
    assert split_deltas("Hello from mock") == ["Hello ", "from ", "mock"]
    assert "".join(split_deltas("a b c d e f g")) == "a b c d e f g"
    assert split_deltas("") == []
