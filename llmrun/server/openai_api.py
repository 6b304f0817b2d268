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
from typing import Any

from ..errors import InvalidRequest, LlmrunError, UnsupportedFeature
from ..types import ChatChunk, ChatRequest, ChatResponse, ContentPart, Message, TextPart, ToolCall, ToolSpec
from . import attachments
from .common import (
    SSE,
    SSE_PING,
    check_fields,
    error_headers,
    expect,
    expect_list,
    model_name,
    public_message,
    tool_schema,
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
    "temperature": "number",
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
    raw_messages = expect_list(body.get("messages"), "messages")
    if not raw_messages:
        raise InvalidRequest("`messages` must not be empty")
    messages = _messages(raw_messages, fetch_image_urls)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = ChatRequest(
        messages=messages,
        temperature=_number(body.get("temperature"), "temperature"),
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) else None,
        tools=function_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        json_schema=_response_format(body.get("response_format")),
    )
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    # `user` names an end user, not a conversation (see server/conversations.py): not used.
    return Parsed(request, model.strip(), stream, include_usage, models)


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"`{name}` must be a number")
    return float(value)


def _messages(raw: list[Any], fetch_image_urls: bool) -> list[Message]:
    out: list[Message] = []
    names: dict[str, str] = {}  # tool call id → function name, for tool results
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        item = expect(item, dict, where)
        role = item.get("role")
        name = item.get("name") if isinstance(item.get("name"), str) else None
        if role in ("system", "developer"):
            out.append(Message(role="system", content=_text_only(item.get("content"), where)))
        elif role == "user":
            content = _user_content(item.get("content"), where, fetch_image_urls)
            out.append(Message(role="user", content=content, name=name))
        elif role == "assistant":
            calls = _tool_calls(item.get("tool_calls"), where)
            for call in calls:
                names[call.id] = call.name
            text = _text_only(item.get("content"), where) if item.get("content") is not None else ""
            out.append(Message(role="assistant", content=text, tool_calls=calls or None, name=name))
        elif role in ("tool", "function"):
            call_id = item.get("tool_call_id") or (name if role == "function" else None)
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a tool message needs `tool_call_id`")
            content = _text_only(item.get("content"), where)
            out.append(Message(role="tool", content=content, tool_call_id=call_id, name=name or names.get(call_id)))
        else:
            raise InvalidRequest(f"{where}: unknown role {role!r}")
    return out


def _text_only(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = expect_list(content, f"{where}.content")
    texts = []
    for part in parts:
        part = expect(part, dict, f"{where}.content[]")
        if part.get("type") in ("text", "refusal"):
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        else:
            raise UnsupportedFeature(f"{where}: content of type {part.get('type')!r} is not supported here")
    return "".join(texts)


def _user_content(content: Any, where: str, fetch_image_urls: bool) -> str | list[ContentPart]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[ContentPart] = []
    for part in expect_list(content, f"{where}.content"):
        part = expect(part, dict, f"{where}.content[]")
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(text=str(part.get("text") or "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(attachments.image_from_url(url, where, fetch_image_urls=fetch_image_urls))
        else:
            raise UnsupportedFeature(f"{where}: content of type {kind!r} is not supported")
    return parts


def _tool_calls(raw: Any, where: str) -> list[ToolCall]:
    if raw is None:
        return []
    calls = []
    for call in expect_list(raw, f"{where}.tool_calls"):
        call = expect(call, dict, f"{where}.tool_calls[]")
        function = expect(call.get("function"), dict, f"{where}.tool_calls[].function")
        parsed = tool_arguments(function.get("arguments"), where)
        fields: dict[str, Any] = {"name": str(function.get("name") or ""), "arguments": parsed}
        if isinstance(call.get("id"), str):
            fields["id"] = call["id"]
        calls.append(ToolCall(**fields))
    return calls


def tool_arguments(raw: Any, where: str) -> dict[str, Any]:
    """A tool call's arguments, sent as a JSON string (or already an object), as an object."""
    try:
        arguments = json.loads(raw or "{}") if isinstance(raw, str) or raw is None else raw
    except ValueError:
        raise InvalidRequest(f"{where}: tool call arguments are not JSON") from None
    return arguments if isinstance(arguments, dict) else {"value": arguments}


def function_tools(raw: Any) -> list[ToolSpec] | None:
    if not raw:
        return None
    tools = []
    for tool in expect_list(raw, "tools"):
        tool = expect(tool, dict, "tools[]")
        if tool.get("type", "function") != "function":
            raise UnsupportedFeature(f"tools of type {tool.get('type')!r} are not supported; only functions")
        function = expect(tool.get("function"), dict, "tools[].function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("every tool needs a function name")
        spec: dict[str, Any] = {"name": name, "description": str(function.get("description") or "")}
        parameters = tool_schema(function.get("parameters"), "tools[].function.parameters")
        if parameters is not None:
            spec["parameters"] = parameters
        tools.append(ToolSpec(**spec))
    return tools


def _tool_choice(raw: Any) -> str | dict[str, Any] | None:
    if raw is None or isinstance(raw, str):
        return raw
    return expect(raw, dict, "tool_choice")


def _response_format(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    raw = expect(raw, dict, "response_format")
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = expect(raw.get("json_schema"), dict, "response_format.json_schema")
        schema = spec.get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise UnsupportedFeature(f"response_format of type {kind!r} is not supported")


# --- responses ----------------------------------------------------------------------------


def _tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }
    if index is not None:
        out["index"] = index
    return out


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

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
        return error_response_parts(exc)

    def body(self, response: ChatResponse) -> dict[str, Any]:
        out = response.to_openai(id=self.id, created=self.created)
        out["model"] = self.model
        if response.warnings:  # e.g. a route's targets that failed before one answered
            out["warnings"] = response.warnings
        return out

    # --- streaming ---

    def _event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    def start(self) -> bytes:
        return self._event({"role": "assistant", "content": ""})

    def chunk(self, chunk: ChatChunk) -> bytes:
        delta: dict[str, Any] = {}
        if chunk.thinking:
            delta["reasoning_content"] = chunk.thinking
        if chunk.delta:
            delta["content"] = chunk.delta
        if chunk.tool_call is not None:
            delta["tool_calls"] = [_tool_call_json(chunk.tool_call, self._tool_index)]
            self._tool_index += 1
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage.to_openai()
        return self._event(delta) if delta else b""

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
