"""A mock Anthropic Messages API on 127.0.0.1 for llmrun's tests.

Good enough to run the real Claude Code CLI (2.1.x) end to end: it speaks the
same SSE event sequence as api.anthropic.com, so the CLI's stream-json output
(including ``--include-partial-messages``) looks exactly like it does in
production.  Stdlib only, so tests need nothing beyond pytest.

Usage::

    with MockAnthropic() as api:
        api.scenario = "tool_use"
        env = {"ANTHROPIC_BASE_URL": api.url, ...}
        ...
        assert api.message_requests[-1]["json"]["model"] == "claude-sonnet-5"
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from mockserver import LoopbackMock, MockHandler

__all__ = ["DEFAULT_TEXT", "SCENARIOS", "MockAnthropic"]

DEFAULT_TEXT = "Hello from mock"
SLOW_WORDS = ["one ", "two ", "three ", "four ", "five ", "six"]
INPUT_TOKENS = 12
OUTPUT_TOKENS = 7

TOOL_NAME = "Bash"
TOOL_INPUT = {"command": "echo mock-tool-ran", "description": "Print a marker"}
TOOL_PREAMBLE = "I will run a command."
# `structured`: the answer as the input of the tool claude offers for --json-schema.
STRUCTURED_TOOL = "StructuredOutput"
STRUCTURED_INPUT = {"answer": 4}
THINKING_DELTAS = ["Let me think. ", "Done thinking."]

# status, error.type, error.message, extra headers — as api.anthropic.com sends them
HTTP_ERRORS: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "http_401": (401, "authentication_error", "invalid x-api-key", {}),
    "http_429": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        {"retry-after": "0"},
    ),
    "http_500": (500, "api_error", "Internal server error", {}),
    "http_529": (529, "overloaded_error", "Overloaded", {"retry-after": "0"}),
}

SCENARIOS = (
    "text",
    "thinking",
    "tool_use",
    "structured",
    "usage_cached",
    "slow",
    "hang",
    *HTTP_ERRORS,
)

Event = tuple[str, dict[str, Any]]


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def split_deltas(text: str, pieces: int = 3) -> list[str]:
    """Split text into about `pieces` deltas on word boundaries (spaces kept)."""
    words = re.findall(r"\S+\s*|\s+", text)
    if len(words) <= pieces:
        return words
    # Spread the words evenly so a long override still arrives as ~3 deltas.
    out: list[str] = []
    size, extra = divmod(len(words), pieces)
    i = 0
    for n in range(pieces):
        step = size + (1 if n < extra else 0)
        out.append("".join(words[i : i + step]))
        i += step
    return out


def _error_body(err_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": err_type, "message": message}}


class _Block:
    """One content block of the answer: its start, its deltas and its final form."""

    def __init__(self, start: dict[str, Any], deltas: list[dict[str, Any]], final: dict[str, Any]):
        self.start = start
        self.deltas = deltas
        self.final = final


def _text_block(text: str) -> _Block:
    deltas = [{"type": "text_delta", "text": t} for t in split_deltas(text)]
    return _Block({"type": "text", "text": ""}, deltas, {"type": "text", "text": text})


def _words_block(words: list[str]) -> _Block:
    deltas = [{"type": "text_delta", "text": t} for t in words]
    text = "".join(words)
    return _Block({"type": "text", "text": ""}, deltas, {"type": "text", "text": text})


def _thinking_block() -> _Block:
    signature = "mock-signature-" + _hex()
    deltas: list[dict[str, Any]] = [{"type": "thinking_delta", "thinking": t} for t in THINKING_DELTAS]
    deltas.append({"type": "signature_delta", "signature": signature})
    final = {"type": "thinking", "thinking": "".join(THINKING_DELTAS), "signature": signature}
    return _Block({"type": "thinking", "thinking": "", "signature": ""}, deltas, final)


def _tool_use_block(name: str = TOOL_NAME, tool_input: dict[str, Any] = TOOL_INPUT) -> _Block:
    tool_id = "toolu_mock_" + _hex()
    raw = json.dumps(tool_input)
    # Uneven slices, like the real API, so clients must buffer partial JSON.
    cuts = list(range(0, len(raw), 13)) + [len(raw)]
    deltas = [{"type": "input_json_delta", "partial_json": raw[a:b]} for a, b in zip(cuts, cuts[1:]) if raw[a:b]]
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    final = {"type": "tool_use", "id": tool_id, "name": name, "input": dict(tool_input)}
    return _Block(start, deltas, final)


def _last_user_has_tool_result(body: dict[str, Any]) -> bool:
    # Claude Code interleaves role "system" messages, so look for the last *user* one.
    for msg in reversed(body.get("messages") or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
    return False


class _Answer:
    """A whole assistant message, renderable as SSE events or as one JSON object."""

    def __init__(
        self, model: str, blocks: list[_Block], stop_reason: str, cache_read: int = 0, cache_creation: int = 0
    ):
        self.id = "msg_mock_" + _hex()
        self.model = model
        self.blocks = blocks
        self.stop_reason = stop_reason
        self.usage = {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
        }

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [b.final for b in self.blocks],
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": dict(self.usage),
        }

    def events(self) -> Iterator[tuple[Event, bool]]:
        """Yield (event, is_delta); the flag lets the server pace deltas only."""
        start_msg = self.message()
        start_msg.update(content=[], stop_reason=None)
        # The real API reports a provisional output_tokens of 1 in message_start.
        start_msg["usage"] = dict(self.usage, output_tokens=1)
        yield ("message_start", {"type": "message_start", "message": start_msg}), False
        for index, block in enumerate(self.blocks):
            yield (
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block.start}),
                False,
            )
            if index == 0:
                # The real API sends its ping right after the first block opens.
                yield ("ping", {"type": "ping"}), False
            for delta in block.deltas:
                yield ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}), True
            yield ("content_block_stop", {"type": "content_block_stop", "index": index}), False
        yield (
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": OUTPUT_TOKENS},
                },
            ),
            False,
        )
        yield ("message_stop", {"type": "message_stop"}), False


class _Handler(MockHandler["MockAnthropic"]):
    request_id_header = "request-id"

    def _send_empty(self, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # --- verbs ----------------------------------------------------------

    def do_HEAD(self) -> None:
        path, _ = self._record(b"")
        if path == "/":
            self._send_empty()
        else:
            self._send_json(404, _error_body("not_found_error", f"Not found: {path}"))

    def do_GET(self) -> None:
        self.do_HEAD()

    def do_POST(self) -> None:
        raw = self._read_body()
        path, body = self._record(raw)
        mock = self.mock
        if path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": INPUT_TOKENS})
            return
        if path != "/v1/messages":
            self._send_json(404, _error_body("not_found_error", f"Not found: {path}"))
            return
        if body is None:
            self._send_json(400, _error_body("invalid_request_error", "Request body must be a JSON object"))
            return

        scenario = mock.scenario
        if scenario == "hang":
            self._hang()
            return
        if scenario in HTTP_ERRORS:
            status, err_type, message, headers = HTTP_ERRORS[scenario]
            self._send_json(status, _error_body(err_type, message), headers)
            return

        answer = mock._answer(scenario, body)
        if answer is None:
            self._send_json(500, _error_body("api_error", f"mock: unknown scenario {scenario!r}"))
            return
        if body.get("stream"):
            self._stream(answer, scenario)
        else:
            self._send_json(200, answer.message())

    def _stream(self, answer: _Answer, scenario: str) -> None:
        mock = self.mock
        delay = mock.token_delay or (0.2 if scenario == "slow" else 0.0)
        self._start_stream()
        try:
            for (name, data), is_delta in answer.events():
                if is_delta and self._pause(delay):
                    return  # mock is closing: abandon the stream mid-way
                self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self._end_stream()
        except OSError:
            self.close_connection = True  # client gave up (e.g. the CLI was killed) or we are closing


class MockAnthropic(LoopbackMock):
    """Mock Anthropic Messages API served from a daemon thread on 127.0.0.1.

    Attributes tests may change at any time (each request reads them afresh):

    - ``scenario``: one of ``SCENARIOS``.
    - ``token_delay``: seconds to wait before each SSE delta (``slow`` uses 0.2 when 0).
    - ``text``: answer text for text-like scenarios (default ``"Hello from mock"``).
    - ``requests``: every request received, as dicts with ``method``, ``path`` (no query),
      ``query``, ``headers`` (lower-cased keys) and ``json`` (parsed body or None).
    """

    def __init__(self, scenario: str = "text", *, token_delay: float = 0.0, text: str = DEFAULT_TEXT) -> None:
        super().__init__(_Handler, scenario=scenario, token_delay=token_delay, text=text, thread_name="mock-anthropic")

    # --- test-facing helpers ---------------------------------------------

    @property
    def message_requests(self) -> list[dict[str, Any]]:
        """Only the ``POST /v1/messages`` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == "/v1/messages"]

    def _awaited_requests(self) -> list[dict[str, Any]]:
        return self.message_requests

    def _answer(self, scenario: str, body: dict[str, Any]) -> _Answer | None:
        model = str(body.get("model") or "claude-mock")
        text = self.text
        if scenario == "text":
            return _Answer(model, [_text_block(text)], "end_turn")
        if scenario == "usage_cached":
            return _Answer(model, [_text_block(text)], "end_turn", cache_read=100, cache_creation=20)
        if scenario == "thinking":
            return _Answer(model, [_thinking_block(), _text_block(text)], "end_turn")
        if scenario == "slow":
            return _Answer(model, [_words_block(SLOW_WORDS)], "end_turn")
        if scenario == "tool_use":
            if _last_user_has_tool_result(body):
                return _Answer(model, [_text_block(f"Tool finished: {text}")], "end_turn")
            return _Answer(model, [_text_block(TOOL_PREAMBLE), _tool_use_block()], "tool_use")
        if scenario == "structured":
            if _last_user_has_tool_result(body):
                return _Answer(model, [_text_block("Done.")], "end_turn")
            return _Answer(model, [_tool_use_block(STRUCTURED_TOOL, STRUCTURED_INPUT)], "tool_use")
        return None
