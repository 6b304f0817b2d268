"""llmrun as a spoon-ai provider (llmrun.integrations.spoon), driven through spoon-ai's own types.

spoon-ai-sdk declares Python >= 3.12 since 0.3.3 (0.3.2 needs neo-mamba, which does too), and on
3.11 pip falls back to 0.2.1, whose provider interface is an older one: these tests need 0.3.2
or later and skip otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "spoon_ai",
    minversion="0.3.2",
    reason="spoon-ai-sdk >= 0.3.2 is not installed (it declares Python >= 3.12; pip install 'llmrun-cli[spoon]'); "
    "tests/test_integration_spoon_venv.py runs these tests in a virtualenv that has it",
)

from spoon_ai.callbacks import AsyncCallbackHandler, BaseCallbackHandler  # type: ignore[import-not-found,import-untyped,unused-ignore]
from spoon_ai.chat import ChatBot  # type: ignore[import-not-found,import-untyped,unused-ignore]
from spoon_ai.llm import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
    AuthenticationError,
    ConfigurationError,
    LLMResponse,
    ProviderCapability,
    ProviderError,
)
from spoon_ai.schema import Function, LLMResponseChunk, Message, ToolCall, ToolChoice  # type: ignore[import-not-found,import-untyped,unused-ignore]

import llmrun
from llmrun import ChatChunk, ChatRequest, HealthReport, Runner, Usage
from llmrun.integrations.spoon import LlmrunProvider, register
from llmrun.types import HealthStatus

from .conftest import FAKE_TOOLS, FakeRun, prompt_in

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    """The claude_code runner against the fake claude, which replays a captured run."""
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(FAKE_TOOLS[0], monkeypatch, record)


async def provider_for(model: str = "claude_code/sonnet", **config: Any) -> LlmrunProvider:
    provider = LlmrunProvider()
    await provider.initialize({"model": model, **config})
    return provider


def ask(text: str = "Say hello") -> list[Message]:
    return [Message(role="system", content="Be brief."), Message(role="user", content=text)]


class RecordingRunner(Runner):
    """Answers "ok" and keeps every request it was given."""

    name = "recording"
    display_name = "Recording"
    default_model = "rec-1"

    def __init__(self, status: HealthStatus = "ok") -> None:
        self.requests: list[ChatRequest] = []
        self.status = status

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        yield ChatChunk(delta="ok", thinking="hm")
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=2, output_tokens=1))

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status=self.status)


# --- plain calls ---------------------------------------------------------------------------


async def test_chat_answers_through_the_runner(claude: FakeRun) -> None:
    provider = await provider_for()
    response = await provider.chat(ask())
    assert isinstance(response, LLMResponse)
    assert (response.content, response.provider, response.finish_reason) == ("Hello from mock", "llmrun", "stop")
    assert response.tool_calls == []
    assert response.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert response.metadata["runner"] == "claude_code" and response.metadata["session_id"]
    (invocation,) = claude.invocations()
    argv = invocation["argv"]
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert argv[argv.index("--system-prompt") + 1] == "Be brief."
    assert prompt_in(invocation["stdin"]) == "Say hello"


async def test_completion_sends_the_prompt_as_the_user_turn(claude: FakeRun) -> None:
    provider = LlmrunProvider(claude.runner())  # a runner given directly needs no initialize()
    response = await provider.completion("Complete this")
    assert response.content == "Hello from mock"
    (invocation,) = claude.invocations()
    # No model named: the tool's own default applies, so none is put on its command line.
    assert prompt_in(invocation["stdin"]) == "Complete this" and "--model" not in invocation["argv"]


async def test_keyword_arguments_and_defaults_become_the_request() -> None:
    runner = RecordingRunner()
    provider = LlmrunProvider(runner)
    await provider.initialize(
        {"runner": runner, "model": "m-2", "temperature": 0.3, "max_tokens": 50, "extra_params": {"cwd": "/tmp"}}
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await provider.chat(
        [Message(role="user", content="hi")],
        max_tokens=20,
        top_p=0.5,
        stop="END",
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        output_queue=None,  # None means not asked, as spoon's ChatBot passes it
    )
    (request,) = runner.requests
    assert (request.model, request.temperature, request.max_tokens, request.top_p) == ("m-2", 0.3, 20, 0.5)
    assert (request.stop, request.seed, request.cwd, request.json_schema) == (["END"], 7, "/tmp", schema)


async def test_history_with_a_tool_result_reaches_the_runner() -> None:
    runner = RecordingRunner()
    call = ToolCall(id="call_1", function=Function.create("get_weather", {"city": "Paris"}))
    messages = [
        Message(role="user", content="The weather in Paris?"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="18 degrees", tool_call_id="call_1", name="get_weather"),
    ]
    await LlmrunProvider(runner).chat(messages)
    (request,) = runner.requests
    user, assistant, tool = request.messages
    assert (user.role, user.text) == ("user", "The weather in Paris?")
    assert assistant.tool_calls and [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
    assert (tool.role, tool.text, tool.tool_call_id) == ("tool", "18 degrees", "call_1")


multimodal = pytest.mark.skipif(
    not hasattr(Message, "create_with_pdf"), reason="this spoon-ai's messages hold text only (images came after 0.3.2)"
)


@multimodal
async def test_a_base64_image_reaches_the_runner_as_a_data_url() -> None:
    runner = RecordingRunner()
    message = Message.create_with_base64_image("user", "What is this?", "aGVsbG8=", media_type="image/png")
    await LlmrunProvider(runner).chat([message])
    (request,) = runner.requests
    assert request.messages[0].text == "What is this?"
    assert [image.url for image in request.messages[0].images] == ["data:image/png;base64,aGVsbG8="]


@multimodal
async def test_a_document_is_refused_not_dropped() -> None:
    runner = RecordingRunner()
    message = Message.create_with_pdf("user", "Summarise", "JVBERi0=")
    with pytest.raises(ProviderError, match="document"):
        await LlmrunProvider(runner).chat([message])
    assert runner.requests == []


# --- streaming -----------------------------------------------------------------------------


class Recorder(BaseCallbackHandler):  # type: ignore[misc]  # spoon-ai ships no type information
    """spoon's plain (synchronous) callback handler, noting what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_llm_start(self, run_id: Any, messages: list[Message], **kwargs: Any) -> None:
        self.events.append(("start", [m.content for m in messages]))

    def on_llm_new_token(self, token: str, *, chunk: Any = None, run_id: Any = None, **kwargs: Any) -> None:
        self.events.append(("token", (token, chunk.content)))

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.events.append(("end", (response.content, response.finish_reason)))

    def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        self.events.append(("error", error))


