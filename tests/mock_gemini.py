"""A mock Gemini API (generativelanguage v1beta) on 127.0.0.1 for llmrun's tests.

Good enough to run the real Gemini CLI (0.61.x) end to end: it answers
``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` with the same SSE chunks as
the real service (text parts, function calls, thought parts, ``usageMetadata`` and
``finishReason`` on the last chunk), ``:generateContent`` (also with JSON built from a
``responseJsonSchema``, which the CLI's model router and helpers ask for), ``:countTokens``
and ``GET /v1beta/models``. Errors use Google's body shape,
``{"error": {"code", "message", "status"}}``. Stdlib only.

Usage::

    with MockGemini() as api:
        api.scenario = "tool_use"
        env = {"GOOGLE_GEMINI_BASE_URL": api.url, "GEMINI_API_KEY": "fake", ...}
        ...
        assert api.generate_requests[-1]["model"] == "gemini-2.5-flash"
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from mockserver import LoopbackMock, MockHandler

__all__ = ["DEFAULT_TEXT", "SCENARIOS", "MockGemini"]

DEFAULT_TEXT = "Hello from mock"
SLOW_WORDS = ["one ", "two ", "three ", "four ", "five ", "six"]
INPUT_TOKENS = 12
OUTPUT_TOKENS = 7
CACHED_TOKENS = 5
THOUGHT_TOKENS = 3

TOOL_NAME = "run_shell_command"
TOOL_INPUT = {"command": "echo mock-tool-ran", "description": "Print a marker"}
TOOL_PREAMBLE = "I will run a command."
THOUGHT_TEXT = "The user greets me; a short reply will do."

# status, Google status word, message — as generativelanguage.googleapis.com sends them
HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_400_context": (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    ),
    "http_401": (401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    "http_404_model": (
        404,
        "NOT_FOUND",
        "models/no-such-model is not found for API version v1beta, or is not supported for generateContent.",
    ),
    "http_429": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    "http_500": (500, "INTERNAL", "An internal error has occurred. Please retry or report it."),
    "http_503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
}

SCENARIOS = ("text", "usage_cached", "thinking", "tool_use", "slow", "stall", "hang", *HTTP_ERRORS)

# The CLI asks for these paths; anything else is a 404 in Google's shape.
_MODEL_CALL = re.compile(r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")


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


def _error_body(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _last_user_has_function_response(body: dict[str, Any]) -> bool:
    for content in reversed(body.get("contents") or []):
        if not isinstance(content, dict) or content.get("role") not in (None, "user"):
            continue
        return any(isinstance(p, dict) and "functionResponse" in p for p in content.get("parts") or [])
    return False


def example_from_schema(schema: Any) -> Any:
    """A value that satisfies a (JSON or OpenAPI-style) schema, for structured-output calls."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example_from_schema(sub) for name, sub in props.items()}
    if kind == "array":
        return [example_from_schema(schema.get("items") or {"type": "string"})]
    if kind == "integer":
        return 10
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    return "mock"


