"""A mock OpenAI Responses API (`POST /v1/responses`, SSE) on 127.0.0.1 for llmrun's tests.

Good enough to run the real OpenAI Codex CLI (0.169) end to end: it answers with the
event sequence of the real service (`response.created`, `response.output_item.added`,
`response.output_text.delta`, ..., `response.output_item.done`, `response.completed` with
usage), so `codex exec --json` prints exactly what it prints in production. Stdlib only.

Usage::

    with MockResponses() as api:
        api.scenario = "tool_use"
        argv = ["codex", *codex_provider_args(api.url), "exec", ...]
        ...
        assert api.responses_requests[-1]["json"]["model"] == "gpt-5"
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mockserver import LoopbackMock, MockHandler

__all__ = [
    "CODEX_OFFLINE_ARGS",
    "DEFAULT_TEXT",
    "PATCH_FILE_NAME",
    "REASONING_TEXT",
    "SCENARIOS",
    "SLOW_WORDS",
    "TOOL_COMMAND",
    "TOOL_PREAMBLE",
    "TOOL_PREFIX",
    "WRITE_FILE_NAME",
    "MockResponses",
    "codex_provider_args",
    "sample_for_schema",
]

DEFAULT_TEXT = "Hello from mock"
SLOW_WORDS = ["one ", "two ", "three ", "four ", "five ", "six"]
REASONING_TEXT = "**Thinking it over** The user greets me; a short reply is enough."
INPUT_TOKENS = 12
OUTPUT_TOKENS = 7
REASONING_TOKENS = 3
CACHED_TOKENS = 100

# The shell tool codex offers (exec_command) and what the mock asks it to run.
SHELL_TOOL = "exec_command"
TOOL_COMMAND = "echo mock-tool-ran"
WRITE_FILE_NAME = "codex-created.txt"
TOOL_PREFIX = "Tool finished: "
TOOL_PREAMBLE = "I will run a command."
PATCH_FILE_NAME = "codex-patched.txt"
PATCH = f"*** Begin Patch\n*** Add File: {PATCH_FILE_NAME}\n+patched by mock\n*** End Patch\n"

# status, error body, extra headers — shaped like api.openai.com's error answers
HTTP_ERRORS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "http_401": (
        401,
        {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error", "code": "invalid_api_key"},
        {},
    ),
    "http_429": (
        429,
        {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"},
        {"retry-after": "0"},
    ),
    "http_500": (500, {"message": "The server had an error processing your request.", "type": "server_error"}, {}),
    "http_503": (503, {"message": "The engine is currently overloaded.", "type": "server_error"}, {}),
    "model_not_found": (
        404,
        {
            "message": "The model `no-such-model` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "code": "model_not_found",
        },
        {},
    ),
}

SCENARIOS = (
    "text",
    "reasoning",
    "usage_cached",
    "tool_use",
    "tool_write",
    "patch",
    "slow",
    "hang",
    "context_length",
    *HTTP_ERRORS,
)


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def _split_words(text: str, pieces: int = 3) -> list[str]:
    words = text.split(" ")
    if len(words) <= pieces:
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    size = -(-len(words) // pieces)
    groups = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [g + (" " if i < len(groups) - 1 else "") for i, g in enumerate(groups)]


class _Item:
    """One output item: the events that build it and its final form."""

    def __init__(self, added: dict[str, Any], deltas: list[tuple[str, dict[str, Any]]], done: dict[str, Any]):
        self.added = added
        self.deltas = deltas
        self.done = done


def _message_item(text: str, words: list[str] | None = None) -> _Item:
    item_id = "msg_" + _hex()
    pieces = words if words is not None else _split_words(text)
    part = {"type": "output_text", "text": "", "annotations": []}
    deltas: list[tuple[str, dict[str, Any]]] = [("response.content_part.added", {"content_index": 0, "part": part})]
    deltas += [("response.output_text.delta", {"content_index": 0, "delta": piece, "logprobs": []}) for piece in pieces]
    final_part = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
    deltas += [
        ("response.output_text.done", {"content_index": 0, "text": final_part["text"], "logprobs": []}),
        ("response.content_part.done", {"content_index": 0, "part": final_part}),
    ]
    added = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    done = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [final_part]}
    return _Item(added, deltas, done)


def _reasoning_item() -> _Item:
    item_id = "rs_" + _hex()
    summary = {"type": "summary_text", "text": REASONING_TEXT}
    deltas: list[tuple[str, dict[str, Any]]] = [
        ("response.reasoning_summary_part.added", {"summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
    ]
    deltas += [
        ("response.reasoning_summary_text.delta", {"summary_index": 0, "delta": piece})
        for piece in _split_words(REASONING_TEXT)
    ]
    deltas += [
        ("response.reasoning_summary_text.done", {"summary_index": 0, "text": REASONING_TEXT}),
        ("response.reasoning_summary_part.done", {"summary_index": 0, "part": summary}),
    ]
    added = {"id": item_id, "type": "reasoning", "summary": []}
    done = {"id": item_id, "type": "reasoning", "summary": [summary], "encrypted_content": "mock-" + _hex()}
    return _Item(added, deltas, done)


def _function_call_item(name: str, arguments: dict[str, Any]) -> _Item:
    item_id = "fc_" + _hex()
    call_id = "call_" + _hex()
    raw = json.dumps(arguments)
    # Uneven slices, like the real service, so clients must buffer partial JSON.
    cuts = [*range(0, len(raw), 11), len(raw)]
    deltas: list[tuple[str, dict[str, Any]]] = [
        ("response.function_call_arguments.delta", {"delta": raw[a:b]}) for a, b in zip(cuts, cuts[1:]) if raw[a:b]
    ]
    deltas.append(("response.function_call_arguments.done", {"arguments": raw}))
    base = {"id": item_id, "type": "function_call", "name": name, "call_id": call_id}
    return _Item(
        {**base, "status": "in_progress", "arguments": ""}, deltas, {**base, "status": "completed", "arguments": raw}
    )


def _custom_call_item(name: str, text: str) -> _Item:
    item_id = "ctc_" + _hex()
    base = {"id": item_id, "type": "custom_tool_call", "name": name, "call_id": "call_" + _hex()}
    deltas: list[tuple[str, dict[str, Any]]] = [("response.custom_tool_call_input.delta", {"delta": text})]
    return _Item({**base, "status": "in_progress", "input": ""}, deltas, {**base, "status": "completed", "input": text})


def _function_outputs(body: dict[str, Any]) -> list[str]:
    """The `function_call_output` texts in the request, oldest first."""
    outputs = []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            outputs.append(output if isinstance(output, str) else json.dumps(output))
    return outputs


def _requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a structured-output request (`text.format`), if any."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return fmt["schema"]
    return None


def sample_for_schema(schema: dict[str, Any]) -> Any:
    """A small value that satisfies `schema` (objects, arrays, strings, numbers, booleans, enums)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: sample_for_schema(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample_for_schema(schema.get("items") or {"type": "string"})]
    if kind in ("integer", "number"):
        return 42
    if kind == "boolean":
        return True
    return DEFAULT_TEXT


