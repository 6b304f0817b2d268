"""Structured output for every runner: an answer that is JSON matching the request's schema.

A tool with a schema option of its own (`capabilities.json_schema`) gets the schema there;
any other gets it in the prompt. Either way llmrun then takes the JSON out of the answer (a
whole answer, a fenced block, or the first JSON value after some preamble), validates it
against the schema, and if it does not fit asks once more, telling the tool what was wrong.
A second miss ends in StructuredOutputError. The answer's content is the JSON text alone.

While a structured answer streams, its text is held back until it has been validated (a
client must never get JSON that fails the schema); thinking and the tool's activity pass on
as they come.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from .errors import StructuredOutputError
from .schema import check_schema, validate_json
from .types import ChatChunk, ChatRequest, Message, TextPart, Usage

Run = Callable[[ChatRequest], AsyncGenerator[ChatChunk, None]]

_FENCED = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)


def schema_instructions(schema: dict[str, Any]) -> str:
    return (
        "Reply with only a JSON value that matches this JSON schema: no other text, no code fence.\n"
        f"JSON schema: {json.dumps(schema, ensure_ascii=False)}"
    )


def extract_json(text: str) -> tuple[Any, str] | None:
    """The JSON value an answer holds and its text: the whole answer, else a fenced block,
    else the first object or array that parses; None when there is none."""
    stripped = text.strip()
    candidates = [stripped, *(block.strip() for block in _FENCED.findall(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate), candidate
        except (ValueError, RecursionError):
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        return value, text[match.start() : end]
    return None


def problems(text: str, schema: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The answer's JSON text and what is wrong with it under the schema ([] when it fits)."""
    found = extract_json(text)
    if found is None:
        return None, ["the answer holds no JSON value"]
    value, json_text = found
    return json_text, validate_json(value, schema, path="answer")


def _with_schema_in_prompt(request: ChatRequest) -> ChatRequest:
    """The request with the schema asked for at the end of its last user message."""
    schema = request.json_schema or {}
    messages = list(request.messages)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user":
            ask = "\n\n" + schema_instructions(schema)
            if isinstance(message.content, str):
                content: Any = message.content + ask
            else:
                content = [*message.content, TextPart(text=ask)]
            messages[index] = message.model_copy(update={"content": content})
            break
    return request.model_copy(update={"messages": messages})


def _retry(request: ChatRequest, answer: str, wrong: list[str], session_id: str | None) -> ChatRequest:
    """The request that tells the tool what was wrong and asks again, in the same conversation."""
    feedback = (
        "That answer does not match the JSON schema:\n"
        + "\n".join(f"- {problem}" for problem in wrong[:20])
        + "\nReply again with only the corrected JSON value."
    )
    messages = [*request.messages, Message.assistant(answer), Message.user(feedback)]
    return request.model_copy(update={"messages": messages, "session_id": session_id or request.session_id})


async def validated(
    request: ChatRequest, run: Run, *, native: bool, resumable: bool, runner: str
) -> AsyncGenerator[ChatChunk, None]:
    """The chunks of a structured answer: `run` once, and once more if the JSON does not fit.

    `native`: the tool takes the schema itself; `resumable`: its session ids can continue the
    conversation for the retry (else the retry sends the whole conversation again)."""
    schema = request.json_schema or {}
    check_schema(schema, "json_schema")
    asked = request if native else _with_schema_in_prompt(request)
    spent = Usage()
    cost: float | None = None
    for attempt in (1, 2):
        text: list[str] = []
        final: ChatChunk | None = None
        session_id = model = None
        async with aclosing(run(asked)) as chunks:
            async for chunk in chunks:
                session_id, model = chunk.session_id or session_id, chunk.model or model
                if chunk.is_final:
                    final = chunk
                    text.append(chunk.delta)
                    continue
                text.append(chunk.delta)
                if chunk.delta and not _more_than_text(chunk):
                    continue
                yield chunk.model_copy(update={"delta": ""}) if chunk.delta else chunk
        spent = _added(spent, final.usage if final else None)
        if final is not None and final.cost_usd is not None:
            cost = (cost or 0.0) + final.cost_usd
        answer = "".join(text)
        json_text, wrong = problems(answer, schema)
        if not wrong and json_text is not None:
            yield ChatChunk(delta=json_text)
            final = final or ChatChunk()
            update = {
                "delta": "",
                "finish_reason": "stop",
                "usage": spent,
                "cost_usd": cost,
                "session_id": final.session_id or session_id,
                "model": final.model or model,
            }
            yield final.model_copy(update=update)
            return
        if attempt == 2:
            raise StructuredOutputError(
                "the answer did not match the JSON schema, also when asked again: " + "; ".join(wrong[:5]),
                runner=runner,
            )
        asked = _retry(asked, answer, wrong, session_id if resumable else None)


def _more_than_text(chunk: ChatChunk) -> bool:
    return bool(chunk.thinking or chunk.tool_call or chunk.agent_event or chunk.warnings)


def _added(total: Usage, more: Usage | None) -> Usage:
    if more is None:
        return total
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cache_read_tokens=total.cache_read_tokens + more.cache_read_tokens,
        cache_write_tokens=total.cache_write_tokens + more.cache_write_tokens,
        reasoning_tokens=total.reasoning_tokens + more.reasoning_tokens,
    )
