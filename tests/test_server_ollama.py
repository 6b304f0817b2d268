"""The daemon's Ollama API through the official `ollama` Python client.

Each test starts the real app under uvicorn on 127.0.0.1 and talks to it with
`ollama.Client` / `ollama.AsyncClient` (which parse every body and NDJSON line with the
client's own pydantic types), against the claude fake or an in-process scripted runner.
Raw bodies are parsed with the same types (ollama._types) and checked for fields those
types do not know, so that a misspelt field cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from ollama import _types as shapes
from pydantic import BaseModel

from llmrun.errors import AuthenticationError, ConfigError, RateLimitError
from llmrun.server.run import listening_sockets
from llmrun.server.settings import ServerSettings, load_settings
from llmrun.types import Capabilities, ChatChunk, ChatRequest

from .conftest import FakeRun
from .server_support import LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = pytest.mark.timeout(60)

TEXT = "Hello from mock"
# The smallest PNG: 1x1, one grey pixel.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def server(claude: FakeRun, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(settings(tmp_path, aliases={"fast": "claude_code/haiku"})) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=30)


def scripted_server(tmp_path: Path, runner: Any, **fields: Any) -> LiveServer:
    return LiveServer(settings(tmp_path, **fields), runners={"scripted": runner})


def known_keys(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def check(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """`data` parsed with the ollama client's type, which must know every field sent."""
    unknown = set(data) - known_keys(model)
    assert not unknown, f"fields {unknown} are not in ollama's {model.__name__}"
    if isinstance(data.get("message"), dict):
        assert not set(data["message"]) - known_keys(shapes.Message)
    return model.model_validate(data)


def ndjson(response: httpx.Response, model: type[BaseModel]) -> list[Any]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert lines and all(lines), "every line is one JSON object"
    return [check(model, json.loads(line)) for line in lines]


def assert_final(part: Any, *, reason: str = "stop") -> None:
    assert part.done is True and part.done_reason == reason
    assert part.created_at and part.created_at.endswith("Z")
    for name in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(part, name) > 0, name  # clients divide by them
    assert part.load_duration is not None


# --- chat and generate through the claude fake --------------------------------------------


def test_chat_answer(client: ollama.Client, claude: FakeRun) -> None:
    done = client.chat(
        model="claude_code/opus",
        messages=[{"role": "system", "content": "Be terse"}, {"role": "user", "content": "hi"}],
        stream=False,
        options={"temperature": 0.2, "num_ctx": 4096},
        keep_alive="5m",
    )

    assert done.message.role == "assistant" and done.message.content == TEXT
    assert done.model == "claude_code/opus"
    assert_final(done)
    assert (done.prompt_eval_count, done.eval_count) == (12, 7)
    argv = next(inv["argv"] for inv in reversed(claude.invocations()) if "--output-format" in inv["argv"])
    assert argv[argv.index("--model") + 1] == "opus"
    assert argv[argv.index("--system-prompt") + 1] == "Be terse"


def test_chat_stream(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]
    parts = list(client.chat(model="claude_code/sonnet:latest", messages=messages, stream=True))

    assert all(not p.done for p in parts[:-1]) and len(parts) >= 3
    assert "".join(p.message.content or "" for p in parts) == TEXT
    assert_final(parts[-1])
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (12, 7)
    assert {p.model for p in parts} == {"claude_code/sonnet:latest"}