class AsyncRecorder(AsyncCallbackHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ended = asyncio.Event()

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ended.set()


async def test_chat_stream_yields_spoon_chunks_and_tells_the_callbacks(claude: FakeRun) -> None:
    provider = await provider_for()
    recorder, async_recorder = Recorder(), AsyncRecorder()
    chunks = [chunk async for chunk in provider.chat_stream(ask(), callbacks=[recorder, async_recorder])]
    assert all(isinstance(chunk, LLMResponseChunk) for chunk in chunks)
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    last = chunks[-1]
    assert (last.content, last.finish_reason, last.provider) == ("Hello from mock", "stop", "llmrun")
    assert last.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert recorder.events == [
        ("start", ["Be brief.", "Say hello"]),
        ("token", ("Hello ", "Hello ")),
        ("token", ("from ", "Hello from ")),
        ("token", ("mock", "Hello from mock")),
        ("end", ("Hello from mock", "stop")),
    ]
    assert async_recorder.tokens == ["Hello ", "from ", "mock"] and async_recorder.ended.is_set()


async def test_thinking_rides_in_the_metadata() -> None:
    provider = LlmrunProvider(RecordingRunner())
    chunks = [chunk async for chunk in provider.chat_stream([Message(role="user", content="hi")])]
    assert chunks[0].metadata["reasoning"] == "hm" and chunks[0].delta == "ok"
    response = await provider.chat([Message(role="user", content="hi")])
    assert response.metadata["reasoning"] == "hm"


# --- one tool call -------------------------------------------------------------------------


async def test_chat_with_tools_returns_the_models_call(claude: FakeRun) -> None:
    claude.scenario("toolcall-partial")  # the call arrives split over several text deltas
    provider = await provider_for()
    response = await provider.chat_with_tools(
        ask("What is the weather in Paris?"), tools=[WEATHER_TOOL], tool_choice=ToolChoice.AUTO
    )
    (call,) = response.tool_calls
    assert isinstance(call, ToolCall) and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.get_arguments_dict() == {"city": "Paris", "unit": "celsius"}
    assert response.finish_reason == "tool_calls"
    assert response.content == "Let me check the weather.\n"
    (invocation,) = claude.invocations()
    system = invocation["argv"][invocation["argv"].index("--system-prompt") + 1]
    assert system.startswith("Be brief.") and '"name": "get_weather"' in system


async def test_a_streamed_tool_call_and_the_agents_output_queue(claude: FakeRun) -> None:
    claude.scenario("toolcall-partial")
    provider = await provider_for()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    chunks = [c async for c in provider.chat_stream(ask(), tools=[WEATHER_TOOL], output_queue=queue)]
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.get_arguments_dict()) for c in last.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert "".join(c.delta for c in chunks) == "Let me check the weather.\n"  # no tag leaks into the text
    events = [queue.get_nowait() for _ in range(queue.qsize())]
    assert "".join(event["content"] for event in events) == "Let me check the weather.\n"


