"""llmrun as a SimpleLLMFunc LLM interface: `@llm_function` and `@llm_chat` answered by a runner.

    from SimpleLLMFunc import llm_chat, llm_function
    from llmrun.integrations.simplellmfunc import LlmrunInterface

    llm = LlmrunInterface("claude_code", model="sonnet")

    @llm_function(llm_interface=llm, temperature=0.2)
    async def summarize(text: str) -> str:
        '''One sentence that says what the text is about.'''  # the prompt

    @llm_chat(llm_interface=llm, stream=True)
    async def assistant(message: str, history: list[dict[str, str]] | None = None): ...

`LlmrunInterface(runner, model=None, **settings)` takes a runner by name (then `settings` are
the runner's: binary, default_model, timeout, ...) or a Runner instance. `chat` answers with the
openai package's `ChatCompletion`, `chat_stream` with its `ChatCompletionChunk`s, as
SimpleLLMFunc's decorators expect. A request with tools (a decorator's `toolkit`) goes through
llmrun's tool calling: the model's calls come back as OpenAI `tool_calls`, SimpleLLMFunc runs
the tools and calls again with their results.

The decorators' keyword arguments (`**llm_kwargs`) reach every call and map onto the
ChatRequest: temperature, max_tokens (or max_completion_tokens), top_p, stop, seed,
frequency_penalty, presence_penalty, tool_choice, response_format (as `json_schema`), `timeout`
(the run's hard limit, in seconds), and llmrun's own request fields (`cwd`, `system`,
`allow_tools`, `options`, `session_id`, `stall_timeout`, `strict_params`; `model` for the
runner's model of this call). `retry_times` is SimpleLLMFunc's own (how often `llm_function`
asks again after an empty answer) and stays with it. Anything else raises llmrun's
UnsupportedFeature rather than being ignored. llmrun's errors (AuthenticationError,
RateLimitError, ...) reach the caller as they are: SimpleLLMFunc has no error types of its own.
A run is not retried here; the runner's tool has its own retries.

SimpleLLMFunc's releases for Python 3.11 (0.4) need `openai<2`; its later ones (Python >= 3.12)
take openai 2 and up. Where the former meets a newer openai, give it an environment of its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from typing import Any, Literal

try:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from SimpleLLMFunc.interface.llm_interface import (  # type: ignore[import-not-found,unused-ignore]
        LLM_Interface,
    )
    from SimpleLLMFunc.logger import (  # type: ignore[import-not-found,unused-ignore]
        get_current_context_attribute,
        set_current_context_attribute,
    )
except ImportError as exc:
    raise ImportError(
        "llmrun.integrations.simplellmfunc needs SimpleLLMFunc: pip install 'llmrun-cli[simplellmfunc]' "
        "(or pip install SimpleLLMFunc; on Python 3.11 it needs openai<2)"
    ) from exc

from .. import errors
from ..openai_compat import as_openai, as_openai_chunks, from_openai_messages
from ..registry import get_runner
from ..runners.base import Runner
from ..tool_emulation import chat_with_tools, stream_with_tools
from ..types import ChatChunk, ChatRequest, Usage

__all__ = ["LlmrunInterface"]

SAMPLING = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
# llmrun's request fields that OpenAI's parameters have no name for; they ride in llm_kwargs.
REQUEST_FIELDS = ("model", "system", "cwd", "session_id", "allow_tools", "options", "stall_timeout", "strict_params")
# SimpleLLMFunc's decorators read these from the same keyword arguments and pass them on to every
# call; they are the framework's settings, not the model's.
FRAMEWORK_SETTINGS = ("retry_times",)
# They change nothing in an answer: `user` names the end user for a service's abuse checks, and
# the last chunk of a stream always carries usage (`stream_options={"include_usage": True}`).
NO_EFFECT = ("user", "stream_options")


class LlmrunInterface(LLM_Interface):  # type: ignore[misc,unused-ignore]  # Any where SimpleLLMFunc is absent
    """A SimpleLLMFunc `LLM_Interface` whose answers come from one llmrun runner."""

    def __init__(self, runner: str | Runner, model: str | None = None, **settings: Any) -> None:
        if isinstance(runner, Runner) and settings:
            raise errors.InvalidRequest(
                f"runner settings {sorted(settings)} apply to a runner given by name", runner=runner.name
            )
        self.runner = get_runner(runner, **settings) if isinstance(runner, str) else runner
        self.model = model
        # No API key pool: each tool has its own login.
        name = f"{self.runner.name}/{model}" if model else self.runner.name
        super().__init__(api_key_pool=None, model_name=name)  # type: ignore[arg-type,unused-ignore]

    def __repr__(self) -> str:
        return f"LlmrunInterface(runner={self.runner.name!r}, model={self.model!r})"

    async def chat(
        self,
        trace_id: str = "",  # SimpleLLMFunc's decorators keep theirs in their log context
        stream: Literal[False] = False,
        messages: Iterable[Mapping[str, Any]] = (),
        timeout: float | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> ChatCompletion:
        """The whole answer to OpenAI-shaped `messages` (and `tools`, ...), as a ChatCompletion."""
        if stream:
            raise errors.InvalidRequest("chat() gives a whole answer: use chat_stream() for a stream")
        request = self.chat_request(messages, timeout, *args, **kwargs)
        response = await chat_with_tools(self.runner, request)
        self._count(response.usage)
        return as_openai(response)

    async def chat_stream(
        self,
        trace_id: str = "",
        stream: Literal[True] = True,
        messages: Iterable[Mapping[str, Any]] = (),
        timeout: float | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The answer as ChatCompletionChunks: text as it arrives, then each tool call, then
        the last chunk with finish_reason and usage."""
        if not stream:
            raise errors.InvalidRequest("chat_stream() gives a stream: use chat() for a whole answer")
        request = self.chat_request(messages, timeout, *args, **kwargs)
        # Closing the runner's stream ends the tool's process when the caller stops reading early.
        async with aclosing(stream_with_tools(self.runner, request)) as chunks:
            async for chunk in as_openai_chunks(self._counted(chunks)):
                yield chunk

    def chat_request(
        self, messages: Iterable[Mapping[str, Any]], timeout: float | None = None, *args: Any, **kwargs: Any
    ) -> ChatRequest:
        """The ChatRequest for a call's arguments (OpenAI's chat parameters, see the module's doc)."""
        if args:
            raise errors.InvalidRequest(f"chat parameters are keyword arguments; got {len(args)} positional ones")
        for name in FRAMEWORK_SETTINGS + NO_EFFECT:
            kwargs.pop(name, None)
        tools, response_format = kwargs.pop("tools", None), kwargs.pop("response_format", None)
        fields: dict[str, Any] = {"model": self.model, "timeout": timeout}
        for name in (*SAMPLING, "tool_choice", *REQUEST_FIELDS):
            if name in kwargs:
                fields[name] = kwargs.pop(name)
        fields["max_tokens"] = _max_tokens(kwargs.pop("max_tokens", None), kwargs.pop("max_completion_tokens", None))
        stop = kwargs.pop("stop", None)
        fields["stop"] = [stop] if isinstance(stop, str) else stop
        if kwargs:
            raise errors.UnsupportedFeature(
                f"llmrun cannot honour {', '.join(sorted(kwargs))} (SimpleLLMFunc interface of {self.runner.name})",
                runner=self.runner.name,
                hint="a runner's own settings may go in options={...}",
            )
        return from_openai_messages(list(messages), tools, response_format=response_format, **fields)

    def _count(self, usage: Usage | None) -> None:
        """Add a run's tokens to this interface's totals and to the decorator's log context,
        whose lines show the tokens of the call in progress."""
        if usage is None:
            return
        self.input_token_count += usage.input_tokens
        self.output_token_count += usage.output_tokens
        for name, tokens in (("input_tokens", usage.input_tokens), ("output_tokens", usage.output_tokens)):
            set_current_context_attribute(name, (get_current_context_attribute(name) or 0) + tokens)

    async def _counted(self, chunks: AsyncGenerator[ChatChunk, None]) -> AsyncGenerator[ChatChunk, None]:
        async for chunk in chunks:
            if chunk.is_final:
                self._count(chunk.usage)
            yield chunk


def _max_tokens(max_tokens: int | None, max_completion_tokens: int | None) -> int | None:
    """OpenAI's two names for the answer's length limit, as one."""
    if max_tokens is not None and max_completion_tokens not in (None, max_tokens):
        raise errors.InvalidRequest("max_tokens and max_completion_tokens differ: give one of them")
    return max_tokens if max_tokens is not None else max_completion_tokens
