"""llmrun as an any-llm provider: any-llm's completion API, answered by an llmrun runner.

    from llmrun.integrations.anyllm import create

    llm = create("claude_code")
    completion = await llm.acompletion(model="sonnet", messages=[{"role": "user", "content": "Hi"}])
    async for chunk in await llm.acompletion(model="sonnet", messages=messages, stream=True): ...

any-llm looks its providers up by name inside its own package and takes no others, so
`AnyLLM.create("llmrun")` does not exist: `create(runner)` (or `LlmrunProvider(runner)`) gives
the provider instead, an `AnyLLM` like any other (`completion`, `acompletion`, `list_models`,
`messages`). Answers are any-llm's `ChatCompletion` / `ChatCompletionChunk`.

Tools are answered through llmrun's tool calling (`stream_with_tools`): the model's calls come
back as `tool_calls`; run them and send the results as `tool` messages, as with any provider.
Sampling parameters, `stop`, `response_format` (a dict or a pydantic model / dataclass) and
`timeout` map onto the ChatRequest; llmrun's own request fields (`cwd`, `system`,
`allow_tools`, `options`, `session_id`, `stall_timeout`, `strict_params`) may be given as
keyword arguments. Anything else raises UnsupportedFeature rather than being ignored.
With `unified_exceptions=True` llmrun's errors become any-llm's (AuthenticationError,
RateLimitError, ...), the llmrun error kept as `original_exception`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

try:
    from any_llm import AnyLLM
    from any_llm import exceptions as anyllm_errors
    from any_llm.types.completion import ChatCompletion, ChatCompletionChunk, CompletionParams
    from any_llm.types.model import Model
except ImportError as exc:
    raise ImportError(
        "llmrun.integrations.anyllm needs any-llm: pip install 'llmrun-cli[anyllm]' (or pip install any-llm-sdk)"
    ) from exc
from pydantic import TypeAdapter

from .. import errors
from ..openai_compat import from_openai_messages, openai_chunks
from ..registry import get_runner
from ..runners.base import Runner
from ..tool_emulation import chat_with_tools, stream_with_tools
from ..types import ChatRequest

__all__ = ["LlmrunProvider", "create"]

# llmrun's request fields that any-llm has no parameter of its own for; they ride in kwargs.
REQUEST_FIELDS = ("system", "cwd", "session_id", "allow_tools", "options", "stall_timeout", "strict_params")

# Most specific first: the first class the error is an instance of wins.
UNIFIED_ERRORS: tuple[tuple[type[errors.LlmrunError], type[anyllm_errors.AnyLLMError]], ...] = (
    (errors.AuthenticationError, anyllm_errors.AuthenticationError),
    (errors.RateLimitError, anyllm_errors.RateLimitError),
    (errors.Overloaded, anyllm_errors.RateLimitError),
    (errors.ModelNotFound, anyllm_errors.ModelNotFoundError),
    (errors.ContextLengthExceeded, anyllm_errors.ContextLengthExceededError),
    (errors.InvalidRequest, anyllm_errors.InvalidRequestError),
    (errors.UnsupportedFeature, anyllm_errors.InvalidRequestError),
    (errors.LlmrunError, anyllm_errors.ProviderError),
)


class LlmrunProvider(AnyLLM):
    """An any-llm provider whose answers come from one llmrun runner (a name or a Runner)."""

    PROVIDER_NAME = "llmrun"
    PROVIDER_DOCUMENTATION_URL = "https://pypi.org/project/llmrun/"
    ENV_API_KEY_NAME = ""  # the tools use their own logins

    SUPPORTS_COMPLETION = True
    SUPPORTS_COMPLETION_STREAMING = True
    SUPPORTS_COMPLETION_REASONING = True
    SUPPORTS_COMPLETION_IMAGE = True
    SUPPORTS_COMPLETION_PDF = False
    SUPPORTS_EMBEDDING = False
    SUPPORTS_RESPONSES = False
    SUPPORTS_LIST_MODELS = True
    SUPPORTS_BATCH = False
    TIMEOUT_SUPPORT = "mapped"  # becomes ChatRequest.timeout

    def __init__(self, runner: str | Runner, *, unified_exceptions: bool | None = None, **settings: Any) -> None:
        """`settings` are the runner's (binary, default_model, timeout, ...) when it is given by name."""
        if isinstance(runner, Runner) and settings:
            raise errors.InvalidRequest(
                f"runner settings {sorted(settings)} apply to a runner given by name", runner=runner.name
            )
        self.runner = get_runner(runner, **settings) if isinstance(runner, str) else runner
        super().__init__(unified_exceptions=unified_exceptions)

    def _verify_and_set_api_key(self, api_key: str | None = None) -> str | None:
        return None  # no key: each tool is logged in on its own

    def _init_client(self, api_key: str | None = None, api_base: str | None = None, **kwargs: Any) -> None:
        pass  # the runner is the client

    # --- completions ---------------------------------------------------------------------

    async def _acompletion(
        self, params: CompletionParams, **kwargs: Any
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        request = from_openai_messages(**self._convert_completion_params(params, **kwargs))
        if params.stream:
            return self._stream(request)
        return self._convert_completion_response(await chat_with_tools(self.runner, request))

    async def _stream(self, request: ChatRequest) -> AsyncIterator[ChatCompletionChunk]:
        # Closing the runner's stream ends the tool's process when the caller stops reading early.
        async with aclosing(stream_with_tools(self.runner, request)) as chunks:
            async for data in openai_chunks(chunks):
                yield self._convert_completion_chunk_response(data)

    @staticmethod
    def _convert_completion_params(params: CompletionParams, **kwargs: Any) -> dict[str, Any]:
        """The arguments of `from_openai_messages` for any-llm's parameters and keyword arguments."""
        _refuse_unsupported(params, kwargs)
        if params.max_tokens is not None and params.max_completion_tokens not in (None, params.max_tokens):
            raise errors.InvalidRequest("max_tokens and max_completion_tokens differ: give one of them")
        arguments: dict[str, Any] = {
            "messages": params.messages,
            "tools": params.tools,
            "response_format": _response_format(params.response_format),
            "model": params.model_id or None,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens if params.max_tokens is not None else params.max_completion_tokens,
            "stop": [params.stop] if isinstance(params.stop, str) else params.stop,
            "seed": params.seed,
            "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty,
            **kwargs,  # timeout, and the REQUEST_FIELDS `_refuse_unsupported` let through
        }
        if params.tool_choice is not None:
            arguments["tool_choice"] = params.tool_choice
        return arguments

    @staticmethod
    def _convert_completion_response(response: Any) -> ChatCompletion:
        """A ChatResponse as any-llm's ChatCompletion."""
        data = response.to_openai()
        _rename_reasoning(data["choices"][0]["message"])
        return ChatCompletion.model_validate(data)

    @staticmethod
    def _convert_completion_chunk_response(response: Any, **kwargs: Any) -> ChatCompletionChunk:
        """An OpenAI chunk dict (from `openai_chunks`) as any-llm's ChatCompletionChunk."""
        _rename_reasoning(response["choices"][0]["delta"])
        return ChatCompletionChunk.model_validate(response)

    # --- models ---------------------------------------------------------------------------

    async def _alist_models(self, **kwargs: Any) -> Sequence[Model]:
        if kwargs:
            raise errors.UnsupportedFeature(f"list_models takes no arguments here, got {sorted(kwargs)}")
        return self._convert_list_models_response(await self.runner.available_models())

    @staticmethod
    def _convert_list_models_response(response: Any) -> Sequence[Model]:
        """The runner's ModelInfo list as any-llm's Models."""
        return [Model(id=info.id, object="model", created=0, owned_by=info.runner) for info in response]

    # --- what runners do not do -----------------------------------------------------------

    @staticmethod
    def _convert_embedding_params(params: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("llmrun's runners make no embeddings")

    @staticmethod
    def _convert_embedding_response(response: Any) -> Any:
        raise NotImplementedError("llmrun's runners make no embeddings")

    # --- errors ---------------------------------------------------------------------------

    @staticmethod
    def _classify_exception(exception: Exception) -> type[anyllm_errors.AnyLLMError] | None:
        """any-llm's class for an llmrun error (used with unified exceptions); None for others."""
        return next((unified for own, unified in UNIFIED_ERRORS if isinstance(exception, own)), None)


def create(runner: str | Runner, *, unified_exceptions: bool | None = None, **settings: Any) -> LlmrunProvider:
    """The any-llm provider for a runner, as `AnyLLM.create(...)` gives one for its own providers."""
    return LlmrunProvider(runner, unified_exceptions=unified_exceptions, **settings)


def _refuse_unsupported(params: CompletionParams, kwargs: dict[str, Any]) -> None:
    """UnsupportedFeature for what was asked and cannot be done, rather than ignoring it.

    `n` and `prompt_cache_key` are refused by any-llm itself; `user` (who the end user is, for
    a service's abuse checks) and `stream_options` (the last chunk always carries usage)
    change nothing in the answer and pass."""
    refused = [
        name
        for name, asked in (
            ("logprobs", bool(params.logprobs)),
            ("top_logprobs", params.top_logprobs is not None),
            ("logit_bias", bool(params.logit_bias)),
            ("service_tier", params.service_tier is not None),
            ("parallel_tool_calls=False", params.parallel_tool_calls is False),
            ("reasoning_effort", params.reasoning_effort not in (None, "auto")),
        )
        if asked
    ]
    refused += sorted(set(kwargs) - {*REQUEST_FIELDS, "timeout"})
    if refused:
        raise errors.UnsupportedFeature(
            f"llmrun cannot honour {', '.join(refused)} (any-llm provider 'llmrun')",
            hint="a runner's own settings may go in options={...}",
        )


def _response_format(response_format: dict[str, Any] | type | None) -> dict[str, Any] | None:
    """OpenAI's response_format; a pydantic model or dataclass becomes its JSON schema (any-llm
    parses the answer into it afterwards)."""
    if response_format is None or isinstance(response_format, dict):
        return response_format
    schema = TypeAdapter(response_format).json_schema()
    return {"type": "json_schema", "json_schema": {"name": response_format.__name__, "schema": schema}}


def _rename_reasoning(message: dict[str, Any]) -> None:
    """any-llm carries thinking as `reasoning`, where llmrun's OpenAI shapes say `reasoning_content`."""
    if "reasoning_content" in message:
        message["reasoning"] = message.pop("reasoning_content")
