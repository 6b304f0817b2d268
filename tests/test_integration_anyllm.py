"""llmrun as an any-llm provider: any-llm's own completion API, answered by llmrun runners.

The claude_code runner drives the fake claude (fixtures/bin) replaying captures; tool calls,
sampling parameters and structured output use a small scripted runner that records what it
was asked.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("any_llm", reason="any-llm is not installed: pip install 'llmrun-cli[anyllm]'")

import any_llm
from any_llm.types.completion import ChatCompletion, ChatCompletionChunk
from any_llm.types.messages import MessageResponse
from pydantic import BaseModel

from llmrun import errors
from llmrun.integrations.anyllm import LlmrunProvider, create
from llmrun.runners.base import Runner
from llmrun.types import ChatChunk, ChatRequest, HealthReport, ToolCall, Usage

from .conftest import FAKE_TOOLS, FakeRun

HI: list[Any] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(t for t in FAKE_TOOLS if t.runner == "claude_code"), monkeypatch, record)


class Scripted(Runner):
    """Answers each request with the next of its answers, in two pieces, and keeps the requests."""

    name = "scripted"
    display_name = "Scripted"

    def __init__(self, *answers: str, thinking: str = "") -> None:
        self.answers = list(answers)
        self.thinking = thinking
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if self.thinking:
            yield ChatChunk(thinking=self.thinking)
        half = len(answer) // 2
        yield ChatChunk(delta=answer[:half])
        yield ChatChunk(delta=answer[half:])
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=10, output_tokens=4), model="scripted-1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    return f"sunny, 21 C in {city}"


CALL_WEATHER = 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


# --- plain and streaming, through the claude_code runner and its fake CLI ----------------------


async def test_acompletion_answers_with_anyllms_chat_completion(claude: FakeRun) -> None:
    completion = await create("claude_code").acompletion(model="sonnet", messages=HI)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "Hello from mock"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-opus-4-8"
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.total_tokens) == (12, 19)
    [invocation] = claude.invocations()
    assert "sonnet" in invocation["argv"] and "Say hello" in invocation["stdin"]


def test_sync_completion_and_stream(claude: FakeRun) -> None:
    llm = create("claude_code")
    assert llm.completion(model="sonnet", messages=HI).choices[0].message.content == "Hello from mock"
    chunks = list(llm.completion(model="sonnet", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from mock"


async def test_streaming_gives_anyllm_chunks_of_one_stream(claude: FakeRun) -> None:
    stream = await create("claude_code").acompletion(model="sonnet", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert [c.choices[0].delta.content for c in chunks[:-1]] == ["Hello ", "from ", "mock"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert len({chunk.id for chunk in chunks}) == 1


async def test_list_models_gives_the_runners_models(claude: FakeRun) -> None:
    models = await create("claude_code").alist_models()
    assert models and {model.owned_by for model in models} == {"claude_code"}
    assert "claude-opus-4-8" in [model.id for model in models]


async def test_anyllms_messages_api_goes_through_the_runner_too() -> None:
    runner = Scripted("Bonjour.")
    message = await LlmrunProvider(runner).amessages(model="m", messages=HI, max_tokens=20, system="In French.")
    assert isinstance(message, MessageResponse)
    assert [block.model_dump()["text"] for block in message.content] == ["Bonjour."]
    assert runner.requests[0].system_prompt() == "In French." and runner.requests[0].max_tokens == 20


# --- one tool call, any-llm's way: the caller runs it and sends the result -------------------


async def test_a_tool_call_and_its_result_make_a_round() -> None:
    runner = Scripted(CALL_WEATHER, "It is sunny in Paris, 21 C.")
    llm = LlmrunProvider(runner)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    first = await llm.acompletion(model="m", messages=messages, tools=[get_weather])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})

    messages.append(choice.message)
    result = get_weather(**json.loads(call.function.arguments))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = await llm.acompletion(model="m", messages=messages, tools=[get_weather])
    assert second.choices[0].message.content == "It is sunny in Paris, 21 C."
    assert second.choices[0].finish_reason == "stop"

    assert "get_weather" in (runner.requests[0].system or "")  # the tool was offered to the model
    asked_call, answered = runner.requests[1].messages[1:]
    assert asked_call.tool_calls == [ToolCall(id=call.id, name="get_weather", arguments={"city": "Paris"})]
    assert answered.role == "tool" and answered.tool_call_id == call.id and answered.text == "sunny, 21 C in Paris"


async def test_a_streamed_tool_call_arrives_as_a_tool_call_delta() -> None:
    llm = LlmrunProvider(Scripted(CALL_WEATHER))
    stream = await llm.acompletion(model="m", messages=HI, tools=[get_weather], stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert text == "Let me look."
    assert [(c.index, c.function and c.function.name) for c in calls] == [(0, "get_weather")]
    assert calls[0].function and json.loads(calls[0].function.arguments or "") == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_choice_reaches_the_tool_calling() -> None:
    runner = Scripted(CALL_WEATHER)
    choice = {"type": "function", "function": {"name": "get_weather"}}
    await LlmrunProvider(runner).acompletion(model="m", messages=HI, tools=[get_weather], tool_choice=choice)
    assert 'you must call the tool "get_weather"' in (runner.requests[0].system or "")


# --- what the request asks for --------------------------------------------------------------


async def test_sampling_parameters_and_request_fields_reach_the_runner(tmp_path: Path) -> None:
    runner = Scripted("ok")
    await LlmrunProvider(runner).acompletion(
        model="m-large",
        messages=[{"role": "system", "content": "Be terse."}, *HI],
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop="END",
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        timeout=30,
        cwd=str(tmp_path),
        options={"effort": "low"},
    )
    request = runner.requests[0]
    assert (request.model, request.temperature, request.top_p, request.max_tokens) == ("m-large", 0.2, 0.9, 50)
    assert (request.stop, request.seed, request.frequency_penalty, request.presence_penalty) == (["END"], 7, 0.5, 0.25)
    assert (request.timeout, request.cwd, request.options) == (30, str(tmp_path), {"effort": "low"})
    assert request.system_prompt() == "Be terse."


class City(BaseModel):
    city: str
    temperature: int


async def test_a_pydantic_response_format_is_a_json_schema_and_is_parsed() -> None:
    runner = Scripted('{"city": "Paris", "temperature": 21}')
    completion = await LlmrunProvider(runner).acompletion(model="m", messages=HI, response_format=City)
    assert completion.choices[0].message.parsed == City(city="Paris", temperature=21)
    schema = runner.requests[0].json_schema or {}
    assert set(schema["properties"]) == {"city", "temperature"}


async def test_thinking_is_anyllms_reasoning() -> None:
    llm = LlmrunProvider(Scripted("Four.", "Five.", thinking="Two and two."))
    completion = await llm.acompletion(model="m", messages=HI)
    message = completion.choices[0].message
    assert message.content == "Four." and message.reasoning is not None
    assert message.reasoning.content == "Two and two."
    stream = await llm.acompletion(model="m", messages=HI, stream=True)
    reasoning = [c.choices[0].delta.reasoning async for c in stream if c.choices[0].delta.reasoning]
    assert [r.content for r in reasoning] == ["Two and two."]


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"42": 1.0}}, "logit_bias"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"temprature": 0.1}, "temprature"),
    ],
)
async def test_what_llmrun_cannot_honour_is_refused(arguments: dict[str, Any], refused: str) -> None:
    runner = Scripted("never sent")
    with pytest.raises(errors.UnsupportedFeature, match=refused), pytest.warns(DeprecationWarning):
        await LlmrunProvider(runner).acompletion(model="m", messages=HI, **arguments)
    assert runner.requests == []


async def test_differing_token_limits_are_refused() -> None:
    with pytest.raises(any_llm.InvalidRequestError, match="max_completion_tokens"):
        await LlmrunProvider(Scripted("no"), unified_exceptions=True).acompletion(
            model="m", messages=HI, max_tokens=10, max_completion_tokens=20
        )


# --- errors ---------------------------------------------------------------------------------


async def test_a_runner_error_becomes_anyllms_with_unified_exceptions(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    llm = create("claude_code", unified_exceptions=True)
    with pytest.raises(any_llm.AuthenticationError) as caught:
        await llm.acompletion(model="sonnet", messages=HI)
    assert isinstance(caught.value.original_exception, errors.AuthenticationError)
    assert caught.value.provider_name == "llmrun" and "Invalid API key" in str(caught.value)

    stream = await llm.acompletion(model="sonnet", messages=HI, stream=True)
    with pytest.raises(any_llm.AuthenticationError):
        [chunk async for chunk in stream]


async def test_without_unified_exceptions_llmruns_error_is_raised(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    with pytest.raises(errors.AuthenticationError, match="Invalid API key"), pytest.warns(DeprecationWarning):
        await create("claude_code", unified_exceptions=False).acompletion(model="sonnet", messages=HI)


def test_settings_go_with_a_runner_given_by_name() -> None:
    assert create("claude_code", default_model="opus").runner.default_model == "opus"
    with pytest.raises(errors.InvalidRequest, match="default_model"):
        LlmrunProvider(Scripted(), default_model="opus")


@pytest.fixture
def without_anyllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "any_llm", None)
    monkeypatch.delitem(sys.modules, "llmrun.integrations.anyllm")
    yield


def test_without_anyllm_the_error_names_the_extra(without_anyllm: None) -> None:
    with pytest.raises(ImportError, match=r"pip install 'llmrun-cli\[anyllm\]'"):
        importlib.import_module("llmrun.integrations.anyllm")
