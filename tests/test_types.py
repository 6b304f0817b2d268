"""The shared types: validation, aggregation and the OpenAI shapes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llmrun import ChatChunk, ChatRequest, ChatResponse, ImagePart, Message, ToolCall, Usage
from llmrun.prompting import flatten_conversation, new_turns


def test_usage_total_and_openai_shape() -> None:
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_tokens=100, cache_write_tokens=20, reasoning_tokens=2)
    assert usage.total_tokens == 135
    assert usage.to_openai() == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


def test_response_from_chunks_and_openai_shape() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
    chunks = [
        ChatChunk(thinking="hmm "),
        ChatChunk(delta="Hel"),
        ChatChunk(delta="lo", tool_call=call),
        ChatChunk(
            finish_reason="tool_calls",
            usage=Usage(input_tokens=3, output_tokens=2),
            session_id="s1",
            model="m1",
            cost_usd=0.01,
        ),
    ]
    response = ChatResponse.from_chunks(chunks, runner="r", duration_ms=5)
    assert (response.content, response.thinking, response.session_id, response.cost_usd) == (
        "Hello",
        "hmm ",
        "s1",
        0.01,
    )
    body = response.to_openai(id="chatcmpl-x", created=1)
    assert body["object"] == "chat.completion" and body["model"] == "m1"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == "hmm "
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": json.dumps({"city": "Paris"}),
    }
    assert body["usage"]["total_tokens"] == 5


def test_chunk_openai_shape() -> None:
    body = ChatChunk(delta="Hi").to_openai(id="chatcmpl-x", model="m", created=1)
    assert body == {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    last = ChatChunk(finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1)).to_openai()
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["total_tokens"] == 2


def test_messages_and_request_helpers() -> None:
    image = ImagePart(data="aGk=", media_type="image/png")
    message = Message.user("look", images=[image])
    assert message.text == "look" and message.images == [image]
    with pytest.raises(ValidationError):
        ImagePart()
    request = ChatRequest(messages=[Message.system("A"), Message.user("hi")], system="B")
    assert request.system_prompt() == "A\n\nB"
    assert [m.role for m in request.conversation()] == ["user"]
    with pytest.raises(ValidationError):
        ChatRequest(messages=[], unknown_field=1)  # type: ignore[call-arg]


def test_flatten_conversation() -> None:
    assert flatten_conversation([Message.user("just this")]) == "just this"
    call = ToolCall(id="c1", name="lookup", arguments={"q": "x"})
    history = [
        Message.system("ignored here"),
        Message.user("find x"),
        Message.assistant("", tool_calls=[call]),
        Message.tool("x is 42", tool_call_id="c1"),
        Message.user("and y?"),
    ]
    prompt = flatten_conversation(history)
    assert "ignored here" not in prompt
    assert prompt.index("find x") < prompt.index('"q": "x"') < prompt.index("x is 42") < prompt.index("and y?")
    assert prompt.endswith("and y?")
    assert [m.text for m in new_turns(history)] == ["x is 42", "and y?"]


def test_every_error_class_is_named_and_exported() -> None:
    import llmrun
    from llmrun import errors

    classes = {
        obj.__name__ for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, errors.LlmrunError)
    }
    assert classes == set(errors.ERRORS_BY_NAME)
    assert classes <= set(llmrun.__all__)
    assert all(getattr(llmrun, name) is errors.ERRORS_BY_NAME[name] for name in classes)
