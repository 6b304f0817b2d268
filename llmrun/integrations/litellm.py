"""llmrun as a LiteLLM custom provider: `model="llmrun/<runner>"` or `"llmrun/<runner>/<model>"`.

    import litellm
    from llmrun.integrations.litellm import register

    register()  # adds the "llmrun" provider to litellm.custom_provider_map
    response = litellm.completion(model="llmrun/claude_code/sonnet", messages=[{"role": "user", "content": "Hi"}])

Importing this module changes nothing in LiteLLM; `register()` does, once per process (calling
it again replaces the provider). `completion`, `acompletion` and `stream=True` on both work, and
`tools=[...]` goes through llmrun's tool emulation, so the answer's `message.tool_calls` (or the
stream's `delta.tool_calls`) hold the model's calls. The model name after the runner is passed
to the tool as it is and may itself contain "/" (`llmrun/opencode/openai/gpt-5`).

LiteLLM's parameters become ChatRequest fields: temperature, max_tokens (or
max_completion_tokens), top_p, stop, seed, frequency_penalty, presence_penalty, tools,
tool_choice, response_format (as `json_schema`), and LiteLLM's `timeout` (600 s unless given)
as the run's hard `timeout`; retries stay LiteLLM's (`num_retries`, a Router's policy).
ChatRequest's own fields can be given as extra keywords
(`cwd=...`, `allow_tools=True`, `options={...}`); any other parameter raises
`litellm.UnsupportedParamsError` rather than being dropped. llmrun's errors become LiteLLM's
exception types (AuthenticationError, RateLimitError, Timeout, NotFoundError, ...) with the
same message, the llmrun error as `__cause__`.

A stream carries text, tool calls and, on its last chunk, finish_reason and usage; the
model's thinking is in a whole answer's `message.reasoning_content` only (LiteLLM's streaming
chunks of a custom provider have no field for it).

LiteLLM fetches its model cost map from the network when imported, unless
`LITELLM_LOCAL_MODEL_COST_MAP=True` is set in the environment beforehand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar, cast

try:
    import litellm
    from litellm import exceptions as litellm_errors
    from litellm.llms.custom_llm import CustomLLM
    from litellm.types.llms.openai import ChatCompletionToolCallChunk, ChatCompletionUsageBlock
    from litellm.types.utils import GenericStreamingChunk, ModelResponse
except ImportError:
    raise ImportError("llmrun.integrations.litellm needs LiteLLM: pip install 'llmrun-cli[litellm]'") from None
from pydantic import ValidationError

from .. import errors
from ..openai_compat import from_openai_messages
from ..registry import get_runner
from ..runners.base import Runner
from ..tool_emulation import chat_with_tools, stream_with_tools
from ..types import ChatChunk, ChatRequest, ChatResponse

__all__ = ["PROVIDER", "LlmrunProvider", "chat_request", "litellm_error", "register"]

PROVIDER = "llmrun"

T = TypeVar("T")

# LiteLLM acts on these itself: its stream wrapper on the first two, its retry loop (num_retries,
# a Router's policy) on max_retries, which it also passes on for HTTP clients' retries; a run
# is not retried inside llmrun.
_LITELLM_OWN_PARAMS = frozenset({"stream", "stream_options", "max_retries"})
# Read from LiteLLM's own parameters (or derived from them) rather than taken as ChatRequest fields.
_NOT_PASSED_AS_FIELDS = frozenset({"messages", "model", "tools", "tool_choice", "json_schema", "max_tokens"})
_CHAT_REQUEST_FIELDS = frozenset(ChatRequest.model_fields) - _NOT_PASSED_AS_FIELDS


def register(provider: LlmrunProvider | None = None) -> LlmrunProvider:
    """Make `model="llmrun/..."` reach llmrun in LiteLLM; returns the provider registered.

    Give a provider of your own (`LlmrunProvider(runners={...})`) to use runner instances
    you configured; otherwise each call gets a fresh runner by name from llmrun's registry.
    """
    provider = provider or LlmrunProvider()
    others = [item for item in litellm.custom_provider_map if item["provider"] != PROVIDER]
    litellm.custom_provider_map = [*others, {"provider": PROVIDER, "custom_handler": provider}]
    return provider


def chat_request(
    model: str, messages: list[Any], optional_params: Mapping[str, Any], timeout: Any = None
) -> tuple[str, ChatRequest]:
    """(runner name, request) for LiteLLM's model (without "llmrun/"), messages and parameters."""
    runner, _, model_name = model.partition("/")  # a model name may itself contain "/"
    if not runner:
        raise errors.InvalidRequest(f'model "{PROVIDER}/{model}" names no runner: use "{PROVIDER}/<runner>[/<model>]"')
    params = {key: value for key, value in optional_params.items() if key not in _LITELLM_OWN_PARAMS}
    if params.pop("n", None) not in (None, 1):
        raise errors.UnsupportedFeature("n other than 1: a runner gives one answer per request", runner=runner)
    max_tokens, max_completion_tokens = params.pop("max_tokens", None), params.pop("max_completion_tokens", None)
    fields: dict[str, Any] = {"model": model_name or None}
    if max_tokens is not None or max_completion_tokens is not None:
        fields["max_tokens"] = max_tokens if max_tokens is not None else max_completion_tokens
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    tools, response_format = params.pop("tools", None), params.pop("response_format", None)
    if "tool_choice" in params:
        fields["tool_choice"] = params.pop("tool_choice")
    unknown = sorted(key for key in params if key not in _CHAT_REQUEST_FIELDS)
    if unknown:
        raise errors.UnsupportedFeature(f"parameters llmrun cannot honour: {', '.join(unknown)}", runner=runner)
    fields.update(params)
    if "timeout" not in fields and timeout is not None:
        # LiteLLM always passes one (600 s by default); an httpx.Timeout gives its read limit.
        fields["timeout"] = getattr(timeout, "read", timeout)
    try:
        request = from_openai_messages(messages, tools, response_format=response_format, **fields)
    except ValidationError as exc:
        raise errors.InvalidRequest(f"invalid request: {exc}", runner=runner) from None
    return runner, request


