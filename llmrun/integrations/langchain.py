"""llmrun's runners as a LangChain chat model.

    from llmrun.integrations.langchain import ChatLlmrun

    model = ChatLlmrun(runner="claude_code", model="sonnet", temperature=0.2)
    model.invoke("Say hi").content
    for chunk in model.stream("Count to three"): ...
    model.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
    model.with_structured_output(Person).invoke("Invent a person")  # a Person

Tools offered through `bind_tools` go through llmrun's tool emulation (`stream_with_tools`):
the CLI tools themselves take no client tools. `with_structured_output` passes the schema
as `ChatRequest.json_schema` by default (method="json_schema"); method="function_calling"
asks for it as a tool call instead, for runners without a structured output option.
Keyword arguments of a call (or of `bind`) are ChatRequest fields; any other is refused
with UnsupportedFeature. llmrun's errors reach the caller as they are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from operator import itemgetter
from typing import Any, Literal, TypeVar

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ToolCall,
        ToolCallChunk,
        convert_to_openai_messages,
    )
    from langchain_core.messages.ai import UsageMetadata  # langchain_core.messages 1.0 lacks it
    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
    from langchain_core.tools import BaseTool
    from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
    from langchain_core.utils.pydantic import is_basemodel_subclass
except ImportError as exc:
    raise ImportError("llmrun.integrations.langchain needs LangChain: pip install 'llmrun-cli[langchain]'") from exc

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..errors import UnsupportedFeature
from ..openai_compat import from_openai_messages
from ..registry import get_runner
from ..runners.base import Runner
from ..tool_emulation import chat_with_tools, stream_with_tools
from ..types import ChatChunk, ChatRequest, ChatResponse, Usage

__all__ = ["ChatLlmrun"]

T = TypeVar("T")

# What a call may add through its keyword arguments: ChatRequest's fields, and OpenAI's
# response_format (which becomes `json_schema`).
_CALL_FIELDS = frozenset(ChatRequest.model_fields) - {"messages"} | {"response_format"}
_MODEL_FIELDS = (
    "model",
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "timeout",
)


class ChatLlmrun(BaseChatModel):
    """A LangChain chat model answered by an llmrun runner (a name such as "claude_code", or a
    Runner instance)."""

    runner: str | Runner
    model: str | None = None
    """The model as the tool knows it; None for the runner's default."""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    timeout: float | None = None
    """Hard limit on each run, in seconds."""
    allow_tools: bool = False
    """Let the tool use its own agent tools (shell, file edits)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _runner: Runner = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        # Resolved now, so that an unknown runner name fails where the model is made.
        self._runner = self.runner if isinstance(self.runner, Runner) else get_runner(self.runner)

    @property
    def _llm_type(self) -> str:
        return "llmrun"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = {name: getattr(self, name) for name in _MODEL_FIELDS}
        return {
            "runner": self._runner.name,
            **{name: value for name, value in params.items() if value is not None},
            "allow_tools": self.allow_tools,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "llmrun"
        params["ls_model_name"] = kwargs.get("model") or self.model or self._runner.name
        return params

    # --- tools and structured output --------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with `tools` offered on every call. `tool_choice`: "auto", "none", "any"
        or "required", a tool's name, True (some tool must be called), or OpenAI's dict."""
        openai_tools = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = _tool_choice(tool_choice)
        return self.bind(tools=openai_tools, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers as `schema` (a pydantic class gives its instances, anything else dicts).

        method="json_schema" hands the schema to the tool (`ChatRequest.json_schema`; a runner
        without structured output refuses it), "function_calling" asks for it as a tool call,
        "json_mode" for any JSON object. `strict` has no choice to make: the tools that take
        a schema hold their answers to it, and tool calls are checked against theirs.
        """
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        if method not in ("json_schema", "json_mode"):
            raise ValueError(f"unknown method {method!r}: use 'json_schema', 'function_calling' or 'json_mode'")
        json_schema = convert_to_json_schema(schema) if method == "json_schema" else {"type": "object"}
        model = self.bind(
            json_schema=json_schema,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
        )
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema)
            if isinstance(schema, type) and is_basemodel_subclass(schema)
            else JsonOutputParser()
        )
        if not include_raw:
            return model | parser
        # {"raw": message, "parsed": answer or None, "parsing_error": the parser's error or None}
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=model) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")

    # --- the calls ------------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, call: dict[str, Any]) -> ChatRequest:
        """The ChatRequest for LangChain's messages: the model's fields, then the call's."""
        call = {name: value for name, value in call.items() if name != "stream"}  # LangChain's own switch
        unknown = sorted(set(call) - _CALL_FIELDS)
        if unknown:
            raise UnsupportedFeature(
                f"ChatLlmrun does not know the argument(s) {', '.join(unknown)}; "
                f"it takes ChatRequest's fields: {', '.join(sorted(_CALL_FIELDS))}",
                runner=self._runner.name,
            )
        fields = {name: getattr(self, name) for name in _MODEL_FIELDS if getattr(self, name) is not None}
        fields["allow_tools"] = self.allow_tools
        if stop is not None:
            fields["stop"] = stop
        fields.update(call)
        return from_openai_messages(convert_to_openai_messages(messages), fields.pop("tools", None), **fields)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        with _PrivateLoop() as loop:
            return _result(loop.run(chat_with_tools(self._runner, request)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _result(await chat_with_tools(self._runner, self._request(messages, stop, kwargs)))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # LangChain itself reports each chunk to the callbacks.
        request = self._request(messages, stop, kwargs)
        reader = _ChunkReader(self._runner.name)
        with _PrivateLoop() as loop:
            for chunk in loop.iterate(stream_with_tools(self._runner, request)):
                if (converted := reader.read(chunk)) is not None:
                    yield converted

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        reader = _ChunkReader(self._runner.name)
        async with aclosing(stream_with_tools(self._runner, request)) as chunks:
            async for chunk in chunks:
                if (converted := reader.read(chunk)) is not None:
                    yield converted


def _tool_choice(choice: str | bool | dict[str, Any]) -> str | dict[str, Any]:
    """LangChain's tool_choice in the OpenAI shapes that llmrun's tool emulation reads."""
    if isinstance(choice, bool):
        return "required" if choice else "none"
    if isinstance(choice, str) and choice not in ("auto", "none", "any", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice


# --- llmrun's answers as LangChain's ------------------------------------------------------


def _result(response: ChatResponse) -> ChatResult:
    message = AIMessage(
        content=response.content,
        tool_calls=[ToolCall(name=c.name, args=c.arguments, id=c.id, type="tool_call") for c in response.tool_calls],
        additional_kwargs=_thinking(response.thinking),
        usage_metadata=_usage(response.usage),
        response_metadata=_metadata(response),
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


class _ChunkReader:
    """One stream's chunks as LangChain's: tool calls numbered 0, 1, ... in their order, and
    the last chunk with the usage and what the whole stream told about the answer."""

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.seen: list[ChatChunk] = []
        self.tool_calls = 0

    def read(self, chunk: ChatChunk) -> ChatGenerationChunk | None:
        self.seen.append(chunk)
        fields: dict[str, Any] = {"content": chunk.delta, "additional_kwargs": _thinking(chunk.thinking)}
        if chunk.tool_call is not None:
            call = chunk.tool_call
            fields["tool_call_chunks"] = [
                ToolCallChunk(
                    name=call.name,
                    args=json.dumps(call.arguments),
                    id=call.id,
                    index=self.tool_calls,
                    type="tool_call_chunk",
                )
            ]
            self.tool_calls += 1
        if chunk.is_final:
            whole = ChatResponse.from_chunks(self.seen, runner=self.runner)
            fields.update(usage_metadata=_usage(whole.usage), response_metadata=_metadata(whole), chunk_position="last")
        elif not (chunk.delta or chunk.thinking or chunk.tool_call):
            return None  # nothing to show yet; what it tells comes with the last chunk
        return ChatGenerationChunk(message=AIMessageChunk(**fields))


def _thinking(text: str) -> dict[str, Any]:
    # Where LangChain's models that reason put their reasoning text.
    return {"reasoning_content": text} if text else {}


def _usage(usage: Usage) -> UsageMetadata | None:
    if not usage.total_tokens:
        return None  # the tool did not report its usage
    return UsageMetadata(
        # LangChain counts cached input within the input tokens, as OpenAI does.
        input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        input_token_details={"cache_read": usage.cache_read_tokens, "cache_creation": usage.cache_write_tokens},
        output_token_details={"reasoning": usage.reasoning_tokens},
    )


def _metadata(response: ChatResponse) -> dict[str, Any]:
    metadata = {
        "model_name": response.model,
        "finish_reason": response.finish_reason,
        "runner": response.runner,
        "session_id": response.session_id,
        "cost_usd": response.cost_usd,
        "warnings": response.warnings,
        "agent_events": [event.model_dump(exclude_none=True) for event in response.agent_events],
    }
    return {name: value for name, value in metadata.items() if value not in (None, "", [])}


# --- LangChain's sync calls on llmrun's async runners ---------------------------------------


class _PrivateLoop:
    """An event loop of a sync call's own. It runs on the calling thread, or on a thread of
    its own where the caller already runs a loop (a notebook, say), which a second loop
    cannot share."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> _PrivateLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def run(self, awaitable: Awaitable[T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.loop.run_until_complete(awaitable)
        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(self.loop.run_until_complete, awaitable).result()

    def iterate(self, stream: AsyncGenerator[ChatChunk, None]) -> Iterator[ChatChunk]:
        """The chunks of an async stream, one step of the loop each; a consumer that stops
        early closes the stream (and so ends the tool's run)."""

        async def step() -> ChatChunk | None:
            try:
                chunk: ChatChunk = await anext(stream)
            except StopAsyncIteration:
                return None
            return chunk

        try:
            while (chunk := self.run(step())) is not None:
                yield chunk
        finally:
            self.run(stream.aclose())
