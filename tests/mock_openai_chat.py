"""A mock OpenAI Chat Completions API on 127.0.0.1 for llmrun's tests.

Enough to run OpenAI-compatible CLIs (Qwen Code, and any tool with a custom base URL)
end to end: `POST /v1/chat/completions` streamed as SSE the way api.openai.com does it
(role chunk, content or tool-call deltas, a finish chunk, the `stream_options.include_usage`
usage chunk, `data: [DONE]`), the same answer as one JSON object when `stream` is false,
and `GET /v1/models`. Errors use OpenAI's body `{"error": {"message", "type", "param",
"code"}}`. The mock answers whatever model it is asked for. Stdlib only.

Usage::

    with MockOpenAIChat() as api:
        api.scenario = "tool_use"
        env = {"OPENAI_BASE_URL": api.base_url, "OPENAI_API_KEY": "sk-test", ...}
        ...
        assert api.chat_requests[-1]["json"]["model"] == "mock-model"
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mockserver import LoopbackMock, MockHandler

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TEXT",
    "SCENARIOS",
    "SLOW_WORDS",
    "THINKING_DELTAS",
    "TOOL_ARGUMENTS",
    "TOOL_NAME",
    "TOOL_PREAMBLE",
    "MockOpenAIChat",
    "split_deltas",
]

DEFAULT_TEXT = "Hello from mock"
DEFAULT_MODELS = ("mock-model", "mock-model-large")
SLOW_WORDS = ["one ", "two ", "three ", "four ", "five ", "six"]
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 7
CACHED_TOKENS = 100  # `usage_cached`: part of prompt_tokens, as OpenAI counts them

# `thinking`: sent as `reasoning_content` deltas before the answer (DeepSeek, DashScope, vLLM).
THINKING_DELTAS = ["Let me think. ", "Done thinking."]

TOOL_NAME = "bash"
TOOL_ARGUMENTS: dict[str, Any] = {"command": "echo mock-tool-ran"}
TOOL_PREAMBLE = "I will run a command."

# status, error.type, error.code, error.message: as api.openai.com sends them
HTTP_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "http_401": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-test. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    "http_429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    "http_500": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
}

SCENARIOS = ("text", "slow", "thinking", "tool_use", "usage_cached", "hang", *HTTP_ERRORS)


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def split_deltas(text: str, pieces: int = 3) -> list[str]:
    """Split text into about `pieces` deltas on word boundaries (spaces kept)."""
    words = re.findall(r"\S+\s*|\s+", text)
    if len(words) <= pieces:
        return words
    out: list[str] = []
    size, extra = divmod(len(words), pieces)
    i = 0
    for n in range(pieces):
        step = size + (1 if n < extra else 0)
        out.append("".join(words[i : i + step]))
        i += step
    return out


def error_body(message: str, err_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _carries_tool_result(body: dict[str, Any]) -> bool:
    """True when a `tool` message follows the last user message (the tool has run)."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            return True
        if message.get("role") == "user":
            return False
    return False


class _Answer:
    """One assistant turn: text deltas and/or one tool call, renderable as SSE or JSON."""

    def __init__(
        self,
        model: str,
        deltas: list[str],
        tool_call: tuple[str, dict[str, Any]] | None = None,
        cached_tokens: int = 0,
        reasoning: list[str] | None = None,
    ) -> None:
        self.id = "chatcmpl-mock" + _hex()
        self.created = int(time.time())
        self.model = model
        self.deltas = deltas
        self.reasoning = reasoning or []
        self.tool_call = None
        if tool_call is not None:
            self.tool_call = {"id": "call_mock_" + _hex(), "name": tool_call[0], "arguments": json.dumps(tool_call[1])}
        self.finish_reason = "tool_calls" if tool_call else "stop"
        prompt = PROMPT_TOKENS + cached_tokens
        self.usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": prompt + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def chunks(self, include_usage: bool) -> Iterator[tuple[dict[str, Any], bool]]:
        """(chunk, is_delta); the flag lets the server pace the content deltas only."""
        yield self._chunk({"role": "assistant", "content": "", "refusal": None}), False
        for thought in self.reasoning:
            yield self._chunk({"reasoning_content": thought}), True
        for text in self.deltas:
            yield self._chunk({"content": text}), True
        if self.tool_call is not None:
            call = self.tool_call
            head = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            yield self._chunk({"tool_calls": [head]}), False
            raw = call["arguments"]
            # Uneven slices, like the real API, so clients must buffer partial JSON.
            for start in range(0, len(raw), 11):
                piece = {"index": 0, "function": {"arguments": raw[start : start + 11]}}
                yield self._chunk({"tool_calls": [piece]}), False
        yield self._chunk({}, self.finish_reason), False
        if include_usage:
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self.usage
            yield usage_chunk, False

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.deltas) or None, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_call is not None:
            call = self.tool_call
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }


