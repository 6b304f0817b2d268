"""Client tools emulated in the prompt: the convention, parsing, validation, retry, streaming."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import pytest

from llmrun import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    HealthReport,
    InvalidRequest,
    Message,
    Runner,
    ToolCall,
    ToolSpec,
    Usage,
    chat_with_tools,
    stream_with_tools,
)
from llmrun.prompting import flatten_conversation, new_turns
from llmrun.runners.claude_code import ClaudeCodeRunner
from llmrun.tool_emulation import parse_answer, plan_tools, validate_json

from .conftest import FAKE_TOOLS, FakeRun, prompt_in

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
SEARCH = ToolSpec(
    name="search",
    description="Search the web",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
TOOLS = [WEATHER, SEARCH]
CALL_ID = re.compile(r"^call_[0-9a-f]{8,}$")


def block(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


class Scripted(Runner):
    """A runner that answers from a script and records what it was asked, and when it yielded."""

    name = "scripted"
    display_name = "Scripted"

    def __init__(self, *answers: str | list[str], session: str | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []
        self.events: list[str] = []
        self.session = session

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        assert not request.tools, "a runner must never see client tools"
        self.requests.append(request)
        answer = self.answers.pop(0)
        for delta in [answer] if isinstance(answer, str) else answer:
            self.events.append(f"sent {delta!r}")
            yield ChatChunk(delta=delta)
        self.events.append("done")
        yield ChatChunk(
            finish_reason="stop",
            usage=Usage(input_tokens=100, output_tokens=10),
            cost_usd=0.5,
            session_id=self.session,
            model="scripted-1",
        )

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def ask(prompt: str = "What is the weather in Paris?", **fields: Any) -> ChatRequest:
    fields.setdefault("tools", TOOLS)
    return ChatRequest.of(prompt, **fields)


async def collect(runner: Runner, request: ChatRequest) -> list[ChatChunk]:
    async with aclosing(stream_with_tools(runner, request)) as stream:
        return [chunk async for chunk in stream]


def without_ids(response: ChatResponse) -> dict[str, Any]:
    return response.model_dump(exclude={"duration_ms", "tool_calls"}) | {
        "tool_calls": [(c.name, c.arguments) for c in response.tool_calls]
    }


# --- what the model is told ---------------------------------------------------------------


async def test_catalog_and_convention_go_into_the_system_prompt() -> None:
    runner = Scripted("It is sunny.")
    await chat_with_tools(runner, ask(system="Be brief."))
    (sent,) = runner.requests
    assert sent.tools is None and sent.tool_choice is None
    system = sent.system_prompt() or ""
    assert system.startswith("Be brief.\n\n# Tools")  # the caller's own system prompt comes first
    for tool in TOOLS:
        line = json.dumps({"name": tool.name, "description": tool.description, "parameters": tool.parameters})
        assert line in system
    assert "<tool_call>" in system and "</tool_call>" in system and "<tool_result" in system
    assert "EITHER plain text OR tool-call blocks" in system
    assert flatten_conversation(sent.messages) == "What is the weather in Paris?"


@pytest.mark.parametrize(
    ("choice", "rule"),
    [
        (None, "Call a tool when it helps to answer"),
        ("auto", "Call a tool when it helps to answer"),
        ({"type": "auto"}, "Call a tool when it helps to answer"),
        ("required", "you must call at least one tool"),
        ("any", "you must call at least one tool"),
        ({"type": "any"}, "you must call at least one tool"),
        ({"type": "function", "function": {"name": "search"}}, 'you must call the tool "search"'),
        ({"type": "tool", "name": "search"}, 'you must call the tool "search"'),
    ],
)
async def test_tool_choice_sets_the_rule(choice: Any, rule: str) -> None:
    runner = Scripted(block("search", query="paris weather"))
    response = await chat_with_tools(runner, ask(tool_choice=choice))
    assert rule in (runner.requests[0].system or "")
    assert response.finish_reason == "tool_calls"


@pytest.mark.parametrize("choice", ["none", {"type": "none"}])
async def test_tool_choice_none_offers_no_tools(choice: Any) -> None:
    answer = "Here is how a call looks: " + block("search", query="x")
    runner = Scripted(answer)
    response = await chat_with_tools(runner, ask(tool_choice=choice, system="Be brief."))
    (sent,) = runner.requests
    assert sent.system == "Be brief." and sent.tools is None and sent.tool_choice is None
    assert response.content == answer and response.tool_calls == [] and response.finish_reason == "stop"


@pytest.mark.parametrize(
    "choice",
    ["sometimes", {"type": "function", "function": {"name": "nope"}}, {"type": "tool"}, {"name": "search"}],
)
async def test_bad_tool_choice_is_refused(choice: Any) -> None:
    runner = Scripted("unused")
    with pytest.raises(InvalidRequest):
        await chat_with_tools(runner, ask(tool_choice=choice))
    assert runner.requests == []


async def test_agent_tools_stay_as_the_caller_set_them() -> None:
    runner = Scripted("a", "b")
    await chat_with_tools(runner, ask())
    await chat_with_tools(runner, ask(allow_tools=True))
    assert [r.allow_tools for r in runner.requests] == [False, True]


# --- reading the answer -------------------------------------------------------------------


async def test_one_call_is_parsed_with_an_id() -> None:
    runner = Scripted("Let me look.\n" + block("get_weather", city="Paris", unit="celsius"))
    response = await chat_with_tools(runner, ask())
    (call,) = response.tool_calls
    assert call.name == "get_weather" and call.arguments == {"city": "Paris", "unit": "celsius"}
    assert CALL_ID.match(call.id)
    assert response.content == "Let me look.\n"
    assert response.finish_reason == "tool_calls"
    assert response.usage.input_tokens == 100 and response.cost_usd == 0.5 and response.model == "scripted-1"


async def test_several_calls_and_nothing_after_them() -> None:
    answer = block("get_weather", city="Paris") + "\n\n" + block("search", query="Paris events")
    # A model that goes on to invent the results: that part is dropped.
    answer += '\n<tool_result id="x">sunny</tool_result>\nIt is sunny.'
    response = await chat_with_tools(Scripted(answer), ask())
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("search", {"query": "Paris events"}),
    ]
    assert len({c.id for c in response.tool_calls}) == 2
    assert response.content == "" and "sunny" not in response.content


def test_blocks_are_read_leniently_where_that_is_unambiguous() -> None:
    plan = plan_tools(ask())
    assert plan is not None
    fenced = '<tool_call>\n```json\n{"name": "search", "arguments": {"query": "a </tool_call> b"}}\n```\n</tool_call>'
    unclosed = '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}'
    for text, arguments in [(fenced, {"query": "a </tool_call> b"}), (unclosed, {"query": "q"})]:
        before, calls, problems = parse_answer(text, plan)
        assert problems == [] and before == ""
        assert [(c.name, c.arguments) for c in calls] == [("search", arguments)]
    _, calls, problems = parse_answer("<tool_call>{not json}</tool_call>", plan)
    assert calls == [] and "JSON" in problems[0]


async def test_invalid_arguments_are_retried_once_with_the_error() -> None:
    bad = block("get_weather", city="Paris", unit="kelvin", wind=True)
    good = block("get_weather", city="Paris", unit="celsius")
    runner = Scripted(bad, good)
    response = await chat_with_tools(runner, ask())
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert response.finish_reason == "tool_calls"
    first, second = runner.requests
    *history, own_answer, correction = second.messages
    assert history == first.messages
    assert own_answer.role == "assistant" and own_answer.text == bad
    assert correction.role == "user"
    assert "arguments.unit: must be one of" in correction.text and "'wind'" in correction.text
    assert second.system == first.system
    # Both runs are paid for.
    assert response.usage.input_tokens == 200 and response.usage.output_tokens == 20 and response.cost_usd == 1.0


async def test_invalid_twice_is_returned_as_text() -> None:
    bad = block("get_weather", unit="celsius")
    still_bad = "Sorry.\n" + block("get_weather", city="")
    runner = Scripted(bad, still_bad)
    response = await chat_with_tools(runner, ask())
    assert len(runner.requests) == 2
    assert "required property 'city' is missing" in runner.requests[1].messages[-1].text
    assert response.tool_calls == [] and response.finish_reason == "stop"
    assert response.content == still_bad


async def test_unknown_tool_is_retried_with_the_tool_names() -> None:
    runner = Scripted(block("get_wether", city="Paris"), block("get_weather", city="Paris"))
    response = await chat_with_tools(runner, ask())
    correction = runner.requests[1].messages[-1].text
    assert 'no tool named "get_wether"' in correction and "get_weather, search" in correction
    assert [c.name for c in response.tool_calls] == ["get_weather"]


async def test_required_call_missing_is_retried_and_first_text_dropped() -> None:
    runner = Scripted("It is probably sunny.", block("search", query="Paris weather"))
    chunks = await collect(runner, ask(tool_choice="required"))
    assert "".join(c.delta for c in chunks) == ""
    assert [c.tool_call.name for c in chunks if c.tool_call] == ["search"]
    assert "must call at least one tool" in runner.requests[1].messages[-1].text


async def test_forced_tool_called_otherwise_is_retried() -> None:
    runner = Scripted(block("search", query="Paris"), block("get_weather", city="Paris"))
    response = await chat_with_tools(runner, ask(tool_choice={"type": "tool", "name": "get_weather"}))
    assert 'must call "get_weather"' in runner.requests[1].messages[-1].text
    assert [c.name for c in response.tool_calls] == ["get_weather"]


async def test_retry_of_a_resumed_session_sends_only_the_correction() -> None:
    runner = Scripted(block("nope"), block("search", query="x"), session="sess-2")
    response = await chat_with_tools(runner, ask(session_id="sess-1"))
    first, second = runner.requests
    assert first.session_id == "sess-1" and second.session_id == "sess-2"
    (correction,) = new_turns(second.messages)
    assert 'no tool named "nope"' in correction.text
    assert response.session_id == "sess-2"


# --- history ------------------------------------------------------------------------------


def history() -> list[Message]:
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
    return [
        Message.user("Weather in Paris?"),
        Message.assistant("Checking.", tool_calls=[call]),
        Message.tool("18°C, clear", tool_call_id="call_1"),
    ]


async def test_tool_calls_and_results_in_history_are_rendered_in_the_convention() -> None:
    runner = Scripted("It is 18°C and clear.")
    response = await chat_with_tools(runner, ChatRequest(messages=history(), tools=TOOLS))
    prompt = flatten_conversation(runner.requests[0].messages)
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    result = '<tool_result id="call_1" name="get_weather">\n18°C, clear\n</tool_result>'
    assert prompt.index("Weather in Paris?") < prompt.index("Checking.\n" + call) < prompt.index(result)
    assert prompt.endswith(result)
    assert response.content == "It is 18°C and clear." and response.finish_reason == "stop"


async def test_resumed_session_gets_only_the_named_results() -> None:
    runner = Scripted("It is 18°C.")
    await chat_with_tools(runner, ChatRequest(messages=history(), tools=TOOLS, session_id="s"))
    (sent,) = runner.requests
    stdin = ClaudeCodeRunner().build_invocation(sent, "claude").stdin or b""
    assert prompt_in(stdin) == '<tool_result id="call_1" name="get_weather">\n18°C, clear\n</tool_result>'


# --- streaming ----------------------------------------------------------------------------


async def test_plain_text_streams_through_unchanged_and_at_once() -> None:
    deltas = ["It ", "is <b>", "sunny", " <tool", "s are> fine."]
    runner = Scripted(deltas)
    seen: list[tuple[str, list[str]]] = []
    async with aclosing(stream_with_tools(runner, ask())) as stream:
        async for chunk in stream:
            seen.append((chunk.delta, list(runner.events)))
    texts = [d for d, _ in seen if d]
    # "<tool" could begin the tag, so it waits for the next delta; the rest is not delayed.
    assert texts == ["It ", "is <b>", "sunny", " ", "<tools are> fine."]
    for delta, events in seen[:3]:
        assert events[-1] == f"sent {delta!r}" and "done" not in events
    assert seen[-1][0] == "" and "done" in seen[-1][1]


async def test_a_tag_split_over_deltas_is_not_leaked() -> None:
    deltas = ["Sure, ", "<", "tool_", 'call>{"name": "search", "arguments": {"query": "x"}}</tool', "_call>"]
    runner = Scripted(deltas)
    chunks = await collect(runner, ask())
    assert [c.delta for c in chunks if c.delta] == ["Sure, "]
    assert [(c.tool_call.name, c.tool_call.arguments) for c in chunks if c.tool_call] == [("search", {"query": "x"})]
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage is not None


async def test_a_partial_tag_at_the_end_is_text() -> None:
    chunks = await collect(Scripted(["Use the ", "<tool"]), ask())
    assert "".join(c.delta for c in chunks) == "Use the <tool"
    assert chunks[-1].finish_reason == "stop"


async def test_text_before_a_call_is_streamed_before_the_answer_ends() -> None:
    runner = Scripted(["Let me ", "check.\n", block("get_weather", city="Oslo")])
    order: list[str] = []
    async with aclosing(stream_with_tools(runner, ask())) as stream:
        async for chunk in stream:
            if chunk.delta:
                order.append(f"text:{chunk.delta}:{'done' in runner.events}")
            if chunk.tool_call:
                order.append(f"call:{chunk.tool_call.name}:{'done' in runner.events}")
            if chunk.finish_reason:
                order.append(f"final:{chunk.finish_reason}")
    assert order == ["text:Let me :False", "text:check.\n:False", "call:get_weather:True", "final:tool_calls"]


async def test_stream_goes_on_with_the_retried_answer() -> None:
    runner = Scripted(["Checking. ", block("get_weather")], ["", block("get_weather", city="Oslo")])
    chunks = await collect(runner, ask())
    assert "".join(c.delta for c in chunks) == "Checking. "
    assert [c.tool_call.arguments for c in chunks if c.tool_call] == [{"city": "Oslo"}]
    assert [c.finish_reason for c in chunks if c.is_final] == ["tool_calls"]  # one final chunk, not two
    assert chunks[-1].usage == Usage(input_tokens=200, output_tokens=20)


@pytest.mark.parametrize(
    "answers",
    [
        (["Plain ", "answer."],),
        (["Looking.\n<tool_", 'call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'],),
        ([block("search")], [block("search", query="q")]),
        ([block("search")], ["still ", block("search", q=1)]),
    ],
    ids=["text", "call", "retry", "retry-then-text"],
)
async def test_complete_equals_the_aggregated_stream(answers: tuple[list[str], ...]) -> None:
    chunks = await collect(Scripted(*answers), ask())
    streamed = ChatResponse.from_chunks(chunks, runner="scripted")
    response = await chat_with_tools(Scripted(*answers), ask())
    assert without_ids(response) == without_ids(streamed)


# --- the JSON schema check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value", "problem"),
    [
        ({"type": "integer"}, 3, None),
        ({"type": "integer"}, 3.0, None),
        ({"type": "integer"}, 3.5, "expected integer, got number"),
        ({"type": "integer"}, True, "expected integer, got boolean"),
        ({"type": "number"}, 2, None),
        ({"type": "boolean"}, 0, "expected boolean, got integer"),
        ({"type": "null"}, None, None),
        ({"type": ["string", "null"]}, None, None),
        ({"type": ["string", "null"]}, 1, "expected string or null, got integer"),
        ({"type": "array", "items": {"type": "string"}}, ["a", 2], "x[1]: expected string"),
        ({"type": "object"}, [], "expected object, got array"),
        ({"enum": [1, 2]}, True, "must be one of 1, 2"),
        ({"type": "integer", "minimum": 1, "maximum": 5}, 0, "must be at least 1"),
        ({"type": "integer", "minimum": 1, "maximum": 5}, 6, "must be at most 5"),
        ({"type": "number", "exclusiveMinimum": 0}, 0, "must be greater than 0"),
        ({"type": "string", "minLength": 2}, "a", "at least 2 characters"),
        ({"type": "string", "maxLength": 2}, "abc", "at most 2 characters"),
        ({"type": "array", "maxItems": 1}, [1, 2], "at most 1 items"),
        ({"required": ["a"], "properties": {"a": {}}}, {}, "required property 'a' is missing"),
        ({"properties": {"a": {"type": "string"}}}, {"a": 1}, "x.a: expected string"),
        ({"properties": {"a": {}}, "additionalProperties": False}, {"b": 1}, "unexpected property 'b'"),
        ({"additionalProperties": {"type": "integer"}}, {"b": "1"}, "x.b: expected integer"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 1.5, "matches none of the allowed forms"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 1, None),
        (
            {"$defs": {"P": {"type": "object", "required": ["n"]}}, "properties": {"p": {"$ref": "#/$defs/P"}}},
            {"p": {}},
            "x.p: the required property 'n' is missing",
        ),
        ({"type": "string", "format": "uri", "description": "unchecked keywords"}, "not a uri", None),
    ],
)
def test_validate_json(schema: dict[str, Any], value: Any, problem: str | None) -> None:
    problems = validate_json(value, schema, path="x")
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# --- through a real process ---------------------------------------------------------------


async def test_end_to_end_through_the_claude_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    record = tmp_path / "record"
    record.mkdir()
    fake = FakeRun(FAKE_TOOLS[0], monkeypatch, record)
    fake.scenario("toolcall-partial")  # the call arrives split over several text deltas
    response = await chat_with_tools(fake.runner(), ask(system="Be brief."))
    (call,) = response.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris", "unit": "celsius"})
    assert CALL_ID.match(call.id)
    assert response.content == "Let me check the weather.\n"
    assert response.finish_reason == "tool_calls" and response.runner == "claude_code"
    assert response.usage.output_tokens == 7 and response.session_id
    (invocation,) = fake.invocations()
    argv = invocation["argv"]
    system = argv[argv.index("--system-prompt") + 1]
    assert system.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in system
    assert argv[argv.index("--tools") + 1] == ""  # the tool's own agent tools stay off
    assert prompt_in(invocation["stdin"]) == "What is the weather in Paris?"


async def test_a_schema_with_tools_asks_for_json_in_a_text_answer_without_enforcing_it_on_calls() -> None:
    runner = Scripted(block("get_weather", city="Paris"))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response = await chat_with_tools(runner, ask(json_schema=schema))
    assert response.tool_calls and response.tool_calls[0].name == "get_weather"
    (sent,) = runner.requests
    assert sent.json_schema is None  # a tool call is no JSON answer: the runner must not validate it as one
    assert sent.system and "When you answer in text rather than with a tool call: Reply with only a JSON" in sent.system
