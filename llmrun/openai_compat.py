"""llmrun in the OpenAI Chat Completions shapes, for code written against the `openai` package.

    from llmrun import get_runner
    from llmrun.openai_compat import as_openai, as_openai_chunks, from_openai_messages

    request = from_openai_messages([{"role": "user", "content": "Hi"}], model="sonnet")
    completion = as_openai(await get_runner("claude_code").complete(request))
    completion.choices[0].message.content
    async for chunk in as_openai_chunks(get_runner("claude_code").stream(request)):
        ...

`as_openai`, `as_openai_chunk` and `as_openai_chunks` return the `openai` package's own
objects (`ChatCompletion`, `ChatCompletionChunk`) and need it installed (`pip install
openai`); `openai_chunks` and `from_openai_messages` do not. `response.to_openai()` and
`chunk.to_openai()` give the same shapes as plain dicts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from . import openai_format
from .types import ChatChunk, ChatRequest, ChatResponse

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk


def from_openai_messages(
    messages: list[Any], tools: list[Any] | None = None, *, response_format: Any = None, **fields: Any
) -> ChatRequest:
    """A ChatRequest from OpenAI-shaped `messages` and `tools` (dicts, or the openai package's
    message objects such as a previous `completion.choices[0].message`).

    `response_format` is OpenAI's (`{"type": "json_schema", ...}`) and becomes `json_schema`;
    `tool_choice` takes OpenAI's shapes as they are; other `fields` are ChatRequest fields.
    A part llmrun cannot use raises UnsupportedFeature, a malformed one InvalidRequest.
    """
    raw = [_as_dict(message) for message in openai_format.expect_list(messages, "messages")]
    fields["tools"] = openai_format.function_tools([_as_dict(tool) for tool in tools] if tools else None)
    if "tool_choice" in fields:
        fields["tool_choice"] = openai_format.tool_choice(_as_dict(fields["tool_choice"]))
    if response_format is not None:
        fields["json_schema"] = openai_format.response_format(_as_dict(response_format))
    return ChatRequest(messages=openai_format.messages(raw), **fields)


def _as_dict(value: Any) -> Any:
    # The openai package's objects are pydantic models; its request params are already dicts.
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else value


async def openai_chunks(chunks: AsyncIterable[ChatChunk], *, model: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """A runner's stream as OpenAI `chat.completion.chunk` dicts: one id and creation time for
    the whole stream, and tool calls numbered 0, 1, ... so that a client keeps them apart."""
    stream_id, created, tool_index = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), 0
    async for chunk in chunks:
        yield chunk.to_openai(id=stream_id, model=model, created=created, tool_index=tool_index)
        if chunk.tool_call is not None:
            tool_index += 1


def as_openai(response: ChatResponse, **to_openai: Any) -> ChatCompletion:
    """The response as an `openai.types.chat.ChatCompletion` (arguments: `response.to_openai`'s)."""
    completion: ChatCompletion = _validated(_openai_types().ChatCompletion, response.to_openai(**to_openai))
    return completion


def as_openai_chunk(chunk: ChatChunk, **to_openai: Any) -> ChatCompletionChunk:
    """The chunk as an `openai.types.chat.ChatCompletionChunk`. Give `tool_index` (the number of
    tool calls before this one in its stream), or use `as_openai_chunks`, which counts them."""
    converted: ChatCompletionChunk = _validated(_openai_types().ChatCompletionChunk, chunk.to_openai(**to_openai))
    return converted


async def as_openai_chunks(
    chunks: AsyncIterable[ChatChunk], *, model: str | None = None
) -> AsyncIterator[ChatCompletionChunk]:
    """`openai_chunks` as `openai.types.chat.ChatCompletionChunk` objects."""
    chunk_type = _openai_types().ChatCompletionChunk  # fails before the stream starts when absent
    async for data in openai_chunks(chunks, model=model):
        yield _validated(chunk_type, data)


def _openai_types() -> Any:
    try:
        from openai.types import chat
    except ImportError:
        raise ImportError(
            "llmrun.openai_compat needs the openai package for OpenAI objects: `pip install openai` "
            "(or use response.to_openai() / chunk.to_openai(), which give plain dicts)"
        ) from None
    return chat


# OpenAI's finish reasons; llmrun's "cancelled" and "error" are none of them.
OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def _validated(model: Any, data: dict[str, Any]) -> Any:
    """`data` as the openai type `model`. A finish reason OpenAI does not define is kept, as
    the openai package keeps one that a server sends: it is set after validation."""
    reasons = [choice["finish_reason"] for choice in data["choices"]]
    for choice in data["choices"]:
        if choice["finish_reason"] is not None and choice["finish_reason"] not in OPENAI_FINISH_REASONS:
            choice["finish_reason"] = "stop"
    result = model.model_validate(data)
    for choice, reason in zip(result.choices, reasons, strict=True):
        choice.finish_reason = reason
    return result
