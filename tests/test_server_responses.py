"""The daemon's OpenAI Responses API through the official `openai` SDK, against scripted runners.

Every body and every streamed event is also read raw and validated with the SDK's own
pydantic models (openai.types.responses), so a missing or misspelt field fails here
rather than in a client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llmrun.errors import RateLimitError
from llmrun.types import ChatChunk, ChatRequest, ImagePart, Usage

from .conftest import prompt_in
from .server_support import SESSION, LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = pytest.mark.timeout(60)

TEXT = "Hello from script"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def answer(request: ChatRequest) -> str:
    """Calls get_weather when asked about weather, reports a tool's result, else greets."""
    last = request.conversation()[-1]
    if last.role == "tool":
        return f"It is {last.text}."
    if "weather" in last.text:
        return f"Let me check. {CALL}"
    if "patch" in last.text:
        return "<tool_call>" + json.dumps({"name": "apply_patch", "arguments": {"input": PATCH}}) + "</tool_call>"
    if request.json_schema is not None:
        return '{"city": "Paris"}'
    return TEXT


class Thinking(ScriptedRunner):
    """Thinks aloud before it answers; fails after its first words when asked to."""

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        if "fail" in request.conversation()[-1].text:
            yield ChatChunk(delta="Half an ans")
            raise RateLimitError("scripted hit its rate limit")
        yield ChatChunk(thinking="The user greets me. ")
        yield ChatChunk(thinking="A short reply.")
        yield ChatChunk(delta="Hi ")
        yield ChatChunk(delta="there")
        usage = Usage(input_tokens=5, output_tokens=4, cache_read_tokens=100, reasoning_tokens=2)
        yield ChatChunk(finish_reason="stop", usage=usage, session_id="thinking-session", model="script")


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner(answer)


@pytest.fixture
def live(tmp_path: Path, runner: ScriptedRunner) -> Iterator[LiveServer]:
    with LiveServer(settings(tmp_path), runners={"scripted": runner, "thinking": Thinking()}) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="sk-test", max_retries=0, timeout=30)