class _Answer:
    """One model turn: a list of chunks, each a list of parts, plus the usage to report."""

    def __init__(self, model: str, chunks: list[list[dict[str, Any]]], *, cached: int = 0, thoughts: int = 0):
        self.model = model
        self.chunks = chunks
        self.response_id = uuid.uuid4().hex[:20]
        self.cached = cached
        self.thoughts = thoughts

    def usage(self, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": INPUT_TOKENS}
        if final:
            usage["candidatesTokenCount"] = OUTPUT_TOKENS
            usage["totalTokenCount"] = INPUT_TOKENS + OUTPUT_TOKENS + self.thoughts
            if self.thoughts:
                usage["thoughtsTokenCount"] = self.thoughts
        else:
            usage["totalTokenCount"] = INPUT_TOKENS
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": INPUT_TOKENS}]
        return usage

    def sse_chunks(self) -> list[tuple[dict[str, Any], bool]]:
        """(chunk, carries answer text) pairs; the flag lets the server pace text only."""
        out = []
        for index, parts in enumerate(self.chunks):
            final = index == len(self.chunks) - 1
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if final:
                candidate["finishReason"] = "STOP"
            chunk = {
                "candidates": [candidate],
                "usageMetadata": self.usage(final),
                "modelVersion": self.model,
                "responseId": self.response_id,
            }
            out.append((chunk, any("text" in p and not p.get("thought") for p in parts)))
        return out

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        for chunk in self.chunks:
            for part in chunk:
                if "text" in part and parts and "text" in parts[-1] and parts[-1].get("thought") == part.get("thought"):
                    parts[-1] = dict(parts[-1], text=parts[-1]["text"] + part["text"])
                else:
                    parts.append(dict(part))
        return {
            "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": self.usage(True),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }


class _Handler(MockHandler["MockGemini"]):
    json_type = "application/json; charset=UTF-8"
    request_id_header = None

    def _extra_fields(self, path: str) -> dict[str, Any]:
        match = _MODEL_CALL.match(path)
        return {"model": match.group("model") if match else None, "call": match.group("method") if match else None}

    # --- verbs ----------------------------------------------------------

    def do_GET(self) -> None:
        path, _ = self._record(b"")
        if path.rstrip("/").endswith("/models"):
            models = [
                {
                    "name": f"models/{name}",
                    "displayName": name,
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                }
                for name in self.mock.models
            ]
            self._send_json(200, {"models": models})
        else:
            self._send_json(404, _error_body(404, "NOT_FOUND", f"Not found: {path}"))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        raw = self._read_body()
        path, body = self._record(raw)
        mock = self.mock
        match = _MODEL_CALL.match(path)
        if match is None:
            self._send_json(404, _error_body(404, "NOT_FOUND", f"Not found: {path}"))
            return
        if body is None:
            self._send_json(400, _error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
            return
        model, method = match.group("model"), match.group("method")
        if method == "countTokens":
            self._send_json(200, {"totalTokens": INPUT_TOKENS})
            return
        if method not in ("generateContent", "streamGenerateContent"):
            self._send_json(404, _error_body(404, "NOT_FOUND", f"Method not found: {method}"))
            return
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if schema is not None:
            # A helper call of the CLI (model router, next-speaker check): always answered, so
            # the scenario applies to the conversation itself.
            answer = _Answer(model, [[{"text": json.dumps(example_from_schema(schema))}]])
            self._send_json(200, answer.whole())
            return

        scenario = mock.scenario
        if scenario == "hang":
            self._hang()
            return
        if scenario in HTTP_ERRORS:
            status, word, message = HTTP_ERRORS[scenario]
            self._send_json(status, _error_body(status, word, message))
            return
        answer = mock._answer(scenario, model, body)
        if answer is None:
            self._send_json(500, _error_body(500, "INTERNAL", f"mock: unknown scenario {scenario!r}"))
            return
        if method == "streamGenerateContent":
            self._stream(answer, scenario)
        else:
            self._send_json(200, answer.whole())

    def _stream(self, answer: _Answer, scenario: str) -> None:
        mock = self.mock
        delay = mock.token_delay or (0.2 if scenario == "slow" else 0.0)
        self._start_stream("text/event-stream", no_cache=False)
        try:
            for index, (chunk, is_text) in enumerate(answer.sse_chunks()):
                if is_text and self._pause(delay):
                    return
                if index == 1 and scenario == "stall":
                    self._hang()  # the first words came; then silence until the mock closes
                    return
                self._chunk(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
            self._end_stream()
        except OSError:
            self.close_connection = True


class MockGemini(LoopbackMock):
    """Mock Gemini API served from a daemon thread on 127.0.0.1.

    Attributes tests may change at any time (each request reads them afresh):

    - ``scenario``: one of ``SCENARIOS`` (``stall`` sends the first word, then nothing;
      ``hang`` answers nothing at all).
    - ``token_delay``: seconds before each text chunk (``slow`` uses 0.2 when 0).
    - ``text``: answer text for text-like scenarios.
    - ``models``: what ``GET /v1beta/models`` lists.
    - ``requests``: every request, as dicts with ``method``, ``path`` (no query), ``query``,
      ``model`` and ``call`` (for ``/models/<model>:<call>`` paths), ``headers`` (lower-cased
      keys) and ``json`` (parsed body or None).
    """

    def __init__(self, scenario: str = "text", *, token_delay: float = 0.0, text: str = DEFAULT_TEXT) -> None:
        self.models = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite"]
        super().__init__(_Handler, scenario=scenario, token_delay=token_delay, text=text, thread_name="mock-gemini")

    # --- test-facing helpers ---------------------------------------------

    @property
    def generate_requests(self) -> list[dict[str, Any]]:
        """The conversation calls (stream or not), helper calls with a response schema left out."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r["call"] in ("generateContent", "streamGenerateContent") and not _is_helper_call(r["json"])
            ]

    def _awaited_requests(self) -> list[dict[str, Any]]:
        return self.generate_requests

    def _answer(self, scenario: str, model: str, body: dict[str, Any]) -> _Answer | None:
        text = self.text
        texts = [[{"text": piece}] for piece in split_deltas(text)]
        if scenario == "text":
            return _Answer(model, texts)
        if scenario == "usage_cached":
            return _Answer(model, texts, cached=CACHED_TOKENS)
        if scenario == "thinking":
            return _Answer(model, [[{"text": THOUGHT_TEXT, "thought": True}], *texts], thoughts=THOUGHT_TOKENS)
        if scenario in ("slow", "stall"):
            return _Answer(model, [[{"text": word}] for word in SLOW_WORDS])
        if scenario == "tool_use":
            if _last_user_has_function_response(body):
                return _Answer(model, [[{"text": piece}] for piece in split_deltas(f"Tool finished: {text}")])
            call = {"functionCall": {"name": TOOL_NAME, "args": dict(TOOL_INPUT)}}
            return _Answer(model, [[{"text": TOOL_PREAMBLE}], [call]])
        return None


def _is_helper_call(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    config = body.get("generationConfig") or {}
    return bool(config.get("responseJsonSchema") or config.get("responseSchema"))
