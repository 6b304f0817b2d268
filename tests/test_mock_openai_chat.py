"""Tests of the mock OpenAI Chat Completions API itself, so CLI tests can trust what it serves."""

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

from mock_openai_chat import (
    DEFAULT_MODELS,
    DEFAULT_TEXT,
    SLOW_WORDS,
    THINKING_DELTAS,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TOOL_PREAMBLE,
    MockOpenAIChat,
    split_deltas,
)


@pytest.fixture
def api() -> Iterator[MockOpenAIChat]:
    with MockOpenAIChat() as mock:
        yield mock


def post(api: MockOpenAIChat, body: dict[str, Any], path: str = "/v1/chat/completions", timeout: float = 5) -> Any:
    req = urllib.request.Request(
        api.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        method="POST",
    )
    return urllib.request.urlopen(req, timeout=timeout)


def body(stream: bool = True, usage: bool = True, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "gpt-test", "messages": messages or [{"role": "user", "content": "hello"}]}
    if stream:
        out["stream"] = True
        if usage:
            out["stream_options"] = {"include_usage": True}
    return out


def sse(resp: Any) -> list[dict[str, Any]]:
    """The chunks of an SSE body; it must end with `data: [DONE]`."""
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in resp.read().decode().split("\n\n") if f.strip()]
    assert frames[-1] == "data: [DONE]"
    chunks = []
    for frame in frames[:-1]:
        assert frame.startswith("data: ") and "\n" not in frame
        chunks.append(json.loads(frame[len("data: ") :]))
    return chunks


def content(chunks: list[dict[str, Any]], key: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


def test_streamed_text_with_usage_chunk(api: MockOpenAIChat) -> None:
    chunks = sse(post(api, body()))

    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == "gpt-test" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert texts == split_deltas(DEFAULT_TEXT) and len(texts) == 3
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] == 12 and usage["usage"]["completion_tokens"] == 7
    assert usage["usage"]["total_tokens"] == 19
    assert all("usage" not in c for c in chunks[:-1])


def test_no_usage_chunk_unless_asked(api: MockOpenAIChat) -> None:
    chunks = sse(post(api, body(usage=False)))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks)


def test_non_stream_completion(api: MockOpenAIChat) -> None:
    data = json.load(post(api, body(stream=False)))

    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["total_tokens"] == 19


def test_cached_usage(api: MockOpenAIChat) -> None:
    api.scenario = "usage_cached"
    usage = sse(post(api, body()))[-1]["usage"]
    assert usage["prompt_tokens"] == 112 and usage["prompt_tokens_details"]["cached_tokens"] == 100


def test_thinking_comes_as_reasoning_content_first(api: MockOpenAIChat) -> None:
    api.scenario = "thinking"
    chunks = sse(post(api, body()))
    assert content(chunks, "reasoning_content") == "".join(THINKING_DELTAS)
    assert content(chunks) == DEFAULT_TEXT
    first_text = next(i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content"))
    assert all("reasoning_content" not in c["choices"][0]["delta"] for c in chunks[first_text:] if c["choices"])
    message = json.load(post(api, body(stream=False)))["choices"][0]["message"]
    assert message["reasoning_content"] == "".join(THINKING_DELTAS)


def test_tool_call_then_text_once_the_tool_result_is_sent(api: MockOpenAIChat) -> None:
    api.scenario = "tool_use"
    chunks = sse(post(api, body()))

    assert content(chunks) == TOOL_PREAMBLE
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    head = calls[0]
    assert head["type"] == "function" and head["id"].startswith("call_") and head["function"]["name"] == TOOL_NAME
    assert len(calls) > 2  # arguments arrive in pieces
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == TOOL_ARGUMENTS
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    history = [
        {"role": "user", "content": "run it"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": head["id"], "type": "function", "function": head["function"]}],
        },
        {"role": "tool", "tool_call_id": head["id"], "content": "done"},
    ]
    assert content(sse(post(api, body(messages=history)))) == f"Tool finished: {DEFAULT_TEXT}"
    # A new user turn after the tool result starts over with a tool call.
    history.append({"role": "user", "content": "again"})
    assert content(sse(post(api, body(messages=history)))) == TOOL_PREAMBLE


def test_tool_can_be_chosen_per_test(api: MockOpenAIChat) -> None:
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "run_shell_command", {"command": "ls"}
    message = json.load(post(api, body(stream=False)))["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["function"] == {"name": "run_shell_command", "arguments": '{"command": "ls"}'}


@pytest.mark.parametrize(
    ("scenario", "status", "err_type", "code"),
    [
        ("http_401", 401, "invalid_request_error", "invalid_api_key"),
        ("http_429", 429, "requests", "rate_limit_exceeded"),
        ("http_500", 500, "server_error", None),
    ],
)
def test_http_errors_have_openai_bodies(
    api: MockOpenAIChat, scenario: str, status: int, err_type: str, code: str | None
) -> None:
    api.scenario = scenario
    with pytest.raises(urllib.error.HTTPError) as caught:
        post(api, body())
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == err_type and error["code"] == code and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_models_and_unknown_paths(api: MockOpenAIChat) -> None:
    data = json.load(urllib.request.urlopen(api.base_url + "/models", timeout=5))
    assert [m["id"] for m in data["data"]] == list(DEFAULT_MODELS)
    with pytest.raises(urllib.error.HTTPError) as caught:
        post(api, body(), path="/v1/embeddings")
    assert caught.value.code == 404 and "error" in json.loads(caught.value.read())


def test_requests_are_recorded(api: MockOpenAIChat) -> None:
    post(api, body()).read()
    (entry,) = api.chat_requests
    assert entry["path"] == "/v1/chat/completions"
    assert entry["headers"]["authorization"] == "Bearer sk-test"
    assert entry["json"]["stream_options"] == {"include_usage": True}
    assert isinstance(entry["time"], float)
    assert api.wait_for_requests(1, timeout=0.1) and not api.wait_for_requests(2, timeout=0.1)


def test_slow_deltas_are_paced(api: MockOpenAIChat) -> None:
    api.scenario, api.token_delay = "slow", 0.05
    resp = post(api, body())
    seen: list[float] = []
    for raw in resp:
        if b'"content": "' in raw and b'"content": ""' not in raw:
            seen.append(time.monotonic())
    assert len(seen) == len(SLOW_WORDS)
    assert seen[-1] - seen[0] >= 0.05 * (len(SLOW_WORDS) - 1) * 0.8


def test_hang_is_released_by_close() -> None:
    api = MockOpenAIChat("hang")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(api, body(), timeout=10).read()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert api.wait_for_requests(1)
    api.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and errors  # the connection was dropped
