"""llmrun as a LiteLLM custom provider, driven through LiteLLM's own `completion`/`acompletion`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

# LiteLLM fetches its model cost map from the network at import unless told to use its copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="LiteLLM is not installed: pip install 'llmrun-cli[litellm]'")

import llmrun  # noqa: E402
from llmrun import ChatChunk, ChatRequest, HealthReport, Runner, Usage  # noqa: E402
from llmrun.integrations import litellm as provider_module  # noqa: E402
from llmrun.integrations.litellm import PROVIDER, LlmrunProvider, chat_request, register  # noqa: E402

from .conftest import FAKE_TOOLS, ROOT, FakeRun, prompt_in  # noqa: E402

HI = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(autouse=True)
def _own_provider_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers into a provider map of its own."""
    monkeypatch.setattr(litellm, "custom_provider_map", [])


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    """The claude_code runner, found by name, pointed at the fake claude that replays captures."""
    record = tmp_path / "record"
    record.mkdir()
    fake = FakeRun(FAKE_TOOLS[0], monkeypatch, record)
    register()
    return fake


class RecordingRunner(Runner):
    """Answers "Hello" and keeps the requests it was given."""

    name = "recording"
    display_name = "Recording"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        yield ChatChunk(delta="Hello")
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=4, output_tokens=1), model="rec-1")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


class FailingRunner(RecordingRunner):
    """Raises the llmrun error it was made with, as a runner does when its tool fails."""

    name = "failing"

    def __init__(self, error: llmrun.LlmrunError) -> None:
        super().__init__()
        self.error = error

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        raise self.error
        yield ChatChunk()  # pragma: no cover - makes this an async generator


@pytest.fixture
def recording() -> RecordingRunner:
    runner = RecordingRunner()
    register(LlmrunProvider(runners={"recording": runner}))
    return runner


# --- the model string and the parameters ----------------------------------------------------


def test_the_model_string_splits_on_its_first_slash_only() -> None:
    runner, request = chat_request("opencode/openrouter/openai/gpt-5", HI, {})
    assert (runner, request.model) == ("opencode", "openrouter/openai/gpt-5")
    runner, request = chat_request("claude_code", HI, {})
    assert (runner, request.model) == ("claude_code", None)
    assert request.messages[0].text == "Say hello"


def test_litellm_parameters_become_request_fields(recording: RecordingRunner) -> None:
    schema = {"type": "object", "properties": {"greeting": {"type": "string"}}, "required": ["greeting"]}
    litellm.completion(
        model="llmrun/recording/some-model",
        messages=[{"role": "system", "content": "Be terse."}, *HI],
        temperature=0.2,
        max_tokens=50,
        top_p=0.9,
        stop="END",
        seed=7,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        response_format={"type": "json_schema", "json_schema": {"name": "greeting", "schema": schema}},
        timeout=30,
        cwd="/tmp",
    )
    (request,) = recording.requests
    assert request.model == "some-model"
    assert request.system_prompt() == "Be terse."
    assert (request.temperature, request.max_tokens, request.top_p, request.stop, request.seed) == (
        0.2,
        50,
        0.9,
        ["END"],
        7,
    )
    assert (request.frequency_penalty, request.presence_penalty) == (0.1, 0.3)
    assert request.json_schema == schema
    assert (request.timeout, request.cwd) == (30, "/tmp")


def test_a_parameter_llmrun_cannot_honour_is_refused(recording: RecordingRunner) -> None:
    with pytest.raises(litellm.UnsupportedParamsError) as caught:
        litellm.completion(model="llmrun/recording", messages=HI, logprobs=True)
    assert "logprobs" in str(caught.value)
    with pytest.raises(litellm.UnsupportedParamsError, match="n other than 1"):
        litellm.completion(model="llmrun/recording", messages=HI, n=2)
    assert recording.requests == []


def test_importing_changes_nothing_and_register_replaces() -> None:
    assert litellm.custom_provider_map == []  # the module is imported above, nothing registered yet
    first, second = register(), register()
    assert litellm.custom_provider_map == [{"provider": PROVIDER, "custom_handler": second}]
    assert first is not second and isinstance(second, provider_module.LlmrunProvider)


# --- through the claude_code runner and its fake CLI ----------------------------------------


def test_plain_completion(claude: FakeRun) -> None:
    response = litellm.completion(model="llmrun/claude_code/sonnet", messages=HI)
    assert response.choices[0].message.content == "Hello from mock"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (12, 7)
    assert response.model == "claude-opus-4-8"
    (invocation,) = claude.invocations()
    argv = invocation["argv"]
    assert argv[argv.index("--model") + 1] == "sonnet" and prompt_in(invocation["stdin"]) == "Say hello"


