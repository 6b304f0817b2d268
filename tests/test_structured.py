"""Structured output for every runner: the JSON taken out of the answer, validated against the
schema, asked for once more when it does not fit, and a typed error when it still does not."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llmrun import ChatChunk, ChatRequest, StructuredOutputError, Usage
from llmrun.structured import extract_json, validated

from .conftest import FAKE_TOOLS, FakeRun
from .server_support import LiveServer, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import MockOpenAIChat, _Answer, split_deltas
from realcli import become, qwen_env, require_binary

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


# --- taking the JSON out of an answer ---------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "json_text"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ("  [1, 2]\n", "[1, 2]"),
        ('Here it is:\n```json\n{"a": {"b": [1]}}\n```\nAnything else?', '{"a": {"b": [1]}}'),
        ('Sure! The person is {"name": "Ada", "age": 36}. Done.', '{"name": "Ada", "age": 36}'),
        ('I think {not json} but then {"ok": true}', '{"ok": true}'),
    ],
)
def test_the_json_is_found_whole_fenced_or_after_a_preamble(answer: str, json_text: str) -> None:
    found = extract_json(answer)
    assert found is not None and found[1] == json_text and found[0] == json.loads(json_text)


def test_an_answer_without_json_has_none() -> None:
    assert extract_json("Hello from mock") is None
    assert extract_json("{ broken") is None


# --- validating, and asking once more ---------------------------------------------------------


class Script:
    """A run that answers each request with the next of `answers`, and keeps the requests."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []

    async def __call__(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        text = self.answers[len(self.requests) - 1]
        yield ChatChunk(thinking="hmm")
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            yield ChatChunk(delta=piece)
        yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=10, output_tokens=5), session_id="s-1")


async def collect(script: Script, request: ChatRequest, **how: Any) -> list[ChatChunk]:
    how = {"native": False, "resumable": False, "runner": "scripted", **how}
    return [chunk async for chunk in validated(request, script, **how)]


async def test_a_fitting_answer_is_the_json_alone() -> None:
    script = Script('Here you go: {"name": "Ada", "age": 36}')
    chunks = await collect(script, ChatRequest.of("a person", json_schema=PERSON))
    assert "".join(c.delta for c in chunks) == '{"name": "Ada", "age": 36}'
    assert chunks[-1].finish_reason == "stop" and chunks[0].thinking == "hmm"  # thinking passes on
    assert len(script.requests) == 1
    asked = script.requests[0].messages[-1].text
    assert asked.startswith("a person\n\nReply with only a JSON value") and '"required": ["name", "age"]' in asked


async def test_a_tool_with_a_schema_option_gets_the_prompt_unchanged() -> None:
    script = Script('{"name": "Ada", "age": 36}')
    await collect(script, ChatRequest.of("a person", json_schema=PERSON), native=True)
    assert script.requests[0].messages[-1].text == "a person"


async def test_a_misfit_is_asked_again_with_what_was_wrong() -> None:
    script = Script('{"name": "Ada", "age": -1}', 'Sorry: {"name": "Ada", "age": 36}')
    chunks = await collect(script, ChatRequest.of("a person", json_schema=PERSON))
    assert "".join(c.delta for c in chunks) == '{"name": "Ada", "age": 36}'
    retry = script.requests[1]
    assert [m.role for m in retry.messages] == ["user", "assistant", "user"]
    assert retry.messages[1].text == '{"name": "Ada", "age": -1}'
    assert "answer.age: must be at least 0" in retry.messages[2].text
    assert retry.session_id is None  # not resumable: the whole conversation goes again
    assert chunks[-1].usage == Usage(input_tokens=20, output_tokens=10)  # both runs counted


async def test_a_resumable_tool_continues_its_session_for_the_retry() -> None:
    script = Script("no json here", '{"name": "Ada", "age": 1}')
    await collect(script, ChatRequest.of("a person", json_schema=PERSON), resumable=True)
    assert script.requests[1].session_id == "s-1"
    assert "the answer holds no JSON value" in script.requests[1].messages[-1].text


