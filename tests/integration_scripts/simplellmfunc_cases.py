# mypy: disable-error-code="empty-body,arg-type,var-annotated,untyped-decorator"
# (SimpleLLMFunc's functions are docstrings only, which the types of its decorators do not foresee)
"""SimpleLLMFunc's decorators driven through llmrun's LlmrunInterface, one case a run.

    python simplellmfunc_cases.py CASE RESULT.json

Run by tests/test_integration_simplellmfunc.py with the python of SimpleLLMFunc's own
virtualenv (it needs openai<2). The case writes what it saw to RESULT.json as JSON; the test
asserts on it. Cases with the claude_code runner expect the environment to point that runner
at the fake claude (LLMRUN_CLAUDE_CODE_BIN, LLMRUN_FAKE_SCENARIO); the others use `Scripted`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from SimpleLLMFunc import llm_chat, llm_function, tool
from SimpleLLMFunc.interface.llm_interface import LLM_Interface

from llmrun.integrations.simplellmfunc import LlmrunInterface
from llmrun.runners.base import Runner
from llmrun.types import ChatChunk, ChatRequest, HealthReport, Usage

Result = dict[str, Any]

CALL_WEATHER = 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER_CALLS: list[str] = []


class Scripted(Runner):
    """Answers each request with the next of its answers, in two pieces, and keeps the requests."""

    name = "scripted"
    display_name = "Scripted"

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        half = len(answer) // 2
        yield ChatChunk(delta=answer[:half])
        yield ChatChunk(delta=answer[half:])
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=10, output_tokens=4), model="scripted-1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


@tool(name="get_weather", description="The weather in a city")
async def get_weather(city: str) -> str:
    """
    Args:
        city: The city's name
    """
    WEATHER_CALLS.append(city)
    return f"sunny, 21 C in {city}"


async def chat_turn(outputs: AsyncIterator[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The text pieces and the final history of one `@llm_chat` turn. SimpleLLMFunc 0.4 yields
    (text, history) pairs; later versions yield ResponseYield (a response or chunk, messages)
    and EventYield items, the events of the loop."""
    pieces: list[str] = []
    history: list[dict[str, Any]] = []
    async for output in outputs:
        if isinstance(output, tuple):
            response, history = output
        elif getattr(output, "type", None) == "response":
            response, history = output.response, output.messages
        else:
            continue
        pieces.append(response if isinstance(response, str) else response.choices[0].delta.content or "")
    return [piece for piece in pieces if piece], history


def seen(runner: Scripted) -> list[Result]:
    """What the runner was asked, one entry a request."""
    return [
        {
            "system": request.system_prompt() or "",
            "tools": [spec.name for spec in request.tools or []],
            "messages": [
                {
                    "role": m.role,
                    "text": m.text,
                    "tool_calls": [[c.name, c.arguments] for c in m.tool_calls or []],
                    "tool_call_id": m.tool_call_id,
                }
                for m in request.messages
            ],
        }
        for request in runner.requests
    ]


# --- plain and streaming, with the claude_code runner and the fake claude -----------------------


async def function_plain() -> Result:
    llm = LlmrunInterface("claude_code", model="sonnet")

    @llm_function(llm_interface=llm)
    async def greet(name: str) -> str:
        """Greet the person by name."""

    answer = await greet("Ada")
    completion = await llm.chat(messages=[{"role": "user", "content": "Say hello"}])
    return {
        "answer": answer,
        "tokens": [llm.input_token_count, llm.output_token_count],
        "completion_type": type(completion).__name__,
        "is_openai_completion": isinstance(completion, ChatCompletion),
        "completion_content": completion.choices[0].message.content,
        "completion_model": completion.model,
        "model_name": llm.model_name,
        "is_llm_interface": isinstance(llm, LLM_Interface),
    }


async def chat_stream() -> Result:
    llm = LlmrunInterface("claude_code", model="sonnet")

    @llm_chat(llm_interface=llm, stream=True)
    async def talk(message: str, history: list[dict[str, str]] | None = None) -> None:
        """A friendly assistant."""

    pieces, history = await chat_turn(talk("Say hello", history=[]))
    direct = [chunk async for chunk in llm.chat_stream(messages=[{"role": "user", "content": "Say hello"}])]
    return {
        "pieces": pieces,
        "history_roles": [m["role"] for m in history],
        "direct_all_openai_chunks": all(isinstance(chunk, ChatCompletionChunk) for chunk in direct),
        "direct_text": "".join(chunk.choices[0].delta.content or "" for chunk in direct),
        "direct_last": [direct[-1].choices[0].finish_reason, direct[-1].usage and direct[-1].usage.completion_tokens],
        "stream_ids": len({chunk.id for chunk in direct}),
    }


async def error() -> Result:
    @llm_function(llm_interface=LlmrunInterface("claude_code", model="sonnet"))
    async def greet(name: str) -> str:
        """Greet the person by name."""

    return await raised(lambda: greet("Ada"))


# --- one tool call in SimpleLLMFunc's own loop, with a scripted runner ---------------------------


async def function_tool() -> Result:
    runner = Scripted(CALL_WEATHER, "It is sunny in Paris, 21 C.")

    @llm_function(llm_interface=LlmrunInterface(runner), toolkit=[get_weather])
    async def weather_report(city: str) -> str:
        """Report the weather in the city; look it up with the tools."""

    answer = await weather_report("Paris")
    return {"answer": answer, "tool_ran_with": WEATHER_CALLS, "requests": seen(runner)}


async def chat_tool_stream() -> Result:
    runner = Scripted(CALL_WEATHER, "It is sunny in Paris, 21 C.")

    @llm_chat(llm_interface=LlmrunInterface(runner), toolkit=[get_weather], stream=True)
    async def talk(message: str, history: list[dict[str, str]] | None = None) -> None:
        """An assistant that looks the weather up with its tools."""

    pieces, history = await chat_turn(talk("Weather in Paris?", history=[]))
    return {
        "text": "".join(pieces),
        "tool_ran_with": WEATHER_CALLS,
        "history": [[m.get("role"), m.get("content"), bool(m.get("tool_calls"))] for m in history],
        "requests": seen(runner),
    }


# --- what the decorators' keyword arguments become ---------------------------------------------


async def parameters() -> Result:
    runner = Scripted("42")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    sampling = {
        "temperature": 0.2,
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
    }

    @llm_function(
        llm_interface=LlmrunInterface(runner, model="m-large"),
        retry_times=1,
        timeout=30,
        cwd="/tmp",
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        **sampling,
    )
    async def answer() -> int:
        """The answer to everything."""

    value = await answer()
    [request] = runner.requests
    fields = [*sampling, "model", "timeout", "cwd", "json_schema"]
    return {"value": value, "request": request.model_dump(include=set(fields))}


async def unsupported() -> Result:
    runner = Scripted("never")

    @llm_function(llm_interface=LlmrunInterface(runner), logprobs=True)
    async def greet(name: str) -> str:
        """Greet the person by name."""

    return {**await raised(lambda: greet("Ada")), "requests": len(runner.requests)}


async def raised(call: Callable[[], Awaitable[Any]]) -> Result:
    try:
        await call()
    except Exception as exc:
        return {"error": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
    return {"error": None}


CASES = {
    case.__name__: case
    for case in (function_plain, chat_stream, error, function_tool, chat_tool_stream, parameters, unsupported)
}

if __name__ == "__main__":
    case, out = sys.argv[1], sys.argv[2]
    result = asyncio.run(CASES[case]())
    with open(out, "w") as fh:
        json.dump(result, fh, default=str)