# Checked in order: the first llmrun class that matches picks LiteLLM's exception.
_LITELLM_ERRORS: tuple[tuple[tuple[type[errors.LlmrunError], ...], Any], ...] = (
    ((errors.AuthenticationError,), litellm_errors.AuthenticationError),
    ((errors.RateLimitError, errors.Overloaded), litellm_errors.RateLimitError),
    ((errors.RunnerTimeout,), litellm_errors.Timeout),
    ((errors.ContextLengthExceeded,), litellm_errors.ContextWindowExceededError),
    ((errors.ModelNotFound, errors.RunnerNotFound, errors.SessionNotFound), litellm_errors.NotFoundError),
    ((errors.UnsupportedFeature,), litellm_errors.UnsupportedParamsError),
    ((errors.InvalidRequest,), litellm_errors.BadRequestError),
    ((errors.ServiceUnavailable, errors.BinaryNotFound), litellm_errors.ServiceUnavailableError),
)


def litellm_error(error: errors.LlmrunError, model: str) -> Exception:
    """LiteLLM's exception for an llmrun error, with its message (and hint, where there is one)."""
    message = f"{error} ({error.hint})" if error.hint else str(error)
    model = f"{PROVIDER}/{model}"
    for llmrun_types, litellm_type in _LITELLM_ERRORS:
        if isinstance(error, llmrun_types):
            converted: Exception = litellm_type(message=message, model=model, llm_provider=PROVIDER)
            return converted
    return litellm_errors.APIError(status_code=error.http_status, message=message, model=model, llm_provider=PROVIDER)


class LlmrunProvider(CustomLLM):
    """LiteLLM's `CustomLLM` for llmrun's runners. `runners` maps names to runner instances to
    use for them (kept open across calls); other names get a fresh runner per call."""

    def __init__(self, runners: Mapping[str, Runner] | None = None) -> None:
        super().__init__()
        self.runners = dict(runners or {})

    # LiteLLM calls these with keyword arguments only (model, messages, optional_params,
    # timeout and others this provider has no use for), as its documentation shows.

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return _run_sync(self.acompletion(*args, **kwargs))

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        model = kwargs["model"]
        try:
            runner_name, request = _request_of(kwargs)
            async with self._runner(runner_name) as runner:
                response = await chat_with_tools(runner, request)
        except errors.LlmrunError as exc:
            raise litellm_error(exc, model) from exc
        return _model_response(response, model)

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return _iterate_sync(self.astreaming(*args, **kwargs))

    # LiteLLM declares a coroutine here, but its stream wrapper iterates what the call returns:
    # an async generator, as in LiteLLM's documented example.
    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[GenericStreamingChunk, None]:
        model = kwargs["model"]
        try:
            runner_name, request = _request_of(kwargs)
            async with self._runner(runner_name) as runner, aclosing(stream_with_tools(runner, request)) as chunks:
                tool_index = 0
                async for chunk in chunks:
                    if chunk.delta or chunk.tool_call is not None or chunk.is_final:
                        yield _generic_chunk(chunk, tool_index)
                    if chunk.tool_call is not None:
                        tool_index += 1
        except errors.LlmrunError as exc:
            raise litellm_error(exc, model) from exc

    @asynccontextmanager
    async def _runner(self, name: str) -> AsyncIterator[Runner]:
        if name in self.runners:
            yield self.runners[name]
            return
        runner = get_runner(name)
        try:
            yield runner
        finally:
            await runner.aclose()


def _request_of(call: Mapping[str, Any]) -> tuple[str, ChatRequest]:
    return chat_request(call["model"], call["messages"], call["optional_params"], call.get("timeout"))


def _model_response(response: ChatResponse, model: str) -> ModelResponse:
    completion = response.to_openai()
    completion["model"] = response.model or model
    return ModelResponse(**completion)


def _generic_chunk(chunk: ChatChunk, tool_index: int) -> GenericStreamingChunk:
    tool_use: ChatCompletionToolCallChunk | None = None
    if chunk.tool_call is not None:
        call = chunk.tool_call
        tool_use = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            "index": tool_index,
        }
    usage = cast(ChatCompletionUsageBlock, chunk.usage.to_openai()) if chunk.usage is not None else None
    return {
        "text": chunk.delta,
        "tool_use": tool_use,
        "is_finished": chunk.is_final,
        "finish_reason": chunk.finish_reason or "",
        "usage": usage,
        "index": 0,
    }


# LiteLLM's sync entry points may be called from a thread that runs an event loop of its own
# (a notebook, async code calling the sync API), where asyncio.run() is refused: the runner's
# loop therefore runs on a thread of its own.


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, coroutine).result()


_END = object()


def _iterate_sync(chunks: AsyncGenerator[T, None]) -> Iterator[T]:
    """The async generator's items, each awaited on one private loop on one private thread; the
    generator is closed (and its runner's process ended) when the iteration stops early."""

    def run(awaitable: Awaitable[Any]) -> Any:
        return worker.submit(loop.run_until_complete, awaitable).result()

    async def next_item() -> Any:
        return await anext(chunks, _END)

    loop = asyncio.new_event_loop()
    worker = ThreadPoolExecutor(max_workers=1)
    try:
        while (item := run(next_item())) is not _END:
            yield item
    finally:
        run(chunks.aclose())
        run(loop.shutdown_asyncgens())
        worker.submit(loop.close).result()
        worker.shutdown()
