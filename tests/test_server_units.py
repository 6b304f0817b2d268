"""The daemon's parts on their own: request mapping, model naming, the limiter, the session store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmrun.errors import InvalidRequest, ModelNotFound, UnsupportedFeature
from llmrun.server import anthropic_api, openai_api
from llmrun.server.limits import Busy, Limiter
from llmrun.server.runners import RunnerPool
from llmrun.server.security import host_name, normalise
from llmrun.server.sessions import SessionStore, StoredSession
from llmrun.types import ChatChunk, ChatResponse, ImagePart, TextPart, ToolCall, Usage

from .server_support import ScriptedRunner

# --- OpenAI requests ----------------------------------------------------------------------


def test_openai_messages_map_to_llmrun_messages() -> None:
    parsed = openai_api.parse(
        {
            "model": " claude_code/sonnet ",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be terse"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"x": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            ],
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-1",
        }
    )
    request = parsed.request
    assert (parsed.model, parsed.stream, parsed.include_usage) == ("claude_code/sonnet", True, True)
    system, question, call, result = request.messages
    assert system.role == "system" and system.text == "Be terse"
    # The data: URL arrives decoded and checked, as data: no runner sees a client's URL.
    assert question.content == [TextPart(text="What is this?"), ImagePart(data="AAAA", media_type="image/png")]
    assert call.tool_calls == [ToolCall(id="call_1", name="look", arguments={"x": 1})]
    assert (result.role, result.tool_call_id, result.name, result.text) == ("tool", "call_1", "look", "a cat")
    assert (request.max_tokens, request.temperature, request.json_schema) == (50, 0.2, {"type": "object"})


def test_openai_tools_are_kept() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    parsed = openai_api.parse(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "required"}
    )
    assert parsed.request.tools is not None and parsed.request.tools[0].name == "f"
    assert parsed.request.tool_choice == "required"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, InvalidRequest),
        ({"model": "m", "messages": "hi"}, InvalidRequest),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, UnsupportedFeature),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, InvalidRequest),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]},
            UnsupportedFeature,
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, InvalidRequest),
    ],
)
def test_openai_bad_requests(body: dict, error: type) -> None:
    with pytest.raises(error):
        openai_api.parse(body)


def test_openai_stream_rendering() -> None:
    out = openai_api.Output("r/m", include_usage=True)
    events = [
        out.start(),
        out.chunk(ChatChunk(thinking="hmm")),
        out.chunk(ChatChunk(delta="hi")),
        out.chunk(ChatChunk(tool_call=ToolCall(id="c1", name="a"))),
        out.chunk(ChatChunk(tool_call=ToolCall(id="c2", name="b"))),
        out.chunk(ChatChunk(finish_reason="tool_calls", usage=Usage(input_tokens=3, output_tokens=2))),
        out.finish(),
    ]
    text = b"".join(events).decode()
    assert '"reasoning_content": "hmm"' in text and '"content": "hi"' in text
    assert '"index": 0' in text and '"index": 1' in text
    assert text.count('"finish_reason": "tool_calls"') == 1
    assert '"prompt_tokens": 3' in text and text.endswith("data: [DONE]\n\n")
    body = openai_api.Output("r/m").body(ChatResponse(content="x", tool_calls=[ToolCall(id="c", name="f")]))
    assert body["model"] == "r/m" and body["choices"][0]["message"]["tool_calls"][0]["id"] == "c"


# --- Anthropic requests -------------------------------------------------------------------


def test_anthropic_messages_map_to_llmrun_messages() -> None:
    parsed = anthropic_api.parse(
        {
            "model": "claude",
            "max_tokens": 10,
            "system": [
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ],
            "metadata": {"user_id": "conv"},
            "tool_choice": {"type": "tool", "name": "look"},
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    ],
                },
                {"role": "system", "content": "interleaved"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "...", "signature": "s"},
                        {"type": "text", "text": "looking"},
                        {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"at": "it"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "ok"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "bad", "is_error": True},
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
        }
    )
    request = parsed.request
    assert request.system == "A\n\nB"
    assert request.tool_choice == {"type": "function", "function": {"name": "look"}}
    assert request.tools is not None and request.tools[0].parameters == {"type": "object"}
    roles = [m.role for m in request.messages]
    assert roles == ["user", "system", "assistant", "tool", "tool", "user"]
    assert request.messages[0].images == [ImagePart(data="AAAA", media_type="image/png")]
    assert request.system_prompt() == "interleaved\n\nA\n\nB"
    assistant = request.messages[2]
    assert assistant.text == "looking" and assistant.tool_calls == [
        ToolCall(id="toolu_1", name="look", arguments={"at": "it"})
    ]
    assert request.messages[3].name == "look" and request.messages[3].text == "ok"
    assert "error" in request.messages[4].text
    assert request.messages[5].text == "and now?"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"model": "m", "messages": []}, InvalidRequest),
        ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, InvalidRequest),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "document"}]}]}, UnsupportedFeature),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_2025"}]},
            UnsupportedFeature,
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "sometimes"}},
            InvalidRequest,
        ),
    ],
)
def test_anthropic_bad_requests(body: dict, error: type) -> None:
    with pytest.raises(error):
        anthropic_api.parse(body)


def test_anthropic_stream_rendering() -> None:
    out = anthropic_api.Output("r/m")
    data = b"".join(
        [
            out.start(),
            out.chunk(ChatChunk(thinking="a")),
            out.chunk(ChatChunk(thinking="b")),
            out.chunk(ChatChunk(delta="x")),
            out.chunk(ChatChunk(tool_call=ToolCall(id="t", name="f", arguments={"k": 1}))),
            out.chunk(ChatChunk(finish_reason="tool_calls", usage=Usage(input_tokens=4, output_tokens=2))),
            out.finish(),
        ]
    ).decode()
    names = [line[7:] for line in data.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",  # thinking
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",  # signature
        "content_block_stop",
        "content_block_start",  # text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # tool_use
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert '"stop_reason": "tool_use"' in data and '"partial_json": "{\\"k\\": 1}"' in data


# --- model naming -------------------------------------------------------------------------


def test_model_resolution() -> None:
    scripted = ScriptedRunner()
    pool = RunnerPool({"fast": "scripted/quick", "dflt": "scripted"}, {"scripted": scripted})
    assert (pool.resolve("scripted/x").runner, pool.resolve("scripted/x").model) == (scripted, "x")
    assert pool.resolve("scripted:y").model == "y"
    assert pool.resolve("scripted").model is None
    assert pool.resolve("fast").model == "quick" and pool.resolve("fast").requested == "fast"
    assert pool.resolve("dflt").model is None
    assert pool.resolve("script").runner is scripted  # a model the runner knows
    assert pool.resolve("claude/opus").runner.name == "claude_code"
    with pytest.raises(ModelNotFound):
        pool.resolve("gpt-4o")
    with pytest.raises(InvalidRequest):
        pool.resolve(" ")


# --- the limiter --------------------------------------------------------------------------


async def test_limiter_serves_in_order_and_per_runner() -> None:
    limiter = Limiter(total=2, per_runner=1, max_queue=3, timeout=5)
    order: list[str] = []
    release: dict[str, asyncio.Event] = {}

    async def use(runner: str, tag: str) -> None:
        async with limiter.slot(runner):
            order.append(tag)
            release[tag] = asyncio.Event()
            await release[tag].wait()

    a1 = asyncio.ensure_future(use("a", "a1"))
    await asyncio.sleep(0)
    a2 = asyncio.ensure_future(use("a", "a2"))  # waits: runner a is at its limit
    await asyncio.sleep(0)
    b1 = asyncio.ensure_future(use("b", "b1"))  # not held up by a2
    await asyncio.sleep(0.01)
    assert order == ["a1", "b1"] and limiter.stats()["waiting"] == 1
    c1 = asyncio.ensure_future(use("c", "c1"))  # global limit reached: waits
    await asyncio.sleep(0.01)
    assert order == ["a1", "b1"]
    release["b1"].set()
    await asyncio.sleep(0.01)
    assert order == ["a1", "b1", "c1"]  # a2 still cannot run, c1 can
    release["a1"].set()
    await asyncio.sleep(0.01)
    assert order[-1] == "a2"
    for tag in ("a2", "c1"):
        release[tag].set()
    await asyncio.gather(a1, a2, b1, c1)
    assert limiter.stats()["active"] == 0 and limiter.per == {}


async def test_limiter_rejects_when_full_and_after_the_timeout() -> None:
    limiter = Limiter(total=1, per_runner=1, max_queue=1, timeout=0.05)
    await limiter.acquire("a")
    waiter = asyncio.ensure_future(limiter.acquire("a"))
    await asyncio.sleep(0)
    with pytest.raises(Busy, match="queue is full") as caught:
        await limiter.acquire("a")
    assert caught.value.retry_after >= 1 and caught.value.http_status == 429
    with pytest.raises(Busy, match="no free slot"):
        await waiter
    assert limiter.stats()["waiting"] == 0
    cancelled = asyncio.ensure_future(limiter.acquire("a"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert limiter.stats()["waiting"] == 0
    limiter.release("a", 0.1)
    assert limiter.stats()["active"] == 0


# --- sessions and hosts -------------------------------------------------------------------


def test_session_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.sqlite3"
    store = SessionStore(path)
    store.put("r", "c", StoredSession("s1", 2, "/tmp"))
    store.put("r", "c", StoredSession("s2", 4, None))
    store.close()
    again = SessionStore(path)
    assert again.get("r", "c") == StoredSession("s2", 4, None)
    assert again.get("other", "c") is None
    again.delete("r", "c")
    assert again.get("r", "c") is None


@pytest.mark.parametrize(
    ("header", "name"),
    [("LocalHost:8080", "localhost"), ("[::1]:80", "::1"), ("127.0.0.1", "127.0.0.1"), ("example.com.", "example.com")],
)
def test_host_names(header: str, name: str) -> None:
    assert normalise(host_name(header)) == name


def test_a_runner_that_cannot_load_does_not_break_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import registry
    from llmrun.errors import ConfigError

    monkeypatch.setitem(registry.BUILTIN, "broken", "llmrun.no_such_module:Broken")
    pool = RunnerPool()
    assert "broken" in pool.names()
    with pytest.raises(ConfigError, match="cannot be loaded"):
        pool.get("broken")
    assert pool.resolve("claude_code/opus").runner.name == "claude_code"
    with pytest.raises(ModelNotFound):
        pool.resolve("unknown-model")  # the search over every runner's models skips the broken one
