"""The Anthropic Messages dialect: request bodies in, messages, SSE events and errors out.

Streams follow the Messages API: message_start, then per content block (thinking, text,
tool_use) content_block_start / content_block_delta / content_block_stop, then
message_delta with stop_reason and usage, and message_stop. An error after the stream has
started is one `event: error`, and the stream ends there.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .. import openai_format
from ..errors import InvalidRequest, LlmrunError, UnsupportedFeature
from ..types import ChatChunk, ChatRequest, ChatResponse, ContentPart, Message, TextPart, ToolCall, ToolSpec
from . import attachments, request_ids
from .common import SSE, check_fields, error_headers, expect, expect_list, model_name, public_message, tool_schema

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}


def error_body(exc: LlmrunError, request_id: str) -> dict[str, Any]:
    status = exc.http_status
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": public_message(exc)}, "request_id": request_id}


def new_request_id() -> str:
    """The id of the request being answered (`x-request-id`), else a new one."""
    return request_ids.current_id() or f"req_{uuid.uuid4().hex[:24]}"


def error_response_parts(exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of an error, with the `request_id` the Anthropic SDK reports."""
    request_id = new_request_id()
    return exc.http_status, error_body(exc, request_id), {**error_headers(exc), "request-id": request_id}


# --- requests -----------------------------------------------------------------------------


@dataclass
class Parsed:
    request: ChatRequest
    model: str
    stream: bool


# The JSON type of each field read here (besides model and messages).
FIELDS = {
    "system": "string|array",
    "max_tokens": "integer",
    "stream": "boolean",
    **openai_format.SAMPLING_FIELDS,
    "stop_sequences": "array",
    "tools": "array",
    "tool_choice": "object",
    "metadata": "object",
    "output_config": "object",
}


def parse(body: dict[str, Any], *, fetch_image_urls: bool = False) -> Parsed:
    """The request of a body; images must be base64 unless `fetch_image_urls` lets http(s)
    URLs through, which `attachments.fetch_images` then turns into data."""
    check_fields(body, FIELDS)
    model = model_name(body.get("model"))
    raw_messages = expect_list(body.get("messages"), "messages")
    if not raw_messages:
        raise InvalidRequest("messages: at least one message is required")
    max_tokens = body.get("max_tokens")
    request = ChatRequest(
        messages=_messages(raw_messages, fetch_image_urls),
        system=_system(body.get("system")),
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) else None,
        **openai_format.sampling(body, stop="stop_sequences"),
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        json_schema=_output_format(body.get("output_config")),
    )
    # `metadata.user_id` names an end user, not a conversation (see server/conversations.py): not used.
    return Parsed(request, model.strip(), bool(body.get("stream")))


