"""The OpenAI Responses dialect: `POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}`.

Requests become a ChatRequest like the other dialects': `instructions` is the system
prompt; `input` is a string or a list of items. Messages of the roles user, assistant,
system and developer (the last two are system messages) take their content as a string or
as `input_text`/`output_text`/`refusal` parts, user messages `input_image` parts too (data
URLs, or http(s) URLs where the server fetches images). A `function_call` item joins the
assistant message before it as a tool call (its `call_id` is the ToolCall id), a
`function_call_output` item is a tool message. Items that carry the model's own state
(`reasoning`, `compaction`, hosted tools' calls such as `web_search_call`) are skipped:
no tool can take them back; their effect is already in the messages around them.

Tools, per type:

- `function`: offered through llmrun's tool emulation; `strict` is accepted (the emulation
  checks every call against its schema anyway).
- `custom` (freeform tools, such as Codex's `apply_patch`): offered as a function with one
  string argument, `input`, and returned as a `custom_tool_call` item with that `input`;
  a `custom_tool_call` / `custom_tool_call_output` in the input maps back the same way.
- `namespace` (groups of functions, such as Codex's sub-agent tools): each function is
  offered as `namespace.name`, and its calls carry `name` and `namespace` apart again.
- Everything else (`web_search`, `file_search`, `code_interpreter`, `image_generation`,
  `mcp`, `tool_search`, `local_shell`, ...) is run by OpenAI's service or has call items of
  its own, which no tool behind llmrun produces: such tools are left out, so the model
  answers without them, as it may whenever it is free to choose. Codex sends `web_search`
  with every request. Only a `tool_choice` that requires one of them is refused (400).

`tool_choice` is "auto", "none", "required", a named function or custom tool, or
`allowed_tools` (the listed tools only, in its mode). `text.format` json_schema or
json_object becomes the request's JSON schema. `temperature`, `top_p` and
`max_output_tokens` are the request's sampling parameters (honoured, or named in the answer's
x-llmrun-ignored-params header). Accepted and not used, as their Chat
Completions counterparts are: `reasoning` (effort, summary),
`parallel_tool_calls`, `metadata`, `user`, `include`, `truncation`, `prompt_cache_key`,
`service_tier`, `stream_options`, `text.verbosity` and Codex's `client_metadata`.
`background`, `conversation` and `prompt` (features of OpenAI's service) are refused.

Answers: the tool's thinking is a `reasoning` item whose summary is the thinking text
(`response.reasoning_summary_text.delta` while streaming), its text one assistant message,
then one item per tool call. Every streamed event carries `sequence_number`; the stream
ends with `response.completed` (or `response.incomplete` when the answer was cut at
`max_output_tokens`), whose response holds the usage. An error after the stream has
started is `response.failed`, its `error.code` one that OpenAI's clients know.

Stored responses: unless `store` is false, each completed response is kept in memory (the
newest MAX_STORED, for the API key that made it) with the conversation that led to it, so
that `GET` returns it and `previous_response_id` continues it: the stored messages, the
answer and the new input go to the Engine as one history, which is how the conversation
finds its tool session (server/conversations.py). An unknown id is a 404
(`previous_response_not_found`). Nothing is written to disk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from starlette.responses import Response

from .. import openai_format
from ..errors import InvalidRequest, LlmrunError, UnsupportedFeature
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ContentPart,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    ToolSpec,
    Usage,
)
from . import attachments, conversations
from .attachments import fetch_images
from .common import SSE, check_fields, expect, expect_list, model_name, public_message, tool_schema
from .openai_api import error_response_parts, tool_arguments

if TYPE_CHECKING:
    from .app import ServerState

MAX_STORED = 1000
"""Responses kept for GET and previous_response_id; the oldest goes first. Continued
conversations share their earlier messages, so each costs little more than its new turn."""


class PreviousResponseNotFound(LlmrunError):
    http_status = 404


class ResponseNotFound(LlmrunError):
    http_status = 404


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTool:
    """A client's tool as the emulation offers it, and how its calls go back to the client."""

    kind: Literal["function", "custom"]
    name: str
    namespace: str | None = None

    @property
    def offered_name(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


@dataclass
class Parsed:
    request: ChatRequest
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    tools: dict[str, ClientTool]
    """By the name the model calls them (see ClientTool.offered_name)."""
    echo: dict[str, Any] = field(default_factory=dict)
    """Request fields a Response object repeats (instructions, tools, tool_choice, ...)."""


# The JSON type of each field read here (besides model).
FIELDS = {
    "input": "string|array",
    "instructions": "string",
    "stream": "boolean",
    "store": "boolean",
    "previous_response_id": "string",
    "tools": "array",
    "tool_choice": "string|object",
    "text": "object",
    "reasoning": "object",
    "max_output_tokens": "integer",
    **openai_format.SAMPLING_FIELDS,
    "parallel_tool_calls": "boolean",
    "metadata": "object",
    "user": "string",
    "include": "array",
    "truncation": "string",
    "prompt_cache_key": "string",
    "service_tier": "string",
    "stream_options": "object",
    "client_metadata": "object",
}
_REFUSED = {
    "background": "background responses are not supported",
    "conversation": "OpenAI's Conversations are not supported; use previous_response_id",
    "prompt": "prompt templates are not supported",
}
# Input items that carry the model's own state or a hosted tool's work: skipped.
_SKIPPED_ITEMS = frozenset(
    {
        "reasoning",
        "compaction",
        "item_reference",
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "tool_search_call",
        "tool_search_output",
        "mcp_list_tools",
    }
)


def parse(body: dict[str, Any], *, fetch_image_urls: bool = False) -> Parsed:
    """The request of a body; the history of `previous_response_id` is added by the route."""
    check_fields(body, FIELDS)
    for name, problem in _REFUSED.items():
        if body.get(name):
            raise UnsupportedFeature(f"`{name}`: {problem}")
    model = model_name(body.get("model"))
    previous = body.get("previous_response_id") or None
    raw_input = body.get("input")
    if raw_input is None and previous is None:
        raise InvalidRequest("`input` is required")
    messages = _input(raw_input, fetch_image_urls)
    tools, specs = _tools(body.get("tools"))
    choice, specs = _tool_choice(body.get("tool_choice"), tools, specs)
    request = ChatRequest(
        messages=messages,
        system=body.get("instructions") or None,
        max_tokens=body.get("max_output_tokens"),
        **openai_format.sampling(body),
        tools=specs or None,
        tool_choice=choice if specs else None,
        json_schema=_text_format(body.get("text")),
    )
    echo = {
        name: body.get(name)
        for name in ("instructions", "max_output_tokens", "metadata", "temperature", "top_p", "user", "truncation")
    }
    echo["tools"] = body.get("tools") or []
    echo["tool_choice"] = body.get("tool_choice") or "auto"
    echo["parallel_tool_calls"] = body.get("parallel_tool_calls", True)
    echo["reasoning"] = body.get("reasoning")
    echo["text"] = body.get("text") or {"format": {"type": "text"}}
    store = body.get("store") is not False
    return Parsed(request, model, bool(body.get("stream")), store, previous, tools, echo)


def _input(raw: Any, fetch_image_urls: bool) -> list[Message]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Message.user(raw)]
    out: list[Message] = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        item = expect(item, dict, where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where, fetch_image_urls))
        elif kind in ("function_call", "custom_tool_call"):
            _add_call(out, _call(item, where))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a {kind} item needs `call_id`")
            content = _parts(item.get("output"), where, "output", fetch_image_urls=False)
            out.append(Message(role="tool", content=content, tool_call_id=call_id))
        elif kind not in _SKIPPED_ITEMS:
            raise UnsupportedFeature(f"{where}: input items of type {kind!r} are not supported")
    return out