class _Handler(MockHandler["MockOpenAIChat"]):
    def _extra_fields(self, path: str) -> dict[str, Any]:
        return {"time": time.monotonic()}

    # --- verbs ----------------------------------------------------------

    def do_GET(self) -> None:
        path, _ = self._record(b"")
        if path.rstrip("/").endswith("/models"):
            mock = self.mock
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in mock.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, error_body(f"Unknown request URL: GET {path}", "invalid_request_error"))

    def do_POST(self) -> None:
        path, body = self._record(self._read_body())
        mock = self.mock
        if not path.endswith("/chat/completions"):
            self._send_json(404, error_body(f"Unknown request URL: POST {path}", "invalid_request_error"))
            return
        if body is None:
            self._send_json(
                400, error_body("We could not parse the JSON body of your request.", "invalid_request_error")
            )
            return
        scenario = mock.scenario
        if scenario == "hang":
            self._hang()
            return
        if scenario in HTTP_ERRORS:
            status, err_type, code, message = HTTP_ERRORS[scenario]
            self._send_json(status, error_body(message, err_type, code))
            return
        answer = mock._answer(scenario, body)
        if answer is None:
            self._send_json(500, error_body(f"mock: unknown scenario {scenario!r}", "server_error"))
            return
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self._stream(answer, scenario, include_usage)
        else:
            self._send_json(200, answer.completion())

    def _stream(self, answer: _Answer, scenario: str, include_usage: bool) -> None:
        mock = self.mock
        delay = mock.token_delay or (0.2 if scenario == "slow" else 0.0)
        self._start_stream()
        try:
            for chunk, is_delta in answer.chunks(include_usage):
                if is_delta and self._pause(delay):
                    return  # the mock is closing: abandon the stream mid-way
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._end_stream()
        except OSError:
            self.close_connection = True  # the client gave up (e.g. the CLI was killed)


class MockOpenAIChat(LoopbackMock):
    """Mock OpenAI Chat Completions API served from a daemon thread on 127.0.0.1.

    Attributes tests may change at any time (each request reads them afresh):

    - ``scenario``: one of ``SCENARIOS``. ``thinking`` streams ``reasoning_content`` before
      the text. ``tool_use`` calls ``tool_name`` with
      ``tool_arguments`` on the first turn and answers ``"Tool finished: <text>"`` once the
      request carries a tool result.
    - ``token_delay``: seconds before each content delta (``slow`` uses 0.2 when 0).
    - ``text``: the answer of text-like scenarios.
    - ``models``: what ``GET /v1/models`` lists.
    - ``requests``: every request, as dicts with ``time`` (monotonic), ``method``, ``path``
      (no query), ``query``, ``headers`` (lower-cased keys) and ``json`` (parsed body or None).
    """

    def __init__(self, scenario: str = "text", *, token_delay: float = 0.0, text: str = DEFAULT_TEXT) -> None:
        self.tool_name = TOOL_NAME
        self.tool_arguments: dict[str, Any] = dict(TOOL_ARGUMENTS)
        self.models: list[str] = list(DEFAULT_MODELS)
        super().__init__(
            _Handler, scenario=scenario, token_delay=token_delay, text=text, thread_name="mock-openai-chat"
        )
        self.base_url = self.url + "/v1"
        """What OpenAI clients take as their base URL (OPENAI_BASE_URL)."""

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Only the ``POST .../chat/completions`` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/chat/completions")]

    def _awaited_requests(self) -> list[dict[str, Any]]:
        return self.chat_requests

    def _answer(self, scenario: str, body: dict[str, Any]) -> _Answer | None:
        model = str(body.get("model") or "mock-model")
        if scenario == "text":
            return _Answer(model, split_deltas(self.text))
        if scenario == "usage_cached":
            return _Answer(model, split_deltas(self.text), cached_tokens=CACHED_TOKENS)
        if scenario == "slow":
            return _Answer(model, list(SLOW_WORDS))
        if scenario == "thinking":
            return _Answer(model, split_deltas(self.text), reasoning=list(THINKING_DELTAS))
        if scenario == "tool_use":
            if _carries_tool_result(body):
                return _Answer(model, split_deltas(f"Tool finished: {self.text}"))
            return _Answer(model, [TOOL_PREAMBLE], tool_call=(self.tool_name, self.tool_arguments))
        return None