async def test_a_second_misfit_is_a_typed_error() -> None:
    script = Script('{"name": 5, "age": 1}', '{"name": 6, "age": 1}')
    with pytest.raises(StructuredOutputError, match=r"also when asked again: answer\.name"):
        await collect(script, ChatRequest.of("a person", json_schema=PERSON))
    assert len(script.requests) == 2


# --- through runners --------------------------------------------------------------------------


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    return FakeRun(FAKE_TOOLS[0], monkeypatch, tmp_path)


async def test_claude_answers_through_its_own_schema_option(claude: FakeRun) -> None:
    claude.scenario("mock-json-schema-stream")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    response = await claude.runner().complete(ChatRequest.of("give name", json_schema=schema))
    assert json.loads(response.content) == {"name": "mock-name"}
    (invocation,) = claude.invocations()
    assert "--json-schema" in invocation["argv"]


class Answers(MockOpenAIChat):
    """The mock OpenAI API answering each chat request with the next of `answers`."""

    def __init__(self, *answers: str) -> None:
        super().__init__()
        self.answers = list(answers)

    def _answer(self, scenario: str, body: dict[str, Any]) -> _Answer | None:
        text = self.answers[min(len(self.chat_requests), len(self.answers)) - 1]
        return _Answer(str(body.get("model") or "mock-model"), split_deltas(text))


@pytest.fixture
def qwen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    require_binary("qwen")
    yield


@pytest.mark.real_cli
@pytest.mark.timeout(120)
async def test_a_runner_without_a_schema_option_is_asked_in_the_prompt_and_checked(
    qwen: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmrun.runners.qwen import QwenRunner

    with Answers('Sure. {"name": "Ada", "age": -3}', '```json\n{"name": "Ada", "age": 36}\n```') as api:
        become(monkeypatch, tmp_path, qwen_env(tmp_path, api.base_url))
        response = await QwenRunner().complete(ChatRequest.of("a person", json_schema=PERSON, timeout=60))
        sent = [json.dumps(r["json"]["messages"]) for r in api.chat_requests]
    assert json.loads(response.content) == {"name": "Ada", "age": 36}
    assert len(sent) == 2
    assert "Reply with only a JSON value that matches this JSON schema" in sent[0]
    assert "answer.age: must be at least 0" in sent[1]


# --- openai's parse() through the daemon -------------------------------------------------------


class Name(BaseModel):
    name: str


class Person(BaseModel):
    name: str
    age: int


def parse_through_daemon(tmp_path: Path, model: str, schema: type[BaseModel]) -> Any:
    import openai

    with LiveServer(settings(tmp_path)) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=90)
        completion = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "who?"}], response_format=schema
        )
    return completion.choices[0].message.parsed


@pytest.mark.timeout(120)
def test_openai_parse_through_claude(claude: FakeRun, tmp_path: Path) -> None:
    claude.scenario("mock-json-schema-stream")
    assert parse_through_daemon(tmp_path, "claude_code", Name) == Name(name="mock-name")


@pytest.mark.real_cli
@pytest.mark.timeout(120)
def test_openai_parse_through_a_runner_without_a_schema_option(
    qwen: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with Answers('The person: {"name": "Ada", "age": 36}') as api:
        become(monkeypatch, tmp_path, qwen_env(tmp_path, api.base_url))
        assert parse_through_daemon(tmp_path, "qwen", Person) == Person(name="Ada", age=36)


@pytest.mark.timeout(120)
def test_anthropic_parse_through_claude(claude: FakeRun, tmp_path: Path) -> None:
    import anthropic

    claude.scenario("mock-json-schema-stream")
    with LiveServer(settings(tmp_path)) as live:
        client = anthropic.Anthropic(base_url=live.url, api_key="unused", max_retries=0, timeout=90)
        message = client.messages.parse(
            model="claude_code", max_tokens=1000, messages=[{"role": "user", "content": "who?"}], output_format=Name
        )
    assert message.parsed_output == Name(name="mock-name")
    argv = claude.invocations()[-1]["argv"]
    assert json.loads(argv[argv.index("--json-schema") + 1])["required"] == ["name"]