def _message(item: dict[str, Any], where: str, fetch_image_urls: bool) -> Message:
    role = item.get("role")
    content = item.get("content")
    if role in ("system", "developer"):
        return Message(role="system", content=_text(content, where))
    if role == "assistant":
        return Message(role="assistant", content=_text(content, where))
    if role == "user":
        return Message(role="user", content=_parts(content, where, "content", fetch_image_urls))
    raise InvalidRequest(f"{where}: unknown role {role!r}")


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in expect_list(content, f"{where}.content"):
        part = expect(part, dict, f"{where}.content[]")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise UnsupportedFeature(f"{where}: content of type {kind!r} is not supported here")
    return "".join(texts)


def _parts(content: Any, where: str, field: str, fetch_image_urls: bool) -> str | list[ContentPart]:
    """A message's content or a tool's output (`field`): a string, or text and `input_image` parts."""
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[ContentPart] = []
    for part in expect_list(content, f"{where}.{field}"):
        part = expect(part, dict, f"{where}.{field}[]")
        if part.get("type") == "input_image":
            parts.append(_image(part, where, fetch_image_urls))
        else:
            parts.append(TextPart(text=_text([part], where)))
    return parts


def _image(part: dict[str, Any], where: str, fetch_image_urls: bool) -> ImagePart:
    if part.get("image_url") is None and part.get("file_id") is not None:
        raise UnsupportedFeature(f"{where}: images by file_id are not supported; send them as data URLs")
    return attachments.image_from_url(part.get("image_url"), where, fetch_image_urls=fetch_image_urls)


