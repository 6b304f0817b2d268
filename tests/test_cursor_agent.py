"""Unit tests of the Cursor Agent runner: argv, the parser, errors, health, models.

Cursor's CLI is not in a package registry the project installs from, so the transcripts
in fixtures/cursor-agent/ are hand-made in its documented stream-json format (with the
partial-output details users of the real CLI have published); fixtures/bin/cursor-agent
replays them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.cursor_agent import (
    ARGV_PROMPT_LIMIT,
    LOGIN_HINT,
    CursorAgentParser,
    CursorAgentRunner,
    parse_models,
)
from llmrun.runners.stream_json import StreamJsonParser

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "cursor-agent"
SESSION = "6f1c2a9e-3b7d-4e21-9a55-0c8d4b2e7f13"
BASE = ["cursor-agent", "--print", "--output-format=stream-json", "--stream-partial-output"]


def transcript(name: str, suffix: str = "stdout") -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str) -> tuple[CursorAgentParser, list[llmrun.ChatChunk]]:
    parser = CursorAgentParser()
    chunks = [c for line in transcript(name).splitlines() for c in parser.feed(line)]
    return parser, chunks + parser.close()


def invocation(request: ChatRequest):  # type: ignore[no-untyped-def]
    return CursorAgentRunner().build_invocation(request, "cursor-agent")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_CURSOR_AGENT_BIN", str(FAKE_BIN / "cursor-agent"))
    monkeypatch.delenv("CURSOR_API_KEY", raising=False)
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


# --- the command line ---------------------------------------------------------------------


def test_plain_request_is_read_only_and_goes_over_stdin() -> None:
    inv = invocation(ChatRequest.of("-hi there"))

    assert inv.argv == [*BASE, "--mode=ask", "--trust"]
    assert inv.stdin == b"-hi there"


def test_model_tools_trust_and_resume() -> None:
    history = [Message.user("first"), Message.assistant("answer"), Message.user("second")]
    req = ChatRequest(
        messages=history,
        model="-odd",
        session_id="abc",
        allow_tools=True,
        options={"trust": False, "extra_args": ["--sandbox", "enabled"]},
    )
    inv = invocation(req)

    assert inv.argv == [*BASE, "--model=-odd", "--force", "--resume=abc", "--sandbox", "enabled"]
    assert inv.stdin == b"second"


def test_modes() -> None:
    assert "--mode=plan" in invocation(ChatRequest.of("hi", options={"mode": "plan"})).argv
    argv = invocation(ChatRequest.of("hi", allow_tools=True, options={"mode": "agent"})).argv
    assert not any(a.startswith("--mode") for a in argv) and "--force" in argv
    with pytest.raises(llmrun.UnsupportedFeature, match="allow_tools"):
        invocation(ChatRequest.of("hi", options={"mode": "agent"}))
    with pytest.raises(llmrun.UnsupportedFeature, match="unknown mode"):
        invocation(ChatRequest.of("hi", options={"mode": "yolo"}))


def test_system_prompt_goes_in_front_of_the_prompt() -> None:
    inv = invocation(ChatRequest.of("hi", system="Be brief."))
    assert inv.stdin == b"<system_instructions>\nBe brief.\n</system_instructions>\n\nhi"


def test_prompt_in_argv_is_guarded() -> None:
    inv = invocation(ChatRequest.of("-starts with a dash", options={"prompt_in_argv": True}))
    assert inv.argv[-2:] == ["--", "-starts with a dash"] and inv.stdin is None

    with pytest.raises(llmrun.UnsupportedFeature, match="128 KiB"):
        invocation(ChatRequest.of("x" * (ARGV_PROMPT_LIMIT + 1), options={"prompt_in_argv": True}))


# --- reading cursor-agent's events --------------------------------------------------------


def test_parser_is_the_shared_stream_json_one() -> None:
    assert issubclass(CursorAgentParser, StreamJsonParser)


def test_deltas_are_streamed_once_and_the_recap_dropped() -> None:
    parser, chunks = replay("stream-json-partial")

    assert [c.delta for c in chunks if c.delta] == ["Hello", " from", " mock"]
    assert "".join(c.thinking for c in chunks) == "The user wants a greeting."
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.session_id == SESSION
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.cache_read_tokens) == (12, 7, 3)
    assert parser.finished and parser.error is None


def test_whole_messages_without_partial_output() -> None:
    _, chunks = replay("stream-json-whole")
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]


def test_text_after_a_tool_call_is_a_new_paragraph() -> None:
    _, chunks = replay("stream-json-tool")

    assert "".join(c.delta for c in chunks) == "Let me read it.\n\nIt holds a title."
    use, result = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.kind, use.name, use.input) == ("tool_use", "read", {"path": "README.md"})
    assert (result.kind, result.id, result.is_error) == ("tool_result", use.id, False)
    assert result.output["content"] == "# Project\n"


def test_a_rejected_tool_is_a_permission_denial() -> None:
    _, chunks = replay("stream-json-tool-rejected")

    use, denied = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.name, use.input) == ("shell", {"command": "rm -rf build"})
    assert (denied.kind, denied.id, denied.is_error) == ("permission_denied", use.id, True)
    assert "".join(c.delta for c in chunks) == "I may not run commands here."


def test_reconnects_are_agent_events() -> None:
    _, chunks = replay("stream-json-retry")

    events = [(c.agent_event.kind, c.agent_event.message) for c in chunks if c.agent_event is not None]
    assert events == [
        ("notice", "connection reconnecting (attempt 1)"),
        ("notice", "connection reconnected"),
        ("retry", "retry starting (attempt 2)"),
    ]
    assert "".join(c.delta for c in chunks) == "Hello from mock"


def test_a_failed_result_is_a_typed_error() -> None:
    parser, chunks = replay("result-error")

    assert isinstance(parser.error, llmrun.AuthenticationError) and parser.error.hint == LOGIN_HINT
    assert parser.finished and not any(c.is_final for c in chunks)


def test_result_text_stands_in_when_no_message_came() -> None:
    parser = CursorAgentParser()
    line = json.dumps(
        {"type": "result", "subtype": "success", "is_error": False, "result": "Just this", "session_id": "s"}
    )
    chunks = parser.feed(line)

    assert [c.delta for c in chunks if c.delta] == ["Just this"] and chunks[-1].session_id == "s"


def test_odd_lines_are_skipped() -> None:
    parser = CursorAgentParser()
    for line in ("not json", "[1]", '{"type":"tool_call","subtype":"started"}', '{"type":"thinking"}'):
        assert parser.feed(line) == []
    assert parser.feed('{"type":"tool_call","subtype":"completed","tool_call":{"x":1}}')[0].agent_event is not None


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("noauth", llmrun.AuthenticationError),
        ("usage-limit", llmrun.RateLimitError),
        ("model-unavailable", llmrun.ModelNotFound),
        ("resume-missing", llmrun.SessionNotFound),
        ("network-error", llmrun.ServiceUnavailable),
    ],
)
def test_errors_on_stderr_are_typed(name: str, error: type) -> None:
    typed = CursorAgentRunner().error_for_exit(1, transcript(name, "stderr"))

    assert type(typed) is error
    assert not str(typed).startswith("Error")


def test_login_hint_and_unknown_flags() -> None:
    assert CursorAgentRunner().error_for_exit(1, transcript("noauth", "stderr")).hint == LOGIN_HINT
    typed = CursorAgentRunner().error_for_exit(1, "error: unknown option '--stream-partial-output'\n")
    assert "does not accept llmrun's flags" in str(typed) and typed.hint
    assert isinstance(CursorAgentRunner().error_for_exit(1, "boom\n"), llmrun.ProcessFailed)


# --- health and models --------------------------------------------------------------------


async def test_health_logged_in(fake: Path) -> None:
    report = await llmrun.get_runner("cursor-agent").health()

    assert report.status == "ok", report
    assert report.version == "2026.08.11" and report.message == "Logged in as user@example.com"


async def test_health_logged_out(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["status"], "status-logged-out"]]))
    report = await llmrun.get_runner("cursor").health()
    assert report.status == "unauthenticated", report
    assert report.message == "Not logged in" and report.hint == LOGIN_HINT

    monkeypatch.setenv("CURSOR_API_KEY", "key_test")
    report = await llmrun.get_runner("cursor").health()
    assert report.status == "ok" and report.message == "CURSOR_API_KEY is set"


async def test_models_come_from_cursor_agent(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = ["auto", "composer-2", "claude-sonnet-5-thinking-high", "gpt-5.3-codex-low"]
    assert [m.id for m in await llmrun.get_runner("cursor_agent").available_models()] == expected

    # Builds without the `models` subcommand: `--list-models`.
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["models"], "noauth"]]))
    assert [m.id for m in await llmrun.get_runner("cursor_agent").available_models()] == expected


def test_parse_models() -> None:
    assert parse_models(transcript("models")) == [
        "auto",
        "composer-2",
        "claude-sonnet-5-thinking-high",
        "gpt-5.3-codex-low",
    ]
    assert parse_models("Tip: use --model <id> - to switch\n") == []
