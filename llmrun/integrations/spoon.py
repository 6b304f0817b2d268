"""llmrun as a spoon-ai LLM provider: an `LLMProviderInterface` whose answers come from a runner.

    from spoon_ai.schema import Message
    from llmrun.integrations.spoon import LlmrunProvider

    provider = LlmrunProvider()
    await provider.initialize({"model": "claude_code/sonnet"})  # or {"runner": "claude_code", "model": "sonnet"}
    response = await provider.chat([Message(role="user", content="Hi")])
    async for chunk in provider.chat_stream(messages, callbacks=[handler]): ...

`register()` adds the provider to spoon's global registry as "llmrun", for spoon's LLMManager
and ChatBot (`ChatBot(llm_provider="llmrun", model_name="claude_code/sonnet", api_key="-")`:
the manager insists on an API key, which the tools do not use; they have their own logins).

The configuration names the runner (`runner`: a name or a Runner) and the model; without
`runner`, `model` reads "<runner>[/<model>]". `temperature`, `max_tokens` and `timeout` (the
hard limit of a run, in seconds; spoon's manager sets 300) are the defaults of every request,
`extra_params` holds llmrun request fields (`cwd`, `allow_tools`, `options`, ...). A call's
keyword arguments map onto the ChatRequest: `model` (the runner's model), temperature,
max_tokens, top_p, stop, seed, frequency_penalty, presence_penalty, `response_format` (as
`json_schema`), `tools`/`tool_choice` (through llmrun's tool calling), llmrun's own request
fields, and `output_queue` (text deltas are put there as they arrive, as spoon's agents
expect). Anything else, `thinking` or `reasoning_effort` included, is refused rather than
dropped. Errors are spoon's: AuthenticationError, RateLimitError, ModelNotFoundError,
ProviderUnavailableError, NetworkError (a timeout) or ProviderError, with the llmrun error as
`original_error` and `__cause__`, and its message in `context["message"]` where spoon's class
words its own; a bad configuration is spoon's ConfigurationError.

The model's thinking is in `metadata["reasoning"]` (a chunk's: its piece of it), llmrun's
warnings in `metadata["warnings"]`, the runner's session id in `metadata["session_id"]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any
from uuid import uuid4

try:  # spoon-ai ships no type information
    from spoon_ai.callbacks import BaseCallbackHandler, CallbackManager  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from spoon_ai.llm import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
        AuthenticationError,
        ConfigurationError,
        LLMProviderInterface,
        LLMResponse,
        ModelNotFoundError,
        NetworkError,
        ProviderCapability,
        ProviderError,
        ProviderMetadata,
        ProviderUnavailableError,
        RateLimitError,
        register_provider,
    )
    from spoon_ai.schema import Function, LLMResponseChunk, Message, ToolCall  # type: ignore[import-not-found,import-untyped,unused-ignore]
except ImportError as exc:
    raise ImportError(
        "llmrun.integrations.spoon needs spoon-ai: pip install 'llmrun-cli[spoon]' (or pip install spoon-ai-sdk)"
    ) from exc
from pydantic import ValidationError

from .. import __version__, errors
from ..openai_compat import from_openai_messages
from ..registry import get_runner
from ..runners.base import Runner
from ..tool_emulation import stream_with_tools
from ..types import ChatChunk, ChatRequest, ChatResponse
from ..types import ToolCall as LlmrunToolCall

__all__ = ["PROVIDER", "LlmrunProvider", "register", "spoon_error"]

PROVIDER = "llmrun"

SAMPLING = ("temperature", "max_tokens", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty")
# llmrun's request fields that spoon has no word of its own for; they ride in keyword arguments.
REQUEST_FIELDS = ("system", "cwd", "session_id", "allow_tools", "options", "timeout", "stall_timeout", "strict_params")
# What spoon's LLMManager puts in every provider's configuration, for HTTP APIs: a CLI tool has its
# own login and endpoint, so these mean nothing to it (`base_url` and headers are refused when set).
HTTP_SETTINGS = ("name", "api_key", "retry_attempts", "base_url", "custom_headers")
SETTINGS = ("runner", "model", "temperature", "max_tokens", "timeout", "extra_params", *HTTP_SETTINGS)


def register(name: str = PROVIDER) -> type[LlmrunProvider]:
    """Make `llm_provider="llmrun"` (or `name`) reach llmrun in spoon's LLMManager and ChatBot."""
    capabilities = [ProviderCapability.CHAT, ProviderCapability.COMPLETION, ProviderCapability.TOOLS]
    register_provider(name, [*capabilities, ProviderCapability.STREAMING])(LlmrunProvider)
    return LlmrunProvider