def _last_input_is_tool_output(body: dict[str, Any]) -> bool:
    items = [i for i in body.get("input") or [] if isinstance(i, dict)]
    return bool(items) and items[-1].get("type") in ("function_call_output", "custom_tool_call_output")


class _Answer:
    """A whole response, renderable as SSE events."""

    def __init__(self, model: str, items: list[_Item], *, cached: int = 0, reasoning: int = 0):
        self.id = "resp_" + _hex()
        self.model = model
        self.items = items
        self.usage = {
            "input_tokens": INPUT_TOKENS + cached,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": OUTPUT_TOKENS + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": INPUT_TOKENS + cached + OUTPUT_TOKENS + reasoning,
        }

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self.model,
            "output": output,
            "usage": usage,
        }

    def events(self) -> Iterator[tuple[tuple[str, dict[str, Any]], bool]]:
        """Yield ((event name, data), is_delta); the flag lets the server pace deltas only."""
        yield ("response.created", {"response": self._response("in_progress", [], None)}), False
        yield ("response.in_progress", {"response": self._response("in_progress", [], None)}), False
        for index, item in enumerate(self.items):
            yield ("response.output_item.added", {"output_index": index, "item": item.added}), False
            for name, data in item.deltas:
                is_delta = name.endswith(".delta")
                yield (name, {"item_id": item.added["id"], "output_index": index, **data}), is_delta
            yield ("response.output_item.done", {"output_index": index, "item": item.done}), False
        output = [item.done for item in self.items]
        yield ("response.completed", {"response": self._response("completed", output, self.usage)}), False