def raw_events(live: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events of a streamed request, each checked against the SDK's event models."""
    events = []
    with httpx.stream("POST", f"{live.url}/v1/responses", json={**body, "stream": True}, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                EVENTS.validate_python(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def raw_body(live: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{live.url}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    Response.model_validate(reply.json())
    return dict(reply.json())


# --- answers ------------------------------------------------------------------------------


def test_plain_response_with_instructions_and_usage(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    done = client.responses.create(model="scripted", input="hi", instructions="Be terse")

    assert done.output_text == TEXT
    assert done.status == "completed" and done.model == "scripted" and done.id.startswith("resp_")
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (5, 3, 8)
    sent = runner.requests[-1]
    assert sent.system_prompt() == "Be terse"
    assert [(m.role, m.text) for m in sent.messages] == [("user", "hi")]


def test_stream_events_in_order(client: openai.OpenAI, live: LiveServer) -> None:
    events = list(client.responses.create(model="scripted", input="hi", stream=True))

    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == TEXT
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == TEXT and completed.response.usage is not None
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    # The same stream, raw, against the SDK's models.
    raw = raw_events(live, {"model": "scripted", "input": "hi"})
    assert [e["type"] for e in raw] == kinds
    Response.model_validate(raw[-1]["response"])


def test_input_items_become_the_conversation(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    client.responses.create(
        model="scripted",
        instructions="Be terse",
        input=[
            {"role": "developer", "content": "Answer in English"},
            {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "first answer", "annotations": []}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "two"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{png}", "detail": "auto"},
                ],
            },
        ],
    )

    sent = runner.requests[-1]
    assert sent.system_prompt() == "Answer in English\n\nBe terse"
    assert [(m.role, m.text) for m in sent.conversation()] == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
    ]
    (image,) = sent.conversation()[-1].images
    assert isinstance(image, ImagePart) and image.media_type == "image/png" and image.data == png


def test_function_tool_round_trip(client: openai.OpenAI, runner: ScriptedRunner, live: LiveServer) -> None:
    asked = client.responses.create(model="scripted", input="weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]

    assert [item.type for item in asked.output] == ["message", "function_call"]
    call = asked.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    assert "get_weather" in (runner.requests[-1].system or "") and runner.requests[-1].tools is None

    history: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in asked.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    after = client.responses.create(model="scripted", input=history, tools=[WEATHER])  # type: ignore[list-item]

    assert after.output_text == "It is sunny."
    sent = runner.requests[-1]
    assert [m.role for m in sent.conversation()] == ["user", "assistant", "tool"]
    assert sent.conversation()[-1].tool_call_id == call.call_id
    # The whole history came back as it was answered: the tool's session goes on.
    assert sent.session_id == "scripted-session-1"

    events = raw_events(live, {"model": "scripted", "input": "weather in Paris?", "tools": [WEATHER]})
    calls = [e for e in events if e["type"].startswith("response.function_call_arguments")]
    assert [e["type"] for e in calls] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    assert json.loads(calls[-1]["arguments"]) == {"city": "Paris"}
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["message", "function_call"]


def test_custom_namespace_and_hosted_tools(live: LiveServer, runner: ScriptedRunner) -> None:
    tools = [
        {"type": "custom", "name": "apply_patch", "description": "Edit files", "format": {"type": "text"}},
        {
            "type": "namespace",
            "name": "agents",
            "description": "Sub-agents",
            "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}],
        },
        {"type": "web_search", "external_web_access": True},
    ]
    body = raw_body(live, {"model": "scripted", "input": "patch it", "tools": tools})

    (call,) = body["output"]
    assert call["type"] == "custom_tool_call" and call["name"] == "apply_patch" and call["input"] == PATCH
    offered = runner.requests[-1].system or ""
    assert '"name": "apply_patch"' in offered and '"name": "agents.spawn"' in offered
    assert "web_search" not in offered  # OpenAI's hosted tools are left out

    events = raw_events(live, {"model": "scripted", "input": "patch it", "tools": tools})
    assert "response.custom_tool_call_input.done" in [e["type"] for e in events]

    # The call and its output come back as the conversation's tool turn.
    history = [
        {"role": "user", "content": "patch it"},
        call,
        {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "done"},
    ]
    assert raw_body(live, {"model": "scripted", "input": history, "tools": tools})["output"][0]["type"] == "message"
    calls = runner.requests[-1].conversation()[1].tool_calls or []
    assert [(c.id, c.name, c.arguments) for c in calls] == [(call["call_id"], "apply_patch", {"input": PATCH})]

    forced = {"model": "scripted", "input": "search", "tools": tools, "tool_choice": {"type": "web_search"}}
    refused = httpx.post(f"{live.url}/v1/responses", json=forced, timeout=30)
    assert refused.status_code == 400 and "web_search" in refused.json()["error"]["message"]


def test_json_schema_text_format(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    done = client.responses.create(
        model="scripted",
        input="where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )

    assert json.loads(done.output_text) == {"city": "Paris"}
    assert runner.requests[-1].json_schema == schema
    client.responses.create(model="scripted", input="where?", text={"format": {"type": "json_object"}})
    assert runner.requests[-1].json_schema == {"type": "object"}


def test_reasoning_summary_and_usage_details(client: openai.OpenAI, live: LiveServer) -> None:
    events = raw_events(live, {"model": "thinking", "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}})

    summary = [e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == "The user greets me. A short reply."
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "Hi there"
    assert final.usage is not None
    assert final.usage.input_tokens == 105 and final.usage.input_tokens_details.cached_tokens == 100
    assert final.usage.output_tokens_details.reasoning_tokens == 2
    assert final.usage.total_tokens == 109

    done = client.responses.create(model="thinking", input="hi")
    reasoning = done.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "The user greets me. A short reply."


def test_an_error_mid_stream_is_response_failed(live: LiveServer) -> None:
    events = raw_events(live, {"model": "thinking", "input": "fail now"})

    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "rate_limit_exceeded"
    assert "rate limit" in failed["error"]["message"]


# --- stored responses ---------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    first = client.responses.create(model="scripted", input="one", instructions="Be terse")
    second = client.responses.create(
        model="scripted", input="two", instructions="Be terse", previous_response_id=first.id
    )

    sent = runner.requests[-1]
    assert [(m.role, m.text) for m in sent.conversation()] == [("user", "one"), ("assistant", TEXT), ("user", "two")]
    assert sent.session_id == "scripted-session-1"  # the first turn's tool session goes on
    assert second.previous_response_id == first.id

    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == TEXT
    # A tool call answered through previous_response_id alone.
    asked = client.responses.create(model="scripted", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    call = asked.output[-1]
    assert call.type == "function_call"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}
    after = client.responses.create(
        model="scripted",
        input=[output],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        previous_response_id=asked.id,
    )
    assert after.output_text == "It is rainy."


def test_get_and_delete(client: openai.OpenAI, live: LiveServer) -> None:
    done = client.responses.create(model="scripted", input="hi")
    stored = httpx.get(f"{live.url}/v1/responses/{done.id}", timeout=30)
    assert stored.status_code == 200
    Response.model_validate(stored.json())
    assert stored.json()["output"][0]["content"][0]["text"] == TEXT

    deleted = httpx.delete(f"{live.url}/v1/responses/{done.id}", timeout=30)
    assert deleted.json() == {"id": done.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(done.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    done = client.responses.create(model="scripted", input="hi", store=False)
    streamed = list(client.responses.create(model="scripted", input="hi", store=False, stream=True))

    for response_id in (done.id, streamed[-1].response.id):  # type: ignore[union-attr]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="scripted", input="again", previous_response_id=response_id)
        assert caught.value.code == "previous_response_not_found"
        assert caught.value.response.headers["x-should-retry"] == "false"


def test_streamed_responses_are_stored_too(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    events = list(client.responses.create(model="scripted", input="one", stream=True))
    response_id = events[-1].response.id  # type: ignore[union-attr]

    assert client.responses.retrieve(response_id).output_text == TEXT
    client.responses.create(model="scripted", input="two", previous_response_id=response_id)
    assert [m.text for m in runner.requests[-1].conversation()] == ["one", TEXT, "two"]


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_404_not_to_be_retried(client: openai.OpenAI, runner: ScriptedRunner) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no_such_runner/x", input="hi")

    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "model_not_found"
    assert runner.requests == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "scripted"}, "`input` is required"),
        ({"model": "scripted", "input": 3}, "`input` must be"),
        ({"model": "scripted", "input": [{"type": "mystery"}]}, "'mystery'"),
        ({"model": "scripted", "input": "hi", "background": True}, "background"),
        ({"model": "scripted", "input": "hi", "text": {"format": {"type": "grammar"}}}, "text.format"),
    ],
)
def test_bad_requests_are_400(live: LiveServer, runner: ScriptedRunner, body: dict[str, Any], words: str) -> None:
    reply = httpx.post(f"{live.url}/v1/responses", json=body, timeout=30)

    assert reply.status_code == 400 and words in reply.json()["error"]["message"]
    assert reply.headers["x-should-retry"] == "false"
    assert runner.requests == []


def test_fields_real_clients_send_are_accepted(live: LiveServer, runner: ScriptedRunner) -> None:
    body = {
        "model": "scripted",
        "input": "hi",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 50,
        "parallel_tool_calls": True,
        "metadata": {"k": "v"},
        "user": "someone",
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "prompt_cache_key": "abc",
        "service_tier": "auto",
        "reasoning": {"effort": "medium", "summary": "auto"},
        "text": {"verbosity": "low"},
        "tool_choice": "auto",
        "client_metadata": {"session_id": "x"},
    }
    done = raw_body(live, body)

    assert done["metadata"] == {"k": "v"} and done["max_output_tokens"] == 50
    sent = runner.requests[-1]
    assert (sent.temperature, sent.max_tokens) == (0.2, 50)


# --- a real runner's parser behind the API: the claude fake -------------------------------


def test_claude_fake_answers_and_resumes_its_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = claude_fake(monkeypatch, tmp_path)
    claude = next(fake)
    try:
        with LiveServer(settings(tmp_path)) as server:
            sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=30)
            first = sdk.responses.create(model="claude_code/haiku", input="one")
            assert first.output_text == "Hello from mock"
            claude.scenario("thinking-partial")
            events = list(
                sdk.responses.create(model="claude_code/haiku", input="two", previous_response_id=first.id, stream=True)
            )
    finally:
        fake.close()

    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "The user greets me. A short friendly reply is enough."
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hello after thinking"
    runs = [inv for inv in claude.invocations() if "--output-format" in inv["argv"]]
    assert f"--resume={SESSION}" in runs[-1]["argv"]  # the first turn's tool session goes on
    assert prompt_in(runs[-1]["stdin"]) == "two"  # only the new turn was sent