class LlmrunProvider(LLMProviderInterface):  # type: ignore[misc]  # spoon-ai ships no type information
    """A spoon-ai provider answered by one llmrun runner: given here (a name or a Runner; then
    `initialize` is optional), or named by `initialize`'s configuration. A runner given as an
    instance stays yours: `cleanup()` closes only a runner the provider got by name."""

    def __init__(self, runner: Runner | str | None = None, model: str | None = None) -> None:
        self.runner: Runner | None = None
        self._owns_runner = False
        self._runner_given = runner is not None
        self.model = model
        self.defaults: dict[str, Any] = {}
        if runner is not None:
            self._use(runner)

    def _use(self, runner: Runner | str) -> None:
        if isinstance(runner, Runner):
            self.runner, self._owns_runner = runner, False
            return
        try:
            self.runner, self._owns_runner = get_runner(runner), True
        except errors.LlmrunError as exc:
            raise ConfigurationError(str(exc), config_key="runner") from exc

    # --- the interface -------------------------------------------------------------------

    async def initialize(self, config: dict[str, Any]) -> None:
        config = dict(config or {})
        unknown = sorted(key for key, value in config.items() if key not in SETTINGS and value is not None)
        if unknown:
            raise ConfigurationError(f"settings llmrun does not know: {', '.join(unknown)}")
        for key in ("base_url", "custom_headers"):
            if config.get(key):
                raise ConfigurationError(f"a CLI runner has no {key}; the tool uses its own", config_key=key)
        runner, model = config.get("runner"), config.get("model") or self.model
        if runner is None and not self._runner_given and model:
            runner, _, model = str(model).partition("/")  # a model name may itself hold "/"
        if runner is not None:
            await self.cleanup()  # initialized again (spoon's manager does so after some errors)
            self._use(runner)
        if self.runner is None:
            raise ConfigurationError('name a runner: {"runner": "claude_code"} or {"model": "claude_code/sonnet"}')
        self.model = model or None
        defaults = {key: config[key] for key in ("temperature", "max_tokens", "timeout") if config.get(key) is not None}
        self.defaults = {**defaults, **(config.get("extra_params") or {})}

    async def chat(self, messages: list[Message], **kwargs: Any) -> LLMResponse:
        return await self._answer(messages, kwargs)

    async def completion(self, prompt: str, **kwargs: Any) -> LLMResponse:
        return await self._answer([Message(role="user", content=prompt)], kwargs)

    async def chat_with_tools(self, messages: list[Message], tools: list[dict[str, Any]], **kwargs: Any) -> LLMResponse:
        return await self._answer(messages, {**kwargs, "tools": tools})

    async def chat_stream(
        self,
        messages: list[Message],
        callbacks: list[BaseCallbackHandler] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[LLMResponseChunk]:
        """The answer as spoon chunks (`content` so far, `delta`, tool calls so far; the last one
        with finish_reason and usage), telling `callbacks` on start, each token, end and error."""
        runner, handlers, run_id = self._ready(), CallbackManager.from_callbacks(callbacks), uuid4()
        started = time.monotonic()
        chunks: list[ChatChunk] = []
        try:
            request = self._request(messages, kwargs)
            model = self._model_of(request)
            await handlers.on_llm_start(run_id=run_id, messages=messages, model=model, provider=PROVIDER)
            async with aclosing(self._stream(runner, request, kwargs.get("output_queue"))) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    spoon_chunk = self._spoon_chunk(chunks, request)
                    if chunk.delta:
                        await handlers.on_llm_new_token(token=chunk.delta, chunk=spoon_chunk, run_id=run_id)
                    yield spoon_chunk
        except errors.LlmrunError as exc:
            error = spoon_error(exc, self._model_of(None))
            await handlers.on_llm_error(error=error, run_id=run_id)
            raise error from exc
        duration_ms = int((time.monotonic() - started) * 1000)
        response = ChatResponse.from_chunks(chunks, runner=runner.name, duration_ms=duration_ms)
        await handlers.on_llm_end(response=self._spoon_response(response, request), run_id=run_id)

    def get_metadata(self) -> ProviderMetadata:
        """What the runner can do, in spoon's terms (its tool's limits are its own: max_tokens is
        the configured default, 0 when none is)."""
        runner = self._ready()
        capabilities = runner.metadata().capabilities
        offered = [ProviderCapability.CHAT, ProviderCapability.COMPLETION, ProviderCapability.TOOLS]
        if capabilities.streaming:
            offered.append(ProviderCapability.STREAMING)
        if capabilities.images:
            offered.append(ProviderCapability.VISION)
        return ProviderMetadata(
            name=f"{PROVIDER}/{runner.name}",
            version=__version__,
            capabilities=offered,
            max_tokens=int(self.defaults.get("max_tokens") or 0),
            supports_system_messages=capabilities.system_prompt,
        )

    async def health_check(self) -> bool:
        """Whether the runner's tool is installed, recent enough and logged in."""
        if self.runner is None:
            return False
        try:
            return (await self.runner.health()).ok
        except errors.LlmrunError:
            return False

    async def cleanup(self) -> None:
        if self.runner is not None and self._owns_runner:
            await self.runner.aclose()
            self.runner = None

    # --- requests and answers ------------------------------------------------------------

    def _ready(self) -> Runner:
        if self.runner is None:
            raise ProviderError(PROVIDER, "Provider not initialized: call initialize() first")
        return self.runner

    async def _answer(self, messages: Sequence[Message | dict[str, Any]], kwargs: dict[str, Any]) -> LLMResponse:
        started = time.monotonic()
        try:
            runner, request = self._ready(), self._request(messages, kwargs)
            chunks = [chunk async for chunk in self._stream(runner, request, kwargs.get("output_queue"))]
        except errors.LlmrunError as exc:
            raise spoon_error(exc, self._model_of(None)) from exc
        duration_ms = int((time.monotonic() - started) * 1000)
        response = ChatResponse.from_chunks(chunks, runner=runner.name, duration_ms=duration_ms)
        return self._spoon_response(response, request, streamed=kwargs.get("output_queue") is not None)

    async def _stream(self, runner: Runner, request: ChatRequest, output_queue: Any) -> AsyncGenerator[ChatChunk, None]:
        put: Callable[[dict[str, Any]], None] | None = getattr(output_queue, "put_nowait", None)
        async with aclosing(stream_with_tools(runner, request)) as chunks:
            async for chunk in chunks:
                if put is not None and chunk.delta:
                    # The event shape spoon's own providers put on an agent's output queue.
                    put({"type": "content", "delta": chunk.delta, "content": chunk.delta, "metadata": {}})
                yield chunk

    def _request(self, messages: Sequence[Message | dict[str, Any]], kwargs: dict[str, Any]) -> ChatRequest:
        """The ChatRequest for spoon's messages and a call's keyword arguments (over the defaults)."""
        params = {**self.defaults, **{key: value for key, value in kwargs.items() if value is not None}}
        params.pop("output_queue", None)  # read by `_stream`
        for name in ("thinking", "reasoning_effort"):
            if params.pop(name, None):
                raise errors.UnsupportedFeature(f"{name}: a CLI tool thinks as it is set up to; llmrun cannot ask it")
        if "max_completion_tokens" in params:
            params.setdefault("max_tokens", params.pop("max_completion_tokens"))
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        tools, response_format = params.pop("tools", None), params.pop("response_format", None)
        if "tool_choice" in params:
            choice = params["tool_choice"]
            params["tool_choice"] = getattr(choice, "value", choice)  # spoon's ToolChoice enum
        params["model"] = params.get("model") or self.model
        unknown = sorted(set(params) - {"model", "tool_choice", *SAMPLING, *REQUEST_FIELDS})
        if unknown:
            raise errors.UnsupportedFeature(f"parameters llmrun cannot honour: {', '.join(unknown)}")
        try:
            openai_messages = [openai_message(message) for message in messages]
            return from_openai_messages(openai_messages, tools, response_format=response_format, **params)
        except ValidationError as exc:
            raise errors.InvalidRequest(f"invalid request: {exc}") from None

    def _model_of(self, request: ChatRequest | None) -> str:
        model = request.model if request is not None else None
        return model or self.model or (self.runner.default_model if self.runner else None) or ""

    def _spoon_chunk(self, chunks: list[ChatChunk], request: ChatRequest) -> LLMResponseChunk:
        chunk = chunks[-1]
        metadata: dict[str, Any] = {"runner": chunk.runner or self._ready().name}
        if chunk.thinking:
            metadata["reasoning"] = chunk.thinking
        if chunk.warnings:
            metadata["warnings"] = chunk.warnings
        if chunk.session_id:
            metadata["session_id"] = chunk.session_id
        return LLMResponseChunk(
            content="".join(c.delta for c in chunks),
            delta=chunk.delta,
            provider=PROVIDER,
            model=next((c.model for c in reversed(chunks) if c.model), None) or self._model_of(request),
            finish_reason=chunk.finish_reason,
            tool_calls=[spoon_tool_call(c.tool_call) for c in chunks if c.tool_call is not None],
            usage=openai_usage(chunk) if chunk.usage is not None else None,
            metadata=metadata,
            chunk_index=len(chunks) - 1,
            timestamp=datetime.now().isoformat(),
        )

    def _spoon_response(self, response: ChatResponse, request: ChatRequest, streamed: bool = False) -> LLMResponse:
        metadata: dict[str, Any] = {"runner": response.runner, "session_id": response.session_id}
        if response.thinking:
            metadata["reasoning"] = response.thinking
        if response.warnings:
            metadata["warnings"] = response.warnings
        if response.cost_usd is not None:
            metadata["cost_usd"] = response.cost_usd
        if streamed:
            metadata["streamed_content"] = bool(response.content)  # spoon's agents then do not repeat it
        return LLMResponse(
            content=response.content,
            provider=PROVIDER,
            model=response.model or self._model_of(request),
            finish_reason=response.finish_reason,
            native_finish_reason=response.finish_reason,
            tool_calls=[spoon_tool_call(call) for call in response.tool_calls],
            usage=openai_usage(response),
            metadata=metadata,
            duration=response.duration_ms / 1000,
        )


# --- conversions ------------------------------------------------------------------------------


def openai_message(message: Message | dict[str, Any]) -> dict[str, Any]:
    """A spoon message in OpenAI's shape, which spoon's own mostly is: its base64 images become
    data: URLs; documents and files stay as they are, for llmrun to refuse."""
    raw = message if isinstance(message, dict) else message.model_dump(exclude_none=True, exclude={"id"})
    content = raw.get("content")
    if isinstance(content, list):
        raw = {**raw, "content": [_openai_part(part) for part in content]}
    return raw


def _openai_part(part: Any) -> Any:
    source = part.get("source") if isinstance(part, dict) and part.get("type") == "image" else None
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "image_url", "image_url": {"url": url}}
    return part