def test_raw_chat_stream_lines(server: LiveServer) -> None:
    # `stream` left out: Ollama streams by default.
    body = {"model": "claude_code/sonnet", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{server.url}/api/chat", json=body, timeout=30)

    parts = ndjson(response, shapes.ChatResponse)
    assert "".join(p.message.content for p in parts) == TEXT
    assert_final(parts[-1])


def test_generate(client: ollama.Client, claude: FakeRun) -> None:
    done = client.generate(model="fast", prompt="hi", system="Be terse", stream=False, options={"num_predict": 50})
    parts = list(client.generate(model="fast", prompt="hi", stream=True))

    assert done.response == TEXT and done.model == "fast"
    assert_final(done)
    assert "".join(p.response or "" for p in parts) == TEXT
    assert_final(parts[-1])
    argv = next(inv["argv"] for inv in reversed(claude.invocations()) if "--output-format" in inv["argv"])
    assert argv[argv.index("--model") + 1] == "haiku"


def test_generate_without_content_type(server: LiveServer) -> None:
    # `curl -d` sends form encoding; Ollama reads the body as JSON anyway.
    body = json.dumps({"model": "claude_code/sonnet", "prompt": "hi", "stream": False})
    response = httpx.post(
        f"{server.url}/api/generate",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )

    assert response.status_code == 200
    assert check(shapes.GenerateResponse, response.json()).response == TEXT
    # The other APIs still want JSON declared.
    chat = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert chat.status_code == 415


def test_web_pages_still_cannot_post_to_the_ollama_api(server: LiveServer, claude: FakeRun) -> None:
    # What a page can send without a preflight: any content type, but an Origin or Sec-Fetch-Site with it.
    body = json.dumps({"model": "claude_code/sonnet", "prompt": "hi", "stream": False})
    pages = [{"origin": "https://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}]
    answers = [
        httpx.post(f"{server.url}/api/generate", content=body, headers={**page, "content-type": "text/plain"})
        for page in pages
    ]

    assert [a.status_code for a in answers] == [403, 403, 403]
    assert all(set(a.json()) == {"error"} for a in answers)
    assert not [inv for inv in claude.invocations() if "--output-format" in inv["argv"]]


def test_think(client: ollama.Client, claude: FakeRun) -> None:
    claude.scenario("thinking-partial")
    parts = list(
        client.chat(model="claude_code", messages=[{"role": "user", "content": "hi"}], think=True, stream=True)
    )
    done = client.chat(model="claude_code", messages=[{"role": "user", "content": "hi"}], stream=False)
    hidden = client.chat(model="claude_code", messages=[{"role": "user", "content": "hi"}], think=False, stream=False)
    generated = client.generate(model="claude_code", prompt="hi", think=True, stream=False)

    thinking = "The user greets me. A short friendly reply is enough."
    assert "".join(p.message.thinking or "" for p in parts) == thinking
    assert "".join(p.message.content or "" for p in parts) == "Hello after thinking"
    assert done.message.thinking == thinking and done.message.content == "Hello after thinking"
    assert hidden.message.thinking is None and hidden.message.content == "Hello after thinking"
    assert generated.thinking == thinking and generated.response == "Hello after thinking"


async def test_async_client(server: LiveServer) -> None:
    client = ollama.AsyncClient(host=server.url, timeout=30)
    done = await client.chat(model="claude_code/sonnet", messages=[{"role": "user", "content": "hi"}])
    stream = await client.generate(model="claude_code/sonnet", prompt="hi", stream=True)
    parts = [part async for part in stream]

    assert isinstance(done, shapes.ChatResponse) and done.message.content == TEXT
    assert "".join(p.response or "" for p in parts) == TEXT
    assert_final(parts[-1])


# --- requests through a scripted runner ---------------------------------------------------


def test_format_schema(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    runner = ScriptedRunner(lambda request: '{"city": "Paris"}')
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        done = client.chat(model="scripted", messages=[{"role": "user", "content": "where?"}], format=schema)
        client.generate(model="scripted", prompt="where?", format="json", stream=False)

    assert json.loads(done.message.content or "") == {"city": "Paris"}
    assert runner.requests[0].json_schema == schema
    assert runner.requests[1].json_schema == {"type": "object"}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def weather_answer(request: ChatRequest) -> str:
    results = [m for m in request.messages if m.role == "tool"]
    if results:
        return f"It is {results[-1].text} in Paris."
    return 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(tmp_path: Path, stream: bool) -> None:
    runner = ScriptedRunner(weather_answer)
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

        def ask() -> shapes.Message:
            if not stream:
                return client.chat(model="scripted", messages=messages, tools=[WEATHER_TOOL]).message
            parts = list(client.chat(model="scripted", messages=messages, tools=[WEATHER_TOOL], stream=True))
            assert_final(parts[-1])
            calls = [call for p in parts for call in p.message.tool_calls or []]
            text = "".join(p.message.content or "" for p in parts)
            return shapes.Message(role="assistant", content=text, tool_calls=calls or None)

        first = ask()
        assert first.tool_calls is not None and len(first.tool_calls) == 1
        call = first.tool_calls[0]
        assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Paris"})
        messages += [first, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
        second = ask()

    assert second.content == "It is sunny in Paris." and not second.tool_calls
    result = next(m for m in runner.requests[-1].messages if m.role == "tool")
    assert result.name == "get_weather" and result.text == "sunny"
    earlier_call = next(m for m in runner.requests[-1].messages if m.tool_calls).tool_calls
    assert earlier_call is not None and result.tool_call_id == earlier_call[0].id


def test_chat_continues_the_tool_session(tmp_path: Path) -> None:
    runner = ScriptedRunner(lambda request: f"answer {len(request.messages)}")
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        messages: list[Any] = [{"role": "user", "content": "one"}]
        first = client.chat(model="scripted", messages=messages, stream=False)
        messages += [first.message, {"role": "user", "content": "two"}]
        parts = list(client.chat(model="scripted", messages=messages, stream=True))

    assert runner.requests[0].session_id is None
    assert runner.requests[1].session_id == "scripted-session-1"  # the first turn's session, resumed
    assert "".join(p.message.content or "" for p in parts).startswith("answer")


def test_images(tmp_path: Path) -> None:
    runner = ScriptedRunner(lambda request: "a grey pixel")
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        done = client.chat(
            model="scripted", messages=[{"role": "user", "content": "what is this?", "images": [PNG]}], stream=False
        )
        client.generate(model="scripted", prompt="and this?", images=[PNG], stream=False)
        with pytest.raises(ollama.ResponseError) as refused:
            client.generate(model="scripted", prompt="and this?", images=[base64.b64encode(b"not an image")])

    assert done.message.content == "a grey pixel"
    for request in runner.requests:
        (image,) = request.messages[-1].images
        assert image.media_type == "image/png" and base64.b64decode(image.data or "") == PNG
    assert refused.value.status_code == 400 and "PNG" in refused.value.error
    assert len(runner.requests) == 2


def test_generate_suffix_raw_and_refusals(tmp_path: Path) -> None:
    runner = ScriptedRunner(lambda request: "middle")
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        filled = client.generate(model="scripted", prompt="def add(a, b):", suffix="    return c", stream=False)
        client.generate(model="scripted", prompt="[INST] hi [/INST]", system="ignored", raw=True, stream=False)
        errors = []
        for fields in ({"template": "{{ .Prompt }}"}, {"context": [1, 2, 3]}):
            with pytest.raises(ollama.ResponseError) as refused:
                client.generate(model="scripted", prompt="hi", stream=False, **fields)
            errors.append(refused.value)

    assert filled.response == "middle"
    fill, raw = runner.requests
    assert fill.messages[-1].text == "<prefix>def add(a, b):</prefix><suffix>    return c</suffix>"
    assert fill.system is not None and "between the <prefix> and the <suffix>" in fill.system
    assert raw.system is None and raw.messages[-1].text == "[INST] hi [/INST]"
    assert [e.status_code for e in errors] == [400, 400]
    assert "template" in errors[0].error and "context" in errors[1].error


def test_empty_prompt_loads_without_running(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        loaded = client.generate(model="scripted", stream=False)
        unloaded = client.generate(model="scripted", keep_alive=0, stream=False)
        chat = client.chat(model="scripted", messages=[], stream=False)
        with pytest.raises(ollama.ResponseError) as unknown:
            client.generate(model="nosuch/model", stream=False)

    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert unloaded.done_reason == "unload"
    assert chat.done_reason == "load" and chat.message.content == ""
    assert unknown.value.status_code == 404
    assert runner.requests == []


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_404(client: ollama.Client, server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as chat_error:
        client.chat(model="nosuch/model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as show_error:
        client.show("nosuch")
    raw = httpx.post(f"{server.url}/api/generate", json={"model": "nosuch", "prompt": "hi"})

    assert chat_error.value.status_code == 404 and "nosuch" in chat_error.value.error
    assert show_error.value.status_code == 404
    assert raw.status_code == 404 and set(raw.json()) == {"error"}
    assert raw.headers["x-should-retry"] == "false"


def test_errors_in_ollama_shape(tmp_path: Path) -> None:
    runner = ScriptedRunner(lambda request: AuthenticationError("the tool is not logged in"))
    with scripted_server(tmp_path, runner) as live:
        client = ollama.Client(host=live.url, timeout=30)
        with pytest.raises(ollama.ResponseError) as logged_out:
            client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}])
        bad = httpx.post(f"{live.url}/api/chat", json={"model": "scripted", "messages": "hi"})
        wrong_method = httpx.get(f"{live.url}/api/chat")
        no_such = httpx.get(f"{live.url}/api/nothing")

    assert logged_out.value.status_code == 401 and "not logged in" in logged_out.value.error
    assert bad.status_code == 400 and "messages" in bad.json()["error"]
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error"}
    assert no_such.status_code == 404 and set(no_such.json()) == {"error"}


class FailingMidStream(ScriptedRunner):
    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        yield ChatChunk(delta="Partial")
        raise RateLimitError("the tool's quota ran out", runner=self.name)


def test_error_mid_stream_is_an_error_line(tmp_path: Path) -> None:
    with scripted_server(tmp_path, FailingMidStream()) as live:
        client = ollama.Client(host=live.url, timeout=30)
        seen = []
        with pytest.raises(ollama.ResponseError) as failed:
            for part in client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True):
                seen.append(part.message.content)
        raw = httpx.post(f"{live.url}/api/generate", json={"model": "scripted", "prompt": "hi"})

    assert seen == ["Partial"] and "quota ran out" in failed.value.error
    lines = [json.loads(line) for line in raw.text.splitlines()]
    assert lines[0]["response"] == "Partial" and lines[0]["done"] is False
    assert lines[-1] == {"error": "the tool's quota ran out"}


@pytest.mark.parametrize(
    "path", ["/api/pull", "/api/push", "/api/create", "/api/copy", "/api/embed", "/api/embeddings"]
)
def test_model_management_is_refused(server: LiveServer, path: str) -> None:
    response = httpx.post(f"{server.url}{path}", json={"model": "claude_code/sonnet"})

    assert response.status_code == 501
    assert "llmrun" in response.json()["error"]


def test_client_pull_and_delete_are_refused(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as pulled:
        client.pull("claude_code/sonnet")
    with pytest.raises(ollama.ResponseError) as deleted:
        client.delete("claude_code/sonnet")

    assert pulled.value.status_code == 501 and "download" in pulled.value.error
    assert deleted.value.status_code == 501


# --- keep-alive -----------------------------------------------------------------------------


class Silent(ScriptedRunner):
    """Says nothing until the test releases it, so that keep-alives are certain to come first."""

    def __init__(self) -> None:
        super().__init__(lambda request: "Finally awake")
        self.release = threading.Event()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        await asyncio.to_thread(self.release.wait, 30)
        async for chunk in super().stream(request):
            yield chunk


def test_keepalives_while_silent_are_accepted(tmp_path: Path) -> None:
    runner = Silent()
    with scripted_server(tmp_path, runner, first_chunk_grace=0.05, keepalive_interval=0.05) as live:
        client = ollama.Client(host=live.url, timeout=30)
        parts = []
        for part in client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True):
            parts.append(part)
            if len(parts) == 3:
                runner.release.set()  # two keep-alives after the opening one reached the client
        runner.release.clear()
        lines = []
        with httpx.stream("POST", f"{live.url}/api/generate", json={"model": "scripted", "prompt": "hi"}) as raw:
            for line in raw.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 2:
                    runner.release.set()

    assert [p.message.content for p in parts[:3]] == ["", "", ""] and not any(p.done for p in parts[:3])
    assert "".join(p.message.content or "" for p in parts) == "Finally awake"
    assert_final(parts[-1])
    for line in lines[:2]:
        assert check(shapes.GenerateResponse, line).response == "" and line["done"] is False
    assert "".join(line["response"] for line in lines) == "Finally awake" and lines[-1]["done"] is True


# --- models ---------------------------------------------------------------------------------


def test_tags_show_version(client: ollama.Client, server: LiveServer) -> None:
    listed = client.list()
    raw = httpx.get(f"{server.url}/api/tags").json()
    shown = client.show("claude_code/sonnet")
    raw_show = httpx.post(f"{server.url}/api/show", json={"model": "fast"}).json()
    version = httpx.get(f"{server.url}/api/version").json()
    openai_ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]

    assert [m.model for m in listed.models] == openai_ids
    assert any(i.startswith("claude_code/") for i in openai_ids) and "fast" in openai_ids
    for model in raw["models"]:
        check(shapes.ListResponse.Model, {k: v for k, v in model.items() if k != "name"})
        assert model["name"] == model["model"] and len(model["digest"]) == 64
    assert listed.models[0].details is not None and listed.models[0].details.family == "claude_code"
    assert shown.capabilities is not None and {"completion", "tools"} <= set(shown.capabilities)
    assert shown.details is not None and shown.details.family == "claude_code"
    assert isinstance(shown.modelfile, str) and isinstance(shown.parameters, str)
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "claude_code"
    check(shapes.ShowResponse, raw_show)
    assert raw_show["model_info"]["general.basename"] == "haiku"
    assert set(version) >= {"version"} and version["version"].count(".") == 2


def test_show_capabilities_follow_the_runner(tmp_path: Path) -> None:
    class Seeing(ScriptedRunner):
        capabilities = Capabilities(images=True, thinking=True)

    with scripted_server(tmp_path, Seeing(), tools="reject") as live:
        shown = ollama.Client(host=live.url, timeout=30).show("scripted")

    assert shown.capabilities == ["completion", "vision", "thinking"]  # no "tools": the server rejects them


def test_ps_lists_runs_going(tmp_path: Path) -> None:
    runner = Silent()
    with scripted_server(tmp_path, runner, first_chunk_grace=0.05, keepalive_interval=0.05) as live:
        client = ollama.Client(host=live.url, timeout=30)
        idle = client.ps()
        stream = client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True)
        next(stream)  # the run holds its slot while the tool is silent
        busy = httpx.get(f"{live.url}/api/ps").json()
        runner.release.set()
        list(stream)

    assert idle.models == []
    (model,) = busy["models"]
    check(shapes.ProcessResponse.Model, model)
    assert model["model"] == "scripted" and model["details"]["family"] == "scripted"


# --- the Ollama port --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TwoPortServer(LiveServer):
    """A LiveServer on the sockets `llmrun serve` opens when an Ollama port is set."""

    def __init__(self, config: ServerSettings, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.sock.close()
        sockets = listening_sockets(config)
        assert sockets is not None
        self.sock, self.ollama_sock = sockets
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets}, daemon=True)

    def stop(self) -> None:
        super().stop()
        self.ollama_sock.close()


def test_ollama_port(tmp_path: Path) -> None:
    ollama_port = free_port()
    with TwoPortServer(
        settings(tmp_path, port=0, ollama_port=ollama_port), runners={"scripted": ScriptedRunner()}
    ) as live:
        other = f"http://127.0.0.1:{ollama_port}"
        root = httpx.get(f"{other}/")
        head = httpx.head(f"{other}/")
        main_root = httpx.get(f"{live.url}/")
        done = ollama.Client(host=other, timeout=30).chat(
            model="scripted", messages=[{"role": "user", "content": "hi"}]
        )
        body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
        openai_there = httpx.post(f"{other}/v1/chat/completions", json=body)
        foreign_host = httpx.get(f"{other}/api/tags", headers={"host": "evil.example"})

    assert live.port != ollama_port
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert head.status_code == 200
    assert main_root.json()["name"] == "llmrun"
    assert done.message.content == "Hello from script"
    assert openai_there.status_code == 200  # the same app on both ports
    assert foreign_host.status_code == 403 and set(foreign_host.json()) == {"error"}


def test_ollama_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            listening_sockets(settings(tmp_path, port=0, ollama_port=taken.getsockname()[1]))


def test_ollama_port_setting_is_checked(tmp_path: Path) -> None:
    for port in (0, 70000, 8080):
        with pytest.raises(ConfigError, match="ollama_port"):
            settings(tmp_path, port=8080, ollama_port=port)
    loaded = load_settings(data={"server": {"ollama_port": 11434}})
    assert loaded.ollama_port == 11434


def test_no_ollama_port_leaves_binding_to_uvicorn(tmp_path: Path) -> None:
    assert listening_sockets(settings(tmp_path)) is None


def test_the_ollama_runner_is_off_where_its_command_would_reach_this_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Else /api/tags asks the ollama runner for its models, whose `ollama list` asks /api/tags...
    ollama_port = free_port()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{ollama_port}")
    with LiveServer(
        settings(tmp_path, port=0, ollama_port=ollama_port), runners={"scripted": ScriptedRunner()}
    ) as live:
        assert "ollama" not in live.state.pool.names()
        refused = httpx.post(f"{live.url}/api/chat", json={"model": "ollama/llama3", "messages": []}, timeout=30)
        assert refused.status_code == 400 and "talks to port" in refused.json()["error"]
        assert "scripted/script" in [m["name"] for m in httpx.get(f"{live.url}/api/tags", timeout=30).json()["models"]]

    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")  # a real Ollama elsewhere
    with LiveServer(settings(tmp_path, port=0, ollama_port=ollama_port)) as live:
        assert "ollama" in live.state.pool.names()