def _output_format(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema of `output_config.format` (structured outputs); `effort` is the tool's to decide."""
    raw = (config or {}).get("format")
    if raw is None:
        return None
    raw = expect(raw, dict, "output_config.format")
    if raw.get("type") != "json_schema":
        raise UnsupportedFeature(f"output_config.format of type {raw.get('type')!r} is not supported")
    return expect(raw.get("schema"), dict, "output_config.format.schema")


def _system(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        return raw
    texts = []
    for block in expect_list(raw, "system"):
        block = expect(block, dict, "system[]")
        if block.get("type") != "text":
            raise InvalidRequest(f"system: blocks must be text, got {block.get('type')!r}")
        texts.append(str(block.get("text") or ""))
    return "\n\n".join(t for t in texts if t) or None


def _messages(raw: list[Any], fetch_image_urls: bool) -> list[Message]:
    out: list[Message] = []
    names: dict[str, str] = {}  # tool_use id → tool name, for the results that follow
    for index, item in enumerate(raw):
        where = f"messages.{index}"
        item = expect(item, dict, where)
        role = item.get("role")
        content = item.get("content")
        if role == "system":
            # Claude Code interleaves system messages; they join the system prompt.
            out.append(Message(role="system", content=_system(content) or ""))
            continue
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role: expected 'user' or 'assistant', got {role!r}")
        if isinstance(content, str):
            out.append(Message(role=role, content=content))
            continue
        blocks = expect_list(content, f"{where}.content")
        parts: list[ContentPart] = []
        calls: list[ToolCall] = []
        for block in blocks:
            block = expect(block, dict, f"{where}.content[]")
            kind = block.get("type")
            if kind == "text":
                parts.append(TextPart(text=str(block.get("text") or "")))
            elif kind == "image":
                source = block.get("source")
                parts.append(attachments.image_from_source(source, where, fetch_image_urls=fetch_image_urls))
            elif kind == "tool_use" and role == "assistant":
                call = ToolCall(
                    id=str(block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                    name=str(block.get("name") or ""),
                    arguments=block["input"] if isinstance(block.get("input"), dict) else {},
                )
                names[call.id] = call.name
                calls.append(call)
            elif kind == "tool_result" and role == "user":
                out.append(_tool_result(block, names, where, fetch_image_urls))
            elif kind in ("thinking", "redacted_thinking"):
                continue  # the model's own earlier reasoning; tools keep or redo theirs
            else:
                raise UnsupportedFeature(f"{where}: content blocks of type {kind!r} are not supported")
        if parts or calls:
            text_only = all(isinstance(p, TextPart) for p in parts)
            body: str | list[ContentPart] = (
                "".join(p.text for p in parts if isinstance(p, TextPart)) if text_only else parts
            )
            out.append(Message(role=role, content=body, tool_calls=calls or None))
    return out


def _tool_result(block: dict[str, Any], names: dict[str, str], where: str, fetch_image_urls: bool) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}: tool_result needs tool_use_id")
    content = block.get("content")
    parts: list[ContentPart] = []
    if isinstance(content, str):
        parts.append(TextPart(text=content))
    elif isinstance(content, list):
        for inner in content:
            inner = expect(inner, dict, f"{where}.content[].content[]")
            if inner.get("type") == "text":
                parts.append(TextPart(text=str(inner.get("text") or "")))
            elif inner.get("type") == "image":
                source = inner.get("source")
                parts.append(attachments.image_from_source(source, where, fetch_image_urls=fetch_image_urls))
            else:
                raise UnsupportedFeature(f"{where}: tool_result content of type {inner.get('type')!r}")
    if block.get("is_error"):
        parts.insert(0, TextPart(text="[the tool reported an error] "))
    text_only = all(isinstance(p, TextPart) for p in parts)
    body: str | list[ContentPart] = "".join(p.text for p in parts if isinstance(p, TextPart)) if text_only else parts
    return Message(role="tool", content=body, tool_call_id=call_id, name=names.get(call_id))


def _tools(raw: Any) -> list[ToolSpec] | None:
    if not raw:
        return None
    tools = []
    for tool in expect_list(raw, "tools"):
        tool = expect(tool, dict, "tools[]")
        if tool.get("type") not in (None, "custom"):
            raise UnsupportedFeature(f"server tools ({tool.get('type')!r}) are not supported; only client tools")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tools: every tool needs a name")
        spec: dict[str, Any] = {"name": name, "description": str(tool.get("description") or "")}
        parameters = tool_schema(tool.get("input_schema"), "tools[].input_schema")
        if parameters is not None:
            spec["parameters"] = parameters
        tools.append(ToolSpec(**spec))
    return tools


def _tool_choice(raw: Any) -> str | dict[str, Any] | None:
    """Anthropic's tool_choice in OpenAI's form, which is what ChatRequest carries."""
    if raw is None:
        return None
    raw = expect(raw, dict, "tool_choice")
    kind = raw.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise InvalidRequest(f"tool_choice: unknown type {kind!r}")


# --- responses ----------------------------------------------------------------------------


def _usage(response_usage: Any) -> dict[str, int]:
    return {
        "input_tokens": response_usage.input_tokens,
        "output_tokens": response_usage.output_tokens,
        "cache_creation_input_tokens": response_usage.cache_write_tokens,
        "cache_read_input_tokens": response_usage.cache_read_tokens,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Output:
    """Everything one request sends back, in Anthropic's shapes."""

    media_type = SSE

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self._index = -1
        self._open: str | None = None  # type of the content block being streamed
        self._stop = "end_turn"
        self._usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        self._tool_used = False

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
        return error_response_parts(exc)

    def body(self, response: ChatResponse) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if response.thinking:
            content.append({"type": "thinking", "thinking": response.thinking, "signature": ""})
        if response.content:
            content.append({"type": "text", "text": response.content})
        for call in response.tool_calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
        stop = STOP_REASONS.get(response.finish_reason, "end_turn")
        if response.tool_calls:
            stop = "tool_use"
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": _usage(response.usage),
        }

    # --- streaming ---

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == "thinking":
            # Clients that keep thinking blocks expect a signature; there is none to give.
            delta = {"type": "signature_delta", "signature": ""}
            out += _event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})
        self._open = None
        return out + _event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _begin(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = str(block["type"])
        return out + _event(
            "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block}
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def chunk(self, chunk: ChatChunk) -> bytes:
        out = b""
        if chunk.thinking:
            if self._open != "thinking":
                out += self._begin({"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "thinking_delta", "thinking": chunk.thinking})
        if chunk.delta:
            if self._open != "text":
                out += self._begin({"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": chunk.delta})
        if chunk.tool_call is not None:
            call = chunk.tool_call
            out += self._begin({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            out += self._delta({"type": "input_json_delta", "partial_json": json.dumps(call.arguments)})
            out += self._close()
            self._tool_used = True
        if chunk.finish_reason is not None:
            self._stop = STOP_REASONS.get(chunk.finish_reason, "end_turn")
        if chunk.usage is not None:
            self._usage = _usage(chunk.usage)
        return out

    def finish(self) -> bytes:
        out = self._close()
        stop = "tool_use" if self._tool_used else self._stop
        out += _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": self._usage},
        )
        return out + _event("message_stop", {"type": "message_stop"})

    def error_event(self, exc: LlmrunError) -> bytes:
        return _event("error", error_body(exc, new_request_id()))

    def keepalive(self) -> bytes:
        return _event("ping", {"type": "ping"})