def spoon_tool_call(call: LlmrunToolCall) -> ToolCall:
    return ToolCall(id=call.id, function=Function.create(call.name, call.arguments))


def openai_usage(answer: ChatChunk | ChatResponse) -> dict[str, int]:
    usage = answer.usage.to_openai() if answer.usage is not None else {}
    return {key: usage.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


def spoon_error(error: errors.LlmrunError, model: str = "") -> ProviderError:
    """spoon's error for an llmrun error, the llmrun error as its `original_error`. Where spoon's
    class words the message itself, llmrun's (with its hint) is in `context["message"]`."""
    message = f"{error} ({error.hint})" if error.hint else str(error)
    context = {"message": message}
    converted: ProviderError
    if isinstance(error, (errors.RateLimitError, errors.Overloaded)):
        retry_after = getattr(error, "retry_after", None)
        converted = RateLimitError(PROVIDER, int(retry_after) if retry_after else None, context=context)
    elif isinstance(error, errors.AuthenticationError):
        converted = AuthenticationError(PROVIDER, context=context)
    elif isinstance(error, errors.ModelNotFound):
        converted = ModelNotFoundError(PROVIDER, model, context=context)
    elif isinstance(error, (errors.ServiceUnavailable, errors.BinaryNotFound)):
        converted = ProviderUnavailableError(PROVIDER, context=context)
    elif isinstance(error, errors.RunnerTimeout):
        converted = NetworkError(PROVIDER, message, original_error=error)
    else:
        converted = ProviderError(PROVIDER, message)
    converted.original_error = error  # spoon's classes take it as an argument only in some cases
    return converted
