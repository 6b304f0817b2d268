"""The OpenAI Chat Completions dialect: request bodies in, responses, SSE chunks and errors out.

Streams follow OpenAI's order: a role chunk, content deltas (thinking as
`reasoning_content`), tool-call deltas, one chunk with finish_reason, a usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`. An error after the stream has
started is one `data: {"error": ...}` event, and the stream ends without [DONE].
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .. import openai_format
from ..errors import InvalidRequest, LlmrunError, UnsupportedFeature
from ..openai_format import function_tools as function_tools  # the other dialects import these from here
from ..openai_format import tool_arguments as tool_arguments
from ..types import ChatChunk, ChatRequest, ChatResponse
from . import attachments
from .common import (
    SSE,
    SSE_PING,
    check_fields,
    error_headers,
    expect_list,
    model_name,
    public_message,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_ERROR_CODES = {
    "ModelNotFound": "model_not_found",
    "RunnerNotFound": "model_not_found",
    "ContextLengthExceeded": "context_length_exceeded",
    "RateLimitError": "rate_limit_exceeded",
    "Busy": "server_busy",
    "Overloaded": "server_busy",
    "AuthenticationError": "upstream_authentication_failed",
    "Unauthorized": "invalid_api_key",
}


def error_body(exc: LlmrunError) -> dict[str, Any]:
    status = exc.http_status
    name = type(exc).__name__
    code = _ERROR_CODES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return {
        "error": {
            "message": public_message(exc),
            "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": None,
            "code": code,
        }
    }


def error_response_parts(exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
    return exc.http_status, error_body(exc), error_headers(exc)


# --- requests -----------------------------------------------------------------------------


@dataclass
class Parsed:
    request: ChatRequest
    model: str
    stream: bool
    include_usage: bool
    models: list[str] = field(default_factory=list)
    """The models of a `model` given as a list, each asked at once (server/multiplex.py)."""


# The JSON type of each field read here (besides model and messages).
FIELDS = {
    "n": "integer",
    "stream": "boolean",
    "stream_options": "object",
    "max_tokens": "integer",
    "max_completion_tokens": "integer",
    **openai_format.SAMPLING_FIELDS,
    "stop": "string|array",
    "tools": "array",
    "tool_choice": "string|object",
    "response_format": "object",
    "user": "string",
}


def parse(body: dict[str, Any], *, fetch_image_urls: bool = False) -> Parsed:
    """The request of a body; images must be data unless `fetch_image_urls` lets http(s) URLs
    through, which `attachments.fetch_images` then turns into data."""
    check_fields(body, FIELDS)
    raw_model = body.get("model")
    models = [model_name(name) for name in raw_model] if isinstance(raw_model, list) else []
    model = ", ".join(models) if models else model_name(raw_model)
    n = body.get("n")
    if n not in (None, 1):
        raise UnsupportedFeature("only one choice per request (`n` = 1) is supported")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise UnsupportedFeature("`logprobs`: the tools do not report token probabilities")
    raw_messages = expect_list(body.get("messages"), "messages")
    if not raw_messages:
        raise InvalidRequest("`messages` must not be empty")
    read_image = partial(attachments.image_from_url, fetch_image_urls=fetch_image_urls)
    messages = openai_format.messages(raw_messages, read_image)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = ChatRequest(
        messages=messages,
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) else None,
        **openai_format.sampling(body),
        tools=function_tools(body.get("tools")),
        tool_choice=openai_format.tool_choice(body.get("tool_choice")),
        json_schema=openai_format.response_format(body.get("response_format")),
    )
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    # `user` names an end user, not a conversation (see server/conversations.py): not used.
    return Parsed(request, model.strip(), stream, include_usage, models)


# --- responses ----------------------------------------------------------------------------


class Output:
    """Everything one request sends back, in OpenAI's shapes."""

    media_type = SSE

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self._tool_index = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        # A text delta is most of a stream: its event is this stream's fixed bytes around the text.
        event = self._event({"content": None}).decode()
        head, marker, tail = event.rpartition('"delta": {"content": null}')
        self._text_head = (head + marker[: -len("null}")]).encode()
        self._text_tail = ("}" + tail).encode()

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
        return error_response_parts(exc)

    def body(self, response: ChatResponse) -> dict[str, Any]:
        out = response.to_openai(id=self.id, created=self.created)
        out["model"] = self.model
        if response.warnings:  # e.g. a route's targets that failed before one answered
            out["warnings"] = response.warnings
        return out

    # --- streaming ---

    def _event(self, delta: dict[str, Any], finish: str | None = None, warnings: list[str] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        if warnings:  # e.g. parameters the runner ignored: on the chunk that first says so
            chunk["warnings"] = warnings
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    def start(self) -> bytes:
        return self._event({"role": "assistant", "content": ""})

    def chunk(self, chunk: ChatChunk) -> bytes:
        if chunk.delta and not (
            chunk.thinking or chunk.tool_call or chunk.finish_reason or chunk.usage or chunk.warnings
        ):
            return self._text_head + json.dumps(chunk.delta, ensure_ascii=False).encode() + self._text_tail
        rendered = chunk.to_openai(id=self.id, created=self.created, tool_index=self._tool_index)
        delta: dict[str, Any] = rendered["choices"][0]["delta"]
        if chunk.tool_call is not None:
            self._tool_index += 1
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage.to_openai()
        return self._event(delta, warnings=chunk.warnings) if delta or chunk.warnings else b""

    def finish(self) -> bytes:
        finish = self._finish or ("tool_calls" if self._tool_index else "stop")
        out = self._event({}, finish)
        if self.include_usage:
            usage: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            out += b"data: " + json.dumps(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def error_event(self, exc: LlmrunError) -> bytes:
        return b"data: " + json.dumps(error_body(exc), ensure_ascii=False).encode() + b"\n\n"

    def keepalive(self) -> bytes:
        return SSE_PING