class _Handler(MockHandler["MockResponses"]):
    def _parse(self, body: bytes) -> Any:
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if body and encoding == "zstd":
            return None  # codex may compress; the mock cannot read zstd with the stdlib
        if body and encoding in ("gzip", "deflate"):
            import zlib

            body = zlib.decompress(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        return super()._parse(body)

    # --- verbs ----------------------------------------------------------

    def do_GET(self) -> None:
        path, _ = self._record(b"")
        if path.endswith("/models"):
            self._send_json(200, {"object": "list", "data": []})
        else:
            self._send_json(404, {"error": {"message": f"Not found: {path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        raw = self._read_body()
        path, body = self._record(raw)
        mock = self.mock
        if not path.endswith("/responses"):
            self._send_json(404, {"error": {"message": f"Not found: {path}", "type": "invalid_request_error"}})
            return
        body = body or {}
        scenario = mock.scenario
        if scenario == "hang":
            self._hang()
            return
        if scenario in HTTP_ERRORS:
            status, error, headers = HTTP_ERRORS[scenario]
            self._send_json(status, {"error": {"param": None, "code": None, **error}}, headers)
            return
        if scenario == "context_length":
            self._stream_failed(body, "context_length_exceeded", "Your input exceeds the context window of this model.")
            return
        answer = mock._answer(scenario, body)
        if answer is None:
            self._send_json(500, {"error": {"message": f"mock: unknown scenario {scenario!r}", "type": "server_error"}})
            return
        self._stream(answer, scenario)

    def _event(self, name: str, data: dict[str, Any], sequence: int) -> None:
        payload = {"type": name, "sequence_number": sequence, **data}
        self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())

    def _stream(self, answer: _Answer, scenario: str) -> None:
        mock = self.mock
        delay = mock.token_delay or (0.2 if scenario == "slow" else 0.0)
        self._start_stream()
        try:
            for sequence, ((name, data), is_delta) in enumerate(answer.events()):
                if is_delta and self._pause(delay):
                    return  # mock is closing: abandon the stream mid-way
                self._event(name, data, sequence)
            self._end_stream()
        except OSError:
            self.close_connection = True  # client gave up (e.g. the CLI was killed) or we are closing

    def _stream_failed(self, body: dict[str, Any], code: str, message: str) -> None:
        answer = _Answer(str(body.get("model") or "mock-model"), [])
        failed = answer._response("failed", [], None)
        failed["error"] = {"code": code, "message": message}
        self._start_stream()
        try:
            self._event("response.created", {"response": answer._response("in_progress", [], None)}, 0)
            self._event("response.failed", {"response": failed}, 1)
            self._end_stream()
        except OSError:
            self.close_connection = True


class MockResponses(LoopbackMock):
    """Mock OpenAI Responses API served from a daemon thread on 127.0.0.1.

    Attributes tests may change at any time (each request reads them afresh):

    - ``scenario``: one of ``SCENARIOS``. ``tool_use`` asks the client to run
      ``TOOL_COMMAND`` through its shell tool, ``tool_write`` to create ``WRITE_FILE_NAME``
      in its working directory; any request whose last input item is a tool output gets
      ``"Tool finished: <text>"``.
    - ``token_delay``: seconds to wait before each SSE delta (``slow`` uses 0.2 when 0).
    - ``text``: answer text for text-like scenarios (default ``"Hello from mock"``).
    - ``requests``: every request received, as dicts with ``method``, ``path`` (no query),
      ``query``, ``headers`` (lower-cased keys) and ``json`` (parsed body or None).
    """

    def __init__(self, scenario: str = "text", *, token_delay: float = 0.0, text: str = DEFAULT_TEXT) -> None:
        super().__init__(_Handler, scenario=scenario, token_delay=token_delay, text=text, thread_name="mock-responses")
        self.url += "/v1"

    # --- test-facing helpers ---------------------------------------------

    @property
    def responses_requests(self) -> list[dict[str, Any]]:
        """Only the ``POST .../responses`` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/responses")]

    def tool_outputs(self) -> list[str]:
        """Every tool output the client sent back in its last request."""
        requests = self.responses_requests
        return _function_outputs(requests[-1]["json"] or {}) if requests else []

    def _awaited_requests(self) -> list[dict[str, Any]]:
        return self.responses_requests

    def _answer(self, scenario: str, body: dict[str, Any]) -> _Answer | None:
        model = str(body.get("model") or "mock-model")
        text = self.text
        if scenario == "patch":
            if _last_input_is_tool_output(body):
                return _Answer(model, [_message_item(TOOL_PREFIX + text)])
            return _Answer(model, [_message_item(TOOL_PREAMBLE), _custom_call_item("apply_patch", PATCH)])
        if scenario in ("tool_use", "tool_write"):
            if _last_input_is_tool_output(body):
                return _Answer(model, [_message_item(TOOL_PREFIX + text)])
            command = TOOL_COMMAND if scenario == "tool_use" else f"touch {WRITE_FILE_NAME}"
            return _Answer(model, [_message_item(TOOL_PREAMBLE), _function_call_item(SHELL_TOOL, {"cmd": command})])
        if scenario == "text":
            schema = _requested_schema(body)
            if schema is not None:
                return _Answer(model, [_message_item(json.dumps(sample_for_schema(schema)))])
            return _Answer(model, [_message_item(text)])
        if scenario == "usage_cached":
            return _Answer(model, [_message_item(text)], cached=CACHED_TOKENS)
        if scenario == "reasoning":
            return _Answer(model, [_reasoning_item(), _message_item(text)], reasoning=REASONING_TOKENS)
        if scenario == "slow":
            return _Answer(model, [_message_item("".join(SLOW_WORDS), words=SLOW_WORDS)])
        return None


# Switches that keep codex off other services (plugin and app sync on GitHub and ChatGPT,
# analytics, update checks); llmrun sets them too, except plugins and apps with tools on.
CODEX_OFFLINE_ARGS = [
    "-c",
    "features.plugins=false",
    "-c",
    "features.remote_plugin=false",
    "-c",
    "features.apps=false",
    "-c",
    "analytics.enabled=false",
    "-c",
    "feedback.enabled=false",
    "-c",
    "check_for_update_on_startup=false",
]


def codex_provider_args(base_url: str, *, retries: int | None = 0, offline: bool = True) -> list[str]:
    """Global `codex` options that point it at a mock on `base_url`, with no config file.

    They define a provider named `mock` speaking the Responses API, keyed by
    OPENAI_API_KEY. `retries` bounds codex's request and stream retries for that
    provider (None leaves codex's defaults of several retries with back-off); `offline`
    adds CODEX_OFFLINE_ARGS.
    """
    args = [
        "-c",
        "model_provider=mock",
        "-c",
        'model_providers.mock.name="Mock"',
        "-c",
        f'model_providers.mock.base_url="{base_url}"',
        "-c",
        'model_providers.mock.env_key="OPENAI_API_KEY"',
        "-c",
        'model_providers.mock.wire_api="responses"',
    ]
    if retries is not None:
        args += [
            "-c",
            f"model_providers.mock.request_max_retries={retries}",
            "-c",
            f"model_providers.mock.stream_max_retries={retries}",
        ]
    return args + (CODEX_OFFLINE_ARGS if offline else [])