def _call(item: dict[str, Any], where: str) -> ToolCall:
    name, call_id = item.get("name"), item.get("call_id")
    if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}: a {item.get('type')} item needs `name` and `call_id`")
    namespace = item.get("namespace")
    if isinstance(namespace, str) and namespace:
        name = f"{namespace}.{name}"
    if item.get("type") == "custom_tool_call":
        return ToolCall(id=call_id, name=name, arguments={"input": str(item.get("input") or "")})
    return ToolCall(id=call_id, name=name, arguments=tool_arguments(item.get("arguments"), where))


def _add_call(messages: list[Message], call: ToolCall) -> None:
    """A call joins the assistant message it follows, as a Chat Completions answer holds both."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = last.model_copy(update={"tool_calls": [*(last.tool_calls or []), call]})
    else:
        messages.append(Message.assistant("", tool_calls=[call]))


_CUSTOM_INPUT = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input, as free text."}},
    "required": ["input"],
}


def _tools(raw: Any) -> tuple[dict[str, ClientTool], list[ToolSpec]]:
    tools: dict[str, ClientTool] = {}
    specs: list[ToolSpec] = []

    def offer(tool: dict[str, Any], namespace: str | None) -> None:
        kind, name = tool.get("type"), tool.get("name")
        if kind not in ("function", "custom"):
            return  # run by OpenAI's service or answered by items of its own: left out
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"every {kind} tool needs a name")
        client = ClientTool(kind, name, namespace)
        description = str(tool.get("description") or "")
        if kind == "custom":
            parameters: dict[str, Any] = _CUSTOM_INPUT
            grammar = tool.get("format")
            if isinstance(grammar, dict) and grammar.get("definition"):
                description += f"\n\nThe input must follow this {grammar.get('syntax') or ''} grammar:\n"
                description += str(grammar["definition"])
        else:
            parameters = tool_schema(tool.get("parameters"), "tools[].parameters") or {"type": "object"}
        tools[client.offered_name] = client
        specs.append(ToolSpec(name=client.offered_name, description=description, parameters=parameters))

    for tool in expect_list(raw or [], "tools"):
        tool = expect(tool, dict, "tools[]")
        if tool.get("type") == "namespace":
            namespace = tool.get("name")
            if not isinstance(namespace, str) or not namespace:
                raise InvalidRequest("every namespace tool needs a name")
            for inner in expect_list(tool.get("tools") or [], "tools[].tools"):
                offer(expect(inner, dict, "tools[].tools[]"), namespace)
        else:
            offer(tool, None)
    return tools, specs


def _tool_choice(
    raw: Any, tools: dict[str, ClientTool], specs: list[ToolSpec]
) -> tuple[str | dict[str, Any] | None, list[ToolSpec]]:
    """The emulation's tool_choice, and the tools it leaves offered."""
    if raw is None or isinstance(raw, str):
        return raw, specs
    choice = expect(raw, dict, "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        namespace = choice.get("namespace")
        offered = f"{namespace}.{name}" if isinstance(namespace, str) and namespace else name
        return {"type": "function", "function": {"name": offered}}, specs
    if kind == "allowed_tools":
        allowed = set()
        for tool in expect_list(choice.get("tools") or [], "tool_choice.tools"):
            tool = expect(tool, dict, "tool_choice.tools[]")
            allowed.add(tool.get("name"))
        kept = [spec for spec in specs if spec.name in allowed or tools[spec.name].name in allowed]
        return str(choice.get("mode") or "auto"), kept
    raise UnsupportedFeature(f"tool_choice requires a tool of type {kind!r}, which llmrun cannot run")


def _text_format(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or raw.get("format") is None:
        return None
    fmt = expect(raw.get("format"), dict, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise UnsupportedFeature(f"text.format of type {kind!r} is not supported")


# --- stored responses ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]
    messages: list[Message]
    """The conversation up to and including this response's answer (system messages too)."""


class ResponseStore:
    """Responses by (API key scope, id), in memory; the oldest are forgotten past `limit`."""

    def __init__(self, limit: int = MAX_STORED) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()

    def put(self, scope: str, response_id: str, stored: StoredResponse) -> None:
        self._items[(scope, response_id)] = stored
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, scope: str, response_id: str) -> StoredResponse | None:
        return self._items.get((scope, response_id))

    def delete(self, scope: str, response_id: str) -> bool:
        return self._items.pop((scope, response_id), None) is not None


# --- responses ----------------------------------------------------------------------------


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """A llmrun Usage (or None) as the Responses API's usage."""
    if usage is None:
        return {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        }
    return {
        "input_tokens": usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


# Codes of `response.failed` that OpenAI's clients act on (Codex stops on the context one).
def _failure_code(exc: LlmrunError) -> str:
    name = type(exc).__name__
    if name == "ContextLengthExceeded":
        return "context_length_exceeded"
    if exc.http_status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if exc.http_status == 400 else "server_error"


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}

Keep = Callable[[dict[str, Any], Message], None]


class Output:
    """Everything one request sends back, in the Responses API's shapes."""

    media_type = SSE

    def __init__(self, parsed: Parsed, *, keep: Keep | None = None) -> None:
        self.parsed = parsed
        self.keep = keep
        self.id = f"resp_{_hex()}"
        self.created = int(time.time())
        self._sequence = 0
        self._items: list[dict[str, Any]] = []
        """Finished output items."""
        self._open: dict[str, Any] | None = None
        """The reasoning or message item being streamed, with its text so far."""
        self._text: list[str] = []
        self._calls: list[ToolCall] = []
        self._finish: str | None = None
        self._usage: Usage | None = None

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]:
        return error_response_parts(exc)

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        """The Response object; `finish` and `body` give it to `keep` once it is complete."""
        echo = self.parsed.echo
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self.parsed.model,
            "output": output,
            "previous_response_id": self.parsed.previous_response_id,
            "store": self.parsed.store,
            "usage": usage,
            **echo,
        }
        reason = _INCOMPLETE.get(self._finish or "")
        if status == "incomplete" and reason:
            body["incomplete_details"] = {"reason": reason}
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        return body

    def body(self, response: ChatResponse) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if response.thinking:
            output.append(_reasoning_item(f"rs_{_hex()}", response.thinking))
        if response.content:
            output.append(_message_item(f"msg_{_hex()}", response.content, "completed"))
        output += [self._call_item(call) for call in response.tool_calls]
        self._finish = response.finish_reason
        body = self.response(self._status(), output, usage_json(response.usage))
        self._kept(body, Message.assistant(response.content, tool_calls=response.tool_calls or None))
        return body

    def _status(self) -> str:
        return "incomplete" if self._finish in _INCOMPLETE else "completed"

    def _kept(self, body: dict[str, Any], answer: Message) -> None:
        if self.keep is not None and self.parsed.store:
            self.keep(body, answer)

    def _call_item(self, call: ToolCall) -> dict[str, Any]:
        tool = self.parsed.tools.get(call.name) or ClientTool("function", call.name)
        item: dict[str, Any]
        if tool.kind == "custom":
            raw = call.arguments.get("input")
            text = raw if isinstance(raw, str) else json.dumps(raw)
            item = {"id": f"ctc_{_hex()}", "type": "custom_tool_call", "call_id": call.id, "name": tool.name}
            item["input"] = text
        else:
            item = {"id": f"fc_{_hex()}", "type": "function_call", "call_id": call.id, "name": tool.name}
            item.update(arguments=json.dumps(call.arguments, ensure_ascii=False), status="completed")
        if tool.namespace:
            item["namespace"] = tool.namespace
        return item

    # --- streaming ---

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    def start(self) -> bytes:
        started = self.response("in_progress", [], None)
        return self._event("response.created", response=started) + self._event("response.in_progress", response=started)

    def chunk(self, chunk: ChatChunk) -> bytes:
        out = b""
        if chunk.thinking:
            out += self._stream_text("reasoning", chunk.thinking)
        if chunk.delta:
            self._text.append(chunk.delta)
            out += self._stream_text("message", chunk.delta)
        if chunk.tool_call is not None:
            out += self._close()
            self._calls.append(chunk.tool_call)
            out += self._stream_call(chunk.tool_call)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return out

    def _stream_text(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != kind:
            out += self._close()
            out += self._open_item(kind)
        assert self._open is not None
        self._open["text"] += text
        where = {"item_id": self._open["id"], "output_index": len(self._items)}
        if kind == "reasoning":
            return out + self._event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=text)
        return out + self._event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])

    def _open_item(self, kind: str) -> bytes:
        item_id = f"rs_{_hex()}" if kind == "reasoning" else f"msg_{_hex()}"
        self._open = {"type": kind, "id": item_id, "text": ""}
        where = {"item_id": item_id, "output_index": len(self._items)}
        if kind == "reasoning":
            added = {"id": item_id, "type": "reasoning", "summary": []}
            out = self._event("response.output_item.added", output_index=len(self._items), item=added)
            part = {"type": "summary_text", "text": ""}
            return out + self._event("response.reasoning_summary_part.added", **where, summary_index=0, part=part)
        added = {**_message_item(item_id, "", "in_progress"), "content": []}
        out = self._event("response.output_item.added", output_index=len(self._items), item=added)
        text_part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
        return out + self._event("response.content_part.added", **where, content_index=0, part=text_part)

    def _close(self) -> bytes:
        """The events that finish the open reasoning or message item."""
        if self._open is None:
            return b""
        item_id, text = self._open["id"], self._open["text"]
        where = {"item_id": item_id, "output_index": len(self._items)}
        if self._open["type"] == "reasoning":
            item = _reasoning_item(item_id, text)
            part = item["summary"][0]
            out = self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            out += self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=part)
        else:
            item = _message_item(item_id, text, "completed")
            part = item["content"][0]
            out = self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            out += self._event("response.content_part.done", **where, content_index=0, part=part)
        out += self._event("response.output_item.done", output_index=len(self._items), item=item)
        self._items.append(item)
        self._open = None
        return out

    def _stream_call(self, call: ToolCall) -> bytes:
        item = self._call_item(call)
        index = len(self._items)
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "custom_tool_call":
            added = {**item, "input": ""}
            out = self._event("response.output_item.added", output_index=index, item=added)
            out += self._event("response.custom_tool_call_input.delta", **where, delta=item["input"])
            out += self._event("response.custom_tool_call_input.done", **where, input=item["input"])
        else:
            added = {**item, "arguments": "", "status": "in_progress"}
            out = self._event("response.output_item.added", output_index=index, item=added)
            out += self._event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            out += self._event("response.function_call_arguments.done", **where, arguments=item["arguments"])
        out += self._event("response.output_item.done", output_index=index, item=item)
        self._items.append(item)
        return out

    def finish(self) -> bytes:
        out = self._close()
        status = self._status()
        body = self.response(status, self._items, usage_json(self._usage))
        self._kept(body, Message.assistant("".join(self._text), tool_calls=self._calls or None))
        return out + self._event(f"response.{status}", response=body)

    def error_event(self, exc: LlmrunError) -> bytes:
        failed = self.response("failed", self._items, None)
        failed["error"] = {"code": _failure_code(exc), "message": public_message(exc)}
        return self._event("response.failed", response=failed)

    def keepalive(self) -> bytes:
        # An event, not an SSE comment: codex times a stream out after 300 s without an event,
        # and comments are no events to it. Only sent before the first chunk, so nothing is in it.
        return self._event("response.in_progress", response=self.response("in_progress", [], None))


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


