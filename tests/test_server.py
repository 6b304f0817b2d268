"""The daemon through the official OpenAI and Anthropic SDKs, against the claude fake.

Each test starts the real app under uvicorn on 127.0.0.1 (a random port) and talks to it
with the SDK as any client would: answers, streams, usage, thinking, errors and their
exception types, model naming, the listing and health endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from .conftest import FakeRun, prompt_in
from .server_support import LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello from mock"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def server(claude: FakeRun, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(settings(tmp_path, aliases={"fast": "claude_code/haiku"})) as live:
        yield live


@pytest.fixture
def oai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=20)


@pytest.fixture
def claude_sdk(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0, timeout=20)


def argv_of_last_run(claude: FakeRun) -> list[str]:
    runs = [inv for inv in claude.invocations() if "--output-format" in inv["argv"]]
    assert runs, "the fake was not run"
    return list(runs[-1]["argv"])


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# --- OpenAI -------------------------------------------------------------------------------


def test_openai_completion(oai: openai.OpenAI, claude: FakeRun) -> None:
    done = oai.chat.completions.create(
        model="claude_code/opus",
        messages=[{"role": "system", "content": "Be terse"}, {"role": "user", "content": "hi"}],
    )

    assert done.choices[0].message.content == TEXT
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"
    assert done.model == "claude_code/opus"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (12, 7, 19)
    argv = argv_of_last_run(claude)
    assert flag(argv, "--model") == "opus"  # the requested model is the one the tool is asked for
    assert flag(argv, "--system-prompt") == "Be terse"
    assert flag(argv, "--tools") == ""  # the tool's own agent tools stay off


def test_openai_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="claude_code/sonnet",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3 and "".join(deltas) == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 7)
    assert len({c.id for c in chunks}) == 1


def test_openai_stream_without_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], stream=True)
    )

    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_reasoning_content(oai: openai.OpenAI, claude: FakeRun) -> None:
    claude.scenario("thinking-partial")
    chunks = list(
        oai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert reasoning == "The user greets me. A short friendly reply is enough."
    assert text == "Hello after thinking"
    done = oai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert getattr(done.choices[0].message, "reasoning_content", None) == reasoning


def test_model_naming(oai: openai.OpenAI, claude: FakeRun) -> None:
    for model, expected in [
        ("claude_code:haiku", "haiku"),
        ("claude/opus", "opus"),  # a runner alias
        ("fast", "haiku"),  # an alias from [server.aliases]
        ("claude_code", None),  # a bare runner: no --model, the tool's own choice
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),  # a model id one runner knows
    ]:
        done = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert done.model == model
        assert flag(argv_of_last_run(claude), "--model") == expected, model


def test_history_without_a_conversation_id_is_sent_as_history(oai: openai.OpenAI, claude: FakeRun) -> None:
    oai.chat.completions.create(
        model="claude",
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    )

    run = claude.invocations()[-1]
    assert "--resume" not in run["argv"]
    assert "first answer" in prompt_in(run["stdin"]) and prompt_in(run["stdin"]).rstrip().endswith("second question")


# --- Anthropic ----------------------------------------------------------------------------


def test_anthropic_message(claude_sdk: anthropic.Anthropic, claude: FakeRun) -> None:
    message = claude_sdk.messages.create(
        model="claude_code/haiku",
        max_tokens=100,
        system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )

    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == TEXT
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 7)
    assert message.model == "claude_code/haiku"
    argv = argv_of_last_run(claude)
    assert flag(argv, "--model") == "haiku"
    assert flag(argv, "--system-prompt") == "Rule one.\n\nRule two."


def test_anthropic_stream_events(claude_sdk: anthropic.Anthropic) -> None:
    events = list(
        claude_sdk.messages.create(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    kinds = [e.type for e in events]

    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == TEXT
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 7


def test_anthropic_stream_helper_with_thinking(claude_sdk: anthropic.Anthropic, claude: FakeRun) -> None:
    claude.scenario("thinking-partial")
    with claude_sdk.messages.stream(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "Hello after thinking"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "The user greets me. A short friendly reply is enough."
    assert final.usage.output_tokens == 42 and final.usage.input_tokens == 12
    assert final.usage.cache_creation_input_tokens == 3


def test_anthropic_tool_results_reach_the_tool_as_history(claude_sdk: anthropic.Anthropic, claude: FakeRun) -> None:
    claude_sdk.messages.create(
        model="claude",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "what is the weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C"}],
            },
        ],
    )

    stdin = claude.invocations()[-1]["stdin"]
    assert "Paris" in stdin and "sunny, 21 C" in stdin and "weather" in stdin


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_404_in_both_dialects(oai: openai.OpenAI, claude_sdk: anthropic.Anthropic) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="nosuchrunner/x", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"

    with pytest.raises(anthropic.NotFoundError) as caught_a:
        claude_sdk.messages.create(model="nosuchmodel", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    body = caught_a.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_errors_keep_their_status(oai: openai.OpenAI, claude: FakeRun, stream: bool) -> None:
    # The tool fails before its first chunk, so even a stream gets the HTTP status.
    claude.scenario("mock-401-stream")
    with pytest.raises(openai.AuthenticationError) as caught:
        result = oai.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            list(result)
    assert caught.value.status_code == 401


def test_anthropic_errors_map_to_sdk_types(claude_sdk: anthropic.Anthropic, claude: FakeRun) -> None:
    claude.scenario("mock-529-stream-partial-retries2")
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude_sdk.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"


def test_error_after_the_stream_started_is_an_error_event(
    oai: openai.OpenAI, claude_sdk: anthropic.Anthropic, claude: FakeRun
) -> None:
    claude.fault("stop_after=5")  # the first delta, then the tool dies
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oai.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Hello "
    assert "exit" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"

    text = []
    with pytest.raises(anthropic.APIStatusError) as caught_a:
        for event in claude_sdk.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            if event.type == "content_block_delta":
                text.append(event.delta.text)
    assert text == ["Hello "]
    assert isinstance(caught_a.value.body, dict) and caught_a.value.body["type"] == "error"


def test_raw_error_stream_ends_without_done(server: LiveServer, claude: FakeRun) -> None:
    claude.fault("stop_after=5")
    body = {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert "error" in json.loads(events[-1][6:])
    assert "data: [DONE]" not in events


def test_bad_requests_are_400(server: LiveServer, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="claude", messages=[])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="claude", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], n=2)
    json_type = {"content-type": "application/json"}
    bad = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers=json_type, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{server.url}/v1/nothing-here", json={}, timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(f"{server.url}/v1/messages", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"


# --- tools --------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_tools_rejected_on_request(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, tools="reject")) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=20)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="claude", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
            )
    assert "tools" in caught.value.message
    assert claude.invocations() == []  # refused before any tool ran


@pytest.fixture
def scripted_server(tmp_path: Path) -> Iterator[tuple[LiveServer, ScriptedRunner]]:
    pytest.importorskip("llmrun.tool_emulation", reason="tool emulation (llmrun/tool_emulation.py) is not there yet")

    def answer(request):
        if request.conversation()[-1].role == "tool":
            return f"It is {request.conversation()[-1].text}."
        return f"Let me check. {CALL}"

    runner = ScriptedRunner(answer)
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        yield live, runner


def test_openai_tool_calls_are_emulated(scripted_server: tuple[LiveServer, ScriptedRunner]) -> None:
    live, runner = scripted_server
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=20)
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]

    done = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    assert done.choices[0].finish_reason == "tool_calls"
    (call,) = done.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert "get_weather" in (runner.requests[-1].system or "")  # the catalog reached the runner
    assert runner.requests[-1].tools is None

    chunks = list(
        client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL], stream=True)
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    messages += [
        done.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    after = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    assert after.choices[0].message.content == "It is sunny." and after.choices[0].finish_reason == "stop"
    # The history sent back holds the call as the client got it: the tool's session goes on.
    assert runner.requests[-1].session_id == "scripted-session-2"  # the streamed answer's session


def test_anthropic_tool_use_is_emulated(scripted_server: tuple[LiveServer, ScriptedRunner]) -> None:
    live, runner = scripted_server
    client = anthropic.Anthropic(base_url=live.url, api_key="k", max_retries=0, timeout=20)
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    with client.messages.stream(
        model="scripted", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    use = final.content[1]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    plain = client.messages.create(
        model="scripted",
        max_tokens=100,
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}]},
        ],
    )
    assert plain.stop_reason == "end_turn" and plain.content[0].text == "It is rainy."
    assert runner.requests[-1].session_id == "scripted-session-1"  # the history sent back matched the stream's


# --- listing and health -------------------------------------------------------------------


def test_models_in_both_shapes(oai: openai.OpenAI, claude_sdk: anthropic.Anthropic) -> None:
    ids = [m.id for m in oai.models.list()]
    assert "claude_code/claude-sonnet-5" in ids and "claude_code/claude-haiku-4-5-20251001" in ids
    assert "fast" in ids
    assert all("/" in i for i in ids if i != "fast")
    listed = [m.id for m in claude_sdk.models.list()]
    assert listed == ids
    assert oai.models.retrieve("claude_code/claude-sonnet-5").owned_by == "claude_code"


def test_health_ready_and_runners(server: LiveServer, claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.registry import runner_names

    for name in runner_names():  # other real tools on this machine would only slow the checks
        if name != "claude_code":
            monkeypatch.setenv(f"LLMRUN_{name.upper()}_BIN", "/nonexistent/tool")
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    ready = httpx.get(f"{server.url}/health/ready", timeout=20)
    assert ready.status_code == 200
    body = ready.json()
    assert "claude_code" in body["usable"] and body["runners"]["claude_code"]["status"] == "ok"
    checks = len(claude.invocations())
    assert httpx.get(f"{server.url}/health/ready", timeout=20).status_code == 200
    assert len(claude.invocations()) == checks  # answered from the cache

    runners = httpx.get(f"{server.url}/v1/runners", timeout=10).json()
    claude_meta = next(r for r in runners["data"] if r["name"] == "claude_code")
    assert claude_meta["installed"] is True and claude_meta["capabilities"]["sessions"] is True
    assert runners["limits"]["max_per_runner"] == server.settings.max_per_runner

    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert {"/v1/chat/completions", "/v1/messages", "/v1/models", "/health/ready"} <= set(spec["paths"])


def test_not_ready_is_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.registry import runner_names

    for name in runner_names():
        monkeypatch.setenv(f"LLMRUN_{name.upper()}_BIN", str(tmp_path / "absent"))
    with LiveServer(settings(tmp_path)) as live:
        ready = httpx.get(f"{live.url}/health/ready", timeout=20)
        models = httpx.get(f"{live.url}/v1/models", timeout=20)
    assert ready.status_code == 503 and ready.json()["usable"] == []
    assert ready.json()["runners"]["claude_code"]["status"] == "not_installed"
    assert models.json()["data"] == []
