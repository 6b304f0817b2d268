"""llmrun in the openai package's own types, and OpenAI-shaped requests read by one converter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmrun import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    HealthReport,
    ImagePart,
    InvalidRequest,
    Message,
    Runner,
    ToolCall,
    UnsupportedFeature,
    Usage,
    openai_format,
)
from llmrun.openai_compat import as_openai, as_openai_chunk, as_openai_chunks, from_openai_messages, openai_chunks
from llmrun.server import openai_api

WEATHER = ToolCall(id="call_weather", name="get_weather", arguments={"city": "Paris"})
TIME = ToolCall(id="call_time", name="get_time", arguments={"zone": "CET"})


class TwoToolsRunner(Runner):
    """Answers every request with a word and two tool calls, one chunk each."""

    name = "two_tools"
    display_name = "Two tools"

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        yield ChatChunk(delta="Checking.")
        yield ChatChunk(tool_call=WEATHER)
        yield ChatChunk(tool_call=TIME)
        yield ChatChunk(finish_reason="tool_calls", usage=Usage(input_tokens=5, output_tokens=3), model="m-1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def stream() -> AsyncGenerator[ChatChunk, None]:
    return TwoToolsRunner().stream(ChatRequest.of("weather and time?"))


# --- streamed tool calls ---------------------------------------------------------------------


async def test_streamed_tool_calls_are_numbered_in_order() -> None:
    chunks = [chunk async for chunk in openai_chunks(stream(), model="two_tools/m")]
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(call["index"], call["id"]) for call in calls] == [(0, "call_weather"), (1, "call_time")]
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"two_tools/m"}


async def test_openai_merges_the_numbered_calls_into_two() -> None:
    state = ChatCompletionStreamState()
    async for chunk in as_openai_chunks(stream()):
        assert isinstance(chunk, ChatCompletionChunk)
        state.handle_chunk(chunk)
    message = state.get_final_completion().choices[0].message
    assert message.content == "Checking."
    calls = message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]


def test_a_chunk_alone_takes_the_index_its_caller_gives() -> None:
    chunk = ChatChunk(tool_call=TIME)
    assert chunk.to_openai()["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunk.to_openai(tool_index=1)["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    converted = as_openai_chunk(chunk, tool_index=1)
    assert converted.choices[0].delta.tool_calls and converted.choices[0].delta.tool_calls[0].index == 1


def test_the_daemon_numbers_calls_the_same_way() -> None:
    output = openai_api.Output("two_tools/m")
    events = [output.chunk(ChatChunk(tool_call=call)) for call in (WEATHER, TIME)]
    deltas = [json.loads(event.removeprefix(b"data: "))["choices"][0]["delta"] for event in events]
    assert [d["tool_calls"][0]["index"] for d in deltas] == [0, 1]
    assert deltas[1]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"zone": "CET"}'}


# --- openai objects -------------------------------------------------------------------------


async def test_a_response_as_a_chat_completion() -> None:
    response = await TwoToolsRunner().complete(ChatRequest.of("weather and time?"))
    completion = as_openai(response)
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    assert [c.id for c in choice.message.tool_calls or []] == ["call_weather", "call_time"]
    assert completion.usage is not None and completion.usage.total_tokens == 8
    assert response.to_openai()["choices"][0]["message"]["content"] == "Checking."  # still a dict


def test_llmruns_own_finish_reasons_are_kept() -> None:
    completion = as_openai(ChatResponse(content="Half an ans", finish_reason="cancelled"))
    assert completion.choices[0].finish_reason == "cancelled"  # type: ignore[comparison-overlap]
    assert as_openai_chunk(ChatChunk(finish_reason="error")).choices[0].finish_reason == "error"  # type: ignore[comparison-overlap]


def test_without_the_openai_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai.types", None)
    with pytest.raises(ImportError, match="pip install openai"):
        as_openai(ChatResponse(content="hi"))
    assert from_openai_messages([{"role": "user", "content": "hi"}]).messages[0].text == "hi"


def test_importable_without_the_daemons_dependencies() -> None:
    code = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn', 'httpx', 'openai'): sys.modules[name] = None\n"
        "from llmrun.openai_compat import from_openai_messages, openai_chunks\n"
        "from_openai_messages([{'role': 'user', 'content': 'hi'}])\n"
        "assert 'llmrun.server' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- OpenAI-shaped requests -----------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]


def test_messages_tools_and_fields_become_a_request() -> None:
    request = from_openai_messages(
        [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        TOOLS,
        model="sonnet",
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )
    assert request.system_prompt() == "Be terse." and request.model == "sonnet"
    assistant, result = request.messages[2], request.messages[3]
    assert assistant.tool_calls == [ToolCall(id="c1", name="get_weather", arguments={"city": "Paris"})]
    assert (result.role, result.name, result.text) == ("tool", "get_weather", "sunny")
    assert request.tools and request.tools[0].parameters == SCHEMA
    assert request.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert request.json_schema == SCHEMA


async def test_a_completions_message_goes_back_into_the_history() -> None:
    completion = as_openai(await TwoToolsRunner().complete(ChatRequest.of("weather and time?")))
    request = from_openai_messages([{"role": "user", "content": "weather and time?"}, completion.choices[0].message])
    assert request.messages[1] == Message.assistant("Checking.", tool_calls=[WEATHER, TIME])


def test_images_are_taken_as_given_in_process() -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    request = from_openai_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert request.messages[0].images == [ImagePart(url=url)]


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], UnsupportedFeature),
        ([{"role": "tool", "content": "x"}], InvalidRequest),
        ([{"role": "narrator", "content": "x"}], InvalidRequest),
        ("hello", InvalidRequest),
    ],
)
def test_what_cannot_be_used_is_refused(messages: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        from_openai_messages(messages)


def test_the_daemon_reads_requests_with_the_same_converter() -> None:
    assert openai_api.function_tools is openai_format.function_tools
    parsed = openai_api.parse({"model": "r/m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})
    assert parsed.request.tools == from_openai_messages([{"role": "user", "content": "hi"}], TOOLS).tools