# --- routes -------------------------------------------------------------------------------

_RESPONSES_SCHEMA = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "description": "RUNNER/MODEL, RUNNER:MODEL, a runner, or an alias"},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean", "description": "keep the response for GET and previous_response_id (default)"},
        "previous_response_id": {"type": "string"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {},
        "text": {"type": "object", "properties": {"format": {"type": "object"}}},
        "reasoning": {"type": "object", "description": "accepted, not used"},
        "max_output_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
    },
}


def add_routes(
    app: FastAPI,
    state: ServerState,
    *,
    read_body: Callable[[Request], Awaitable[dict[str, Any]]],
    conversation_of: Callable[[Request], conversations.Conversation],
) -> None:
    """`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}` on `app`."""
    settings = state.settings
    store = ResponseStore()
    scope = conversations.scope_of(settings.api_key)
    doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": _RESPONSES_SCHEMA}}}}

    @app.post("/v1/responses", openapi_extra=doc, tags=["OpenAI"])
    async def create_response(request: Request) -> Response:
        """OpenAI Responses, streaming (SSE) or not."""
        parsed = parse(await read_body(request), fetch_image_urls=settings.fetch_image_urls)
        history: list[Message] = []
        if parsed.previous_response_id is not None:
            previous = store.get(scope, parsed.previous_response_id)
            if previous is None:
                raise PreviousResponseNotFound(f"Previous response with id {parsed.previous_response_id!r} not found.")
            history = previous.messages
        if not history and not parsed.request.messages:
            raise InvalidRequest("`input` must not be empty")
        request_sent = parsed.request.model_copy(update={"messages": [*history, *parsed.request.messages]})
        parsed.request = await fetch_images(request_sent, max_total_bytes=settings.max_body_bytes)
        turn = state.engine.prepare(
            parsed.request, parsed.model, conversation=conversation_of(request), stream=parsed.stream
        )
        messages = parsed.request.messages

        def keep(body: dict[str, Any], answer: Message) -> None:
            store.put(scope, body["id"], StoredResponse(body, [*messages, answer]))

        return state.answer(Output(parsed, keep=keep), turn)

    @app.get("/v1/responses/{response_id}", tags=["OpenAI"])
    async def get_response(response_id: str) -> dict[str, Any]:
        stored = store.get(scope, response_id)
        if stored is None:
            raise ResponseNotFound(f"Response with id {response_id!r} not found.")
        return stored.body

    @app.delete("/v1/responses/{response_id}", tags=["OpenAI"])
    async def delete_response(response_id: str) -> dict[str, Any]:
        if not store.delete(scope, response_id):
            raise ResponseNotFound(f"Response with id {response_id!r} not found.")
        return {"id": response_id, "object": "response", "deleted": True}