def test_sync_streaming(claude: FakeRun) -> None:
    chunks = list(
        litellm.completion(
            model="llmrun/claude_code/sonnet", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # deltas, not one piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 7)


async def test_async_completion(claude: FakeRun) -> None:
    response = await litellm.acompletion(model="llmrun/claude_code", messages=HI)
    assert response.choices[0].message.content == "Hello from mock"
    assert response.usage.completion_tokens == 7


async def test_async_streaming(claude: FakeRun) -> None:
    stream = await litellm.acompletion(model="llmrun/claude_code", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_sync_call_from_inside_a_running_event_loop(claude: FakeRun) -> None:
    response = litellm.completion(model="llmrun/claude_code", messages=HI)
    assert response.choices[0].message.content == "Hello from mock"


def test_one_tool_call(claude: FakeRun) -> None:
    claude.scenario("toolcall-partial")  # the call arrives split over several text deltas
    response = litellm.completion(model="llmrun/claude_code", messages=WEATHER_QUESTION, tools=[WEATHER_TOOL])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert call.id.startswith("call_")
    assert choice.message.content == "Let me check the weather.\n"
    (invocation,) = claude.invocations()
    argv = invocation["argv"]
    assert '"name": "get_weather"' in argv[argv.index("--system-prompt") + 1]  # offered in the prompt


async def test_one_tool_call_streamed(claude: FakeRun) -> None:
    claude.scenario("toolcall-partial")
    stream = await litellm.acompletion(
        model="llmrun/claude_code", messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    message = litellm.stream_chunk_builder(chunks, messages=WEATHER_QUESTION).choices[0].message
    assert [call.function.name for call in message.tool_calls] == ["get_weather"]


# --- errors ---------------------------------------------------------------------------------


def test_an_authentication_failure_is_litellms_authentication_error(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    with pytest.raises(litellm.AuthenticationError) as caught:
        litellm.completion(model="llmrun/claude_code", messages=HI)
    assert "Invalid API key" in str(caught.value)
    assert isinstance(caught.value.__cause__, llmrun.AuthenticationError)
    assert caught.value.llm_provider == "llmrun"


async def test_an_authentication_failure_in_a_stream(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    stream = await litellm.acompletion(model="llmrun/claude_code", messages=HI, stream=True)
    with pytest.raises(litellm.AuthenticationError, match="Invalid API key"):
        async for _ in stream:
            pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (llmrun.RateLimitError("usage limit reached, try at 5pm", runner="failing"), "RateLimitError"),
        (llmrun.RunnerTimeout("no output for 30 s", runner="failing"), "Timeout"),
        (llmrun.ModelNotFound("no model 'opus-9'", runner="failing"), "NotFoundError"),
        (llmrun.ContextLengthExceeded("prompt is too long", runner="failing"), "ContextWindowExceededError"),
        (llmrun.ServiceUnavailable("API returned 529", runner="failing"), "ServiceUnavailableError"),
        (llmrun.ProcessFailed("killed by signal 9", runner="failing"), "APIError"),
    ],
)
def test_llmrun_errors_become_litellm_types_with_their_message(error: llmrun.LlmrunError, expected: str) -> None:
    register(LlmrunProvider(runners={"failing": FailingRunner(error)}))
    with pytest.raises(getattr(litellm, expected)) as caught:
        litellm.completion(model="llmrun/failing", messages=HI, num_retries=0)
    assert error.message in str(caught.value)
    assert caught.value.__cause__ is error


def test_a_retryable_error_in_a_stream_keeps_its_type() -> None:
    error = llmrun.RateLimitError("usage limit reached", runner="failing")
    register(LlmrunProvider(runners={"failing": FailingRunner(error)}))
    # Newer LiteLLM wraps a stream's retryable errors (so that a Router can fall back to another
    # model) in MidStreamFallbackError, a ServiceUnavailableError, and keeps ours inside it.
    with pytest.raises((litellm.RateLimitError, litellm.ServiceUnavailableError)) as caught:
        list(litellm.completion(model="llmrun/failing", messages=HI, stream=True))
    raised = getattr(caught.value, "original_exception", None) or caught.value
    assert isinstance(raised, litellm.RateLimitError)
    assert "usage limit reached" in str(caught.value)


def test_an_unknown_runner_is_not_found() -> None:
    register()
    with pytest.raises(litellm.NotFoundError, match="unknown runner 'no_such_tool'"):
        litellm.completion(model="llmrun/no_such_tool/model", messages=HI)


def test_without_litellm_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['litellm'] = None\n"
        "try:\n    import llmrun.integrations.litellm\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert "pip install 'llmrun-cli[litellm]'" in result.stdout
