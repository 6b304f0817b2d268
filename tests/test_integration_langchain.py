"""ChatLlmrun, llmrun's runners as a LangChain chat model, driven through LangChain's own API."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

pytest.importorskip(
    "langchain_core", reason="the LangChain adapter needs langchain-core: pip install 'llmrun-cli[langchain]'"
)

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

import llmrun
from llmrun import ChatChunk, ChatRequest, HealthReport, Runner, Usage
from llmrun.integrations.langchain import ChatLlmrun

from .conftest import FAKE_TOOLS, FakeRun, prompt_in


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    """The claude_code runner against the fake claude, replaying a captured answer."""
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(FAKE_TOOLS[0], monkeypatch, record)


class ScriptedRunner(Runner):
    """Answers every request with the same text, in two pieces, and keeps the requests."""

    name = "scripted"
    display_name = "Scripted"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        half = len(self.answer) // 2
        yield ChatChunk(delta=self.answer[:half])
        yield ChatChunk(delta=self.answer[half:])
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=9, output_tokens=4), model="scripted-1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@tool
def get_time(zone: str) -> str:
    """The time in a time zone."""
    return "noon"


WEATHER_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
TIME_CALL = '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'


def as_chunk(message: object) -> AIMessageChunk:
    assert isinstance(message, AIMessageChunk)
    return message


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    return whole


# --- through a real runner and the fake claude -------------------------------------------


def test_invoke_answers_with_the_runners_text_and_usage(claude: FakeRun) -> None:
    message = ChatLlmrun(runner="claude_code", model="haiku").invoke("Say hello")
    assert isinstance(message, AIMessage)
    assert message.content == "Hello from mock"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 7
    assert message.response_metadata["runner"] == "claude_code"
    assert message.response_metadata["finish_reason"] == "stop"
    (invocation,) = claude.invocations()
    assert invocation["argv"][invocation["argv"].index("--model") + 1] == "haiku"
    assert prompt_in(invocation["stdin"]) == "Say hello"


def test_stream_yields_the_deltas_and_usage_last(claude: FakeRun) -> None:
    chunks = list(ChatLlmrun(runner="claude").stream([SystemMessage("Be brief"), HumanMessage("Say hello")]))
    texts = [chunk.content for chunk in chunks if chunk.content]
    assert texts == ["Hello ", "from ", "mock"]
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata["output_tokens"] == 7
    assert [chunk for chunk in chunks[:-1] if chunk.usage_metadata] == []
    (invocation,) = claude.invocations()
    assert "Be brief" in invocation["argv"][invocation["argv"].index("--system-prompt") + 1]


async def test_ainvoke_and_astream(claude: FakeRun) -> None:
    model = ChatLlmrun(runner="claude_code")
    message = await model.ainvoke("Say hello")
    assert message.content == "Hello from mock"
    chunks = [chunk async for chunk in model.astream("Say hello")]
    assert [chunk.content for chunk in chunks if chunk.content] == ["Hello ", "from ", "mock"]
    assert joined(chunks).usage_metadata is not None
    assert len(claude.invocations()) == 2


class Person(BaseModel):
    name: str


def test_structured_output_passes_the_schema_and_returns_the_pydantic_object(claude: FakeRun) -> None:
    claude.scenario("mock-json-schema-stream")
    person = ChatLlmrun(runner="claude_code").with_structured_output(Person).invoke("Give a name")
    assert person == Person(name="mock-name")
    (invocation,) = claude.invocations()
    schema = json.loads(invocation["argv"][invocation["argv"].index("--json-schema") + 1])
    assert schema["properties"] == {"name": {"type": "string"}} and schema["required"] == ["name"]


def test_structured_output_with_the_raw_message(claude: FakeRun) -> None:
    claude.scenario("mock-json-schema-stream")
    result = ChatLlmrun(runner="claude_code").with_structured_output(Person, include_raw=True).invoke("Give a name")
    assert isinstance(result, dict)
    assert result["parsed"] == Person(name="mock-name") and result["parsing_error"] is None
    assert json.loads(result["raw"].content) == {"name": "mock-name"}


def test_a_runner_error_reaches_the_caller_as_llmruns(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    with pytest.raises(llmrun.AuthenticationError, match="Invalid API key") as caught:
        ChatLlmrun(runner="claude_code").invoke("Say hello")
    assert caught.value.runner == "claude_code"
    with pytest.raises(llmrun.AuthenticationError):
        list(ChatLlmrun(runner="claude_code").stream("Say hello"))


def test_an_unknown_runner_fails_where_the_model_is_made() -> None:
    with pytest.raises(llmrun.RunnerNotFound):
        ChatLlmrun(runner="no-such-tool")


# --- tools, parameters and history, through a scripted runner ------------------------------


def test_bound_tool_comes_back_as_a_tool_call() -> None:
    runner = ScriptedRunner(WEATHER_CALL)
    message = ChatLlmrun(runner=runner).bind_tools([get_weather]).invoke("Weather in Paris?")
    assert isinstance(message, AIMessage)
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    # The runner got the tool in its system prompt (emulated), not as a client tool.
    (request,) = runner.requests
    assert request.tools is None and '"get_weather"' in (request.system or "")


async def test_streamed_tool_call_is_numbered_and_merges() -> None:
    runner = ScriptedRunner(WEATHER_CALL)
    model = ChatLlmrun(runner=runner).bind_tools([get_weather], tool_choice="get_weather")
    chunks = [as_chunk(chunk) async for chunk in model.astream("Weather in Paris?")]
    call_chunks = [c for chunk in chunks for c in chunk.tool_call_chunks]
    assert [(c["index"], c["name"], json.loads(c["args"] or "")) for c in call_chunks] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    whole = joined(chunks)
    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert 'you must call the tool "get_weather"' in (runner.requests[0].system or "")


def test_two_streamed_tool_calls_stay_apart() -> None:
    model = ChatLlmrun(runner=ScriptedRunner(WEATHER_CALL + TIME_CALL)).bind_tools([get_weather, get_time])
    chunks = [as_chunk(chunk) for chunk in model.stream("Weather and time?")]
    assert [(c["index"], c["name"]) for chunk in chunks for c in chunk.tool_call_chunks] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    assert [(call["name"], call["args"]) for call in joined(chunks).tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]


def test_structured_output_by_function_calling_for_runners_without_a_schema_option() -> None:
    runner = ScriptedRunner('<tool_call>{"name": "Person", "arguments": {"name": "Ada"}}</tool_call>')
    person = ChatLlmrun(runner=runner).with_structured_output(Person, method="function_calling").invoke("A name?")
    assert person == Person(name="Ada")
    (request,) = runner.requests
    assert request.json_schema is None and "must call at least one tool" in (request.system or "")


def test_sampling_fields_and_stop_reach_the_request() -> None:
    runner = ScriptedRunner("Hello there")
    model = ChatLlmrun(runner=runner, model="m", temperature=0.3, max_tokens=50, seed=7, timeout=30.0)
    assert model.invoke("hi", stop=["END"], top_p=0.9).content == "Hello there"
    (request,) = runner.requests
    assert (request.model, request.temperature, request.max_tokens, request.seed) == ("m", 0.3, 50, 7)
    assert (request.stop, request.top_p, request.timeout, request.allow_tools) == (["END"], 0.9, 30.0, False)


def test_the_models_own_stop_applies_unless_the_call_gives_one() -> None:
    runner = ScriptedRunner("Hello there")
    model = ChatLlmrun(runner=runner, stop=["STOP"], temperature=0.0)
    list(model.stream("hi"))
    model.bind(temperature=1.0).invoke("hi", stop=["END"])
    assert [(r.stop, r.temperature) for r in runner.requests] == [(["STOP"], 0.0), (["END"], 1.0)]


def test_an_unknown_argument_is_refused_not_dropped() -> None:
    runner = ScriptedRunner("Hello")
    with pytest.raises(llmrun.UnsupportedFeature, match="logprobs"):
        ChatLlmrun(runner=runner).invoke("hi", logprobs=True)
    assert runner.requests == []


def test_history_with_a_tool_call_and_its_result_maps_to_llmrun_messages() -> None:
    runner = ScriptedRunner("It is sunny.")
    history = [
        SystemMessage("Be brief"),
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
        ToolMessage("sunny", tool_call_id="call_1"),
    ]
    assert ChatLlmrun(runner=runner).bind_tools([get_weather]).invoke(history).content == "It is sunny."
    messages = runner.requests[0].messages
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    (call,) = messages[2].tool_calls or []
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", {"city": "Paris"})
    assert (messages[3].tool_call_id, messages[3].name, messages[3].text) == ("call_1", "get_weather", "sunny")


async def test_sync_calls_work_inside_a_running_event_loop() -> None:
    runner = ScriptedRunner("Hello there")
    model = ChatLlmrun(runner=runner)
    assert model.invoke("hi").content == "Hello there"
    assert "".join(str(chunk.content) for chunk in model.stream("hi")) == "Hello there"