# --- errors --------------------------------------------------------------------------------


async def test_a_failed_run_is_spoons_error_with_llmruns_as_its_cause(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    provider = await provider_for()
    with pytest.raises(AuthenticationError) as caught:
        await provider.chat(ask())
    assert isinstance(caught.value.original_error, llmrun.AuthenticationError)
    assert caught.value.__cause__ is caught.value.original_error
    message = caught.value.context["message"]  # spoon words its own; llmrun's, with the hint, is here
    assert message.startswith(str(caught.value.original_error)) and "claude auth login" in message

    recorder = Recorder()
    with pytest.raises(AuthenticationError):
        async for _ in provider.chat_stream(ask(), callbacks=[recorder]):
            pass
    assert [kind for kind, _ in recorder.events] == ["start", "error"]
    assert isinstance(recorder.events[-1][1], AuthenticationError)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"logit_bias": {"1": 2}}, "parameters llmrun cannot honour: logit_bias"),
        ({"thinking": True}, "thinking"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ],
)
async def test_what_cannot_be_honoured_is_refused_not_dropped(kwargs: dict[str, Any], words: str) -> None:
    runner = RecordingRunner()
    with pytest.raises(ProviderError) as caught:
        await LlmrunProvider(runner).chat([Message(role="user", content="hi")], **kwargs)
    assert isinstance(caught.value.original_error, llmrun.UnsupportedFeature)
    assert words in str(caught.value)
    assert runner.requests == []


async def test_configuration_problems_are_spoons_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="name a runner"):
        await LlmrunProvider().initialize({"model": ""})
    with pytest.raises(ConfigurationError, match="no_such_tool"):
        await LlmrunProvider().initialize({"model": "no_such_tool/x"})
    with pytest.raises(ConfigurationError, match="base_url"):
        await LlmrunProvider().initialize({"model": "claude_code", "base_url": "https://api.example.com"})
    with pytest.raises(ProviderError, match="not initialized"):
        await LlmrunProvider().chat([Message(role="user", content="hi")])


# --- metadata, health, spoon's manager -----------------------------------------------------


async def test_metadata_and_health_come_from_the_runner(claude: FakeRun) -> None:
    provider = await provider_for(max_tokens=1000)
    metadata = provider.get_metadata()
    assert (metadata.name, metadata.version, metadata.max_tokens) == ("llmrun/claude_code", llmrun.__version__, 1000)
    assert ProviderCapability.STREAMING in metadata.capabilities and ProviderCapability.TOOLS in metadata.capabilities
    assert ProviderCapability.VISION in metadata.capabilities  # claude_code takes images
    assert metadata.supports_system_messages is True
    assert await provider.health_check() is True
    assert await LlmrunProvider(RecordingRunner(status="unauthenticated")).health_check() is False
    assert await LlmrunProvider().health_check() is False  # not initialized


async def test_cleanup_closes_only_a_runner_it_made(claude: FakeRun) -> None:
    mine = RecordingRunner()
    given = LlmrunProvider(mine)
    await given.cleanup()
    assert given.runner is mine
    named = await provider_for()
    await named.cleanup()
    assert named.runner is None


async def test_spoons_chatbot_reaches_the_runner_once_registered(claude: FakeRun) -> None:
    register()
    bot = ChatBot(llm_provider="llmrun", model_name="claude_code/sonnet", api_key="unused")
    assert await bot.ask([{"role": "user", "content": "Say hello"}]) == "Hello from mock"
    chunks = [chunk async for chunk in bot.astream([{"role": "user", "content": "Say hello"}])]
    assert "".join(chunk.delta for chunk in chunks) == "Hello from mock" and chunks[-1].finish_reason == "stop"

    claude.scenario("toolcall-partial")  # the call spoon's agents make to choose a tool
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    response = await bot.ask_tool(question, tools=[WEATHER_TOOL], tool_choice=ToolChoice.AUTO, output_queue=queue)
    assert [(c.function.name, c.function.get_arguments_dict()) for c in response.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert response.metadata["streamed_content"] is True and queue.qsize() > 0
    argv = claude.invocations()[-1]["argv"]
    assert argv[argv.index("--model") + 1] == "sonnet"
