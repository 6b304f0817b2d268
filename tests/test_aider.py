"""Unit tests of the Aider runner: argv and lockdown, the stdout parser, errors, sessions.

The transcripts in fixtures/aider/ were captured from the real aider 0.86.2 against
tests/mock_openai_chat.py; fixtures/bin/aider replays them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.aider import (
    ENV_REMOVE,
    AiderParser,
    AiderRunner,
    classify,
    parse_tokens,
)

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "aider"


def stdout_of(name: str) -> str:
    return (TRANSCRIPTS / f"{name}.stdout").read_text("utf-8")


def replay(text: str, size: int = 0) -> tuple[AiderParser, list[llmrun.ChatChunk]]:
    """Feed stdout in pieces of `size` characters (0: whole), then close."""
    parser = AiderParser(model="openai/mock-model")
    size = size or len(text) or 1
    chunks = [c for start in range(0, len(text), size) for c in parser.feed(text[start : start + size])]
    if parser.error is None:
        chunks += parser.close()
    return parser, chunks


def joined(chunks: list[llmrun.ChatChunk]) -> tuple[str, str]:
    return "".join(c.thinking for c in chunks), "".join(c.delta for c in chunks)


BANNER = (
    "\nHTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries exceeded\n"
    "Aider v0.86.2\nModel: openai/mock-model with ask edit format\nGit repo: none\nRepo-map: disabled\n\n"
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_AIDER_BIN", str(FAKE_BIN / "aider"))
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def invocations(record: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"), key=lambda p: p.stat().st_mtime)
    ]


# --- the command line ------------------------------------------------------------------------


def test_default_run_is_locked_down_and_reads_the_prompt_from_stdin() -> None:
    invocation = AiderRunner().build_invocation(ChatRequest.of("say hello"), "aider")
    argv = invocation.argv
    for flag in (
        "--chat-mode=ask",
        "--dry-run",
        "--no-git",
        "--no-suggest-shell-commands",
        "--no-detect-urls",
        "--no-auto-lint",
        "--no-auto-test",
        "--no-analytics",
        "--no-check-update",
        "--chat-history-file=/dev/null",
        "--input-history-file=/dev/null",
    ):
        assert flag in argv, flag
    assert "--analytics-disable" not in argv  # that one writes into the user's ~/.aider
    assert argv[-1] == "--message-file=/dev/stdin"
    assert invocation.stdin == b"say hello"
    assert not any("say hello" in arg for arg in argv)
    assert invocation.env["BROWSER"] == "true"
    assert {"AIDER_MESSAGE", "AIDER_LOAD"} <= set(invocation.env_remove) == set(ENV_REMOVE)


def test_allow_tools_lets_aider_edit_but_keeps_git_and_shell_off() -> None:
    request = ChatRequest.of("fix it", allow_tools=True, options={"edit_format": "diff"})
    argv = AiderRunner().build_invocation(request, "aider").argv
    assert "--chat-mode=ask" not in argv and "--dry-run" not in argv
    assert "--edit-format=diff" in argv
    assert "--no-git" in argv and "--no-suggest-shell-commands" in argv


@pytest.mark.parametrize("prompt", ["/run touch pwned", "!touch pwned"])
def test_a_prompt_that_reads_as_an_aider_command_is_defused(prompt: str) -> None:
    stdin = AiderRunner().build_invocation(ChatRequest.of(prompt), "aider").stdin
    assert stdin == f" {prompt}".encode()


def test_model_system_prompt_and_read_only_files() -> None:
    request = ChatRequest(
        messages=[Message.system("Be brief."), Message.user("hi")],
        model="openai/mock-model",
        options={"read": ["CONVENTIONS.md"]},
    )
    invocation = AiderRunner().build_invocation(request, "aider")
    assert "--model=openai/mock-model" in invocation.argv
    assert "--read=CONVENTIONS.md" in invocation.argv
    assert invocation.stdin is not None
    stdin = invocation.stdin.decode()
    assert stdin.index("Be brief.") < stdin.index("hi")


def test_sampling_parameters_go_to_every_model_through_a_private_settings_file() -> None:
    request = ChatRequest.of("hi", model="openai/x", temperature=0.3, max_tokens=77, top_p=0.5, seed=7, stop=["END"])
    invocation = AiderRunner().build_invocation(request, "aider")
    try:
        (path,) = invocation.temp_files
        assert f"--model-settings-file={path}" in invocation.argv
        assert json.loads(Path(path).read_text()) == [
            {
                "name": "aider/extra_params",
                "extra_params": {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7},
            }
        ]
    finally:
        invocation.remove_files()
    plain = AiderRunner().build_invocation(ChatRequest.of("hi"), "aider")
    assert plain.temp_files == [] and not any(a.startswith("--model-settings-file") for a in plain.argv)
    # `stop` is llmrun's own; everything else but top_k (which litellm drops for OpenAI-style
    # providers) has its place in extra_params.
    assert set(AiderRunner.honoured_parameters) | {"stop", "top_k"} == set(llmrun.types.SAMPLING_PARAMETERS)


def test_no_model_is_passed_when_none_is_set() -> None:
    argv = AiderRunner().build_invocation(ChatRequest.of("hi"), "aider").argv
    assert not any(arg.startswith("--model") for arg in argv)


# --- the parser on captured output -----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7])
def test_answer_and_usage_from_the_captured_run(size: int) -> None:
    parser, chunks = replay(stdout_of("message"), size)
    thinking, text = joined(chunks)
    assert (thinking, text) == ("", "Hello from mock")
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens) == (80, 3)
    assert parser.finished and parser.error is None


@pytest.mark.parametrize("size", [0, 1, 7])
def test_the_model_is_the_one_aiders_banner_names(size: int) -> None:
    # No model asked for: aider's own setting chooses, and its banner says which.
    parser = AiderParser()
    text = stdout_of("message")
    size = size or len(text)
    chunks = [c for start in range(0, len(text), size) for c in parser.feed(text[start : start + size])]
    chunks += parser.close()
    assert chunks[-1].model == "openai/mock-model"
    main = AiderParser(model="asked")
    main.feed(BANNER.replace("Model: openai/mock-model with", "Main model: anthropic/claude-x with"))
    assert main.model == "anthropic/claude-x"


@pytest.mark.parametrize("size", [0, 1, 5])
def test_reasoning_becomes_thinking(size: int) -> None:
    _, chunks = replay(stdout_of("message-thinking"), size)
    assert joined(chunks) == ("Let me think. Done thinking.", "Hello from mock")


def test_answer_streams_before_the_usage_report() -> None:
    parser = AiderParser()
    assert parser.feed(BANNER) == []
    assert joined(parser.feed("Hello "))[1] == "Hello "
    assert joined(parser.feed("world\n"))[1] == "world"  # the newline may be aider's
    assert parser.feed("Tok") == []
    assert parser.feed("ens: 1 sent, 2 received.\n") == []
    *body, last = parser.close()
    assert body == [] and last.usage is not None and last.usage.output_tokens == 2


def test_a_usage_like_line_inside_the_answer_stays_answer() -> None:
    answer = "Aider prints:\nTokens: 5 sent, 1 received.\nat the end."
    _, chunks = replay(BANNER + answer + "\nTokens: 9 sent, 4 received.\n")
    assert joined(chunks)[1] == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.input_tokens == 9


def test_an_answer_about_litellm_is_not_an_error() -> None:
    parser, chunks = replay(BANNER + "litellm.completion is the call.\nTokens: 9 sent, 4 received.\n", 3)
    assert parser.error is None
    assert joined(chunks)[1] == "litellm.completion is the call."


def test_usage_with_rounded_counts_cache_and_cost() -> None:
    report = (
        "Tokens: 2.1k sent, 1.2k cache write, 300 cache hit, 12k received.\nCost: $0.0123 message, $0.05 session.\n"
    )
    _, chunks = replay(BANNER + "ok\n" + report)
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_write_tokens, usage.cache_read_tokens, usage.output_tokens) == (
        900,
        1200,
        300,
        12000,
    )
    assert chunks[-1].cost_usd == pytest.approx(0.0123)
    assert parse_tokens("593") == 593 and parse_tokens("9.9k") == 9900
    assert parse_tokens("9" * 5000) == 0  # beyond a float


def test_output_cut_before_the_answer_is_not_finished() -> None:
    parser = AiderParser()
    parser.feed(BANNER[:60])
    assert parser.close() == [] and not parser.finished


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("message-401", llmrun.AuthenticationError),
        ("message-429", llmrun.RateLimitError),
        ("message-500", llmrun.ServiceUnavailable),
        ("message-unknown-provider", llmrun.ModelNotFound),
        ("noauth-message", llmrun.AuthenticationError),
    ],
)
def test_errors_aider_prints_on_stdout_are_typed_and_end_the_run(name: str, error: type) -> None:
    parser, chunks = replay(stdout_of(name), 11)
    assert type(parser.error) is error
    assert parser.finished  # aider would retry, or wait for a browser login: stop it
    assert joined(chunks) == ("", "")


def test_the_401_message_is_aiders_whole_line() -> None:
    parser, _ = replay(stdout_of("message-401"))
    assert "Incorrect API key provided" in str(parser.error)
    assert parser.error is not None and parser.error.hint


def test_classify_context_and_unknown() -> None:
    assert isinstance(classify("ContextWindowExceededError", "too long"), llmrun.ContextLengthExceeded)
    assert isinstance(classify("BadRequestError", "maximum context length is 8192"), llmrun.ContextLengthExceeded)
    assert isinstance(classify("NotFoundError", "model gpt-9 does not exist"), llmrun.ModelNotFound)
    assert type(classify("UnprocessableEntityError", "odd")) is llmrun.RunnerError


async def test_a_retrying_aider_is_stopped_at_the_first_rate_limit_report(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = stdout_of("message-429").splitlines()
    first_error = next(i for i, line in enumerate(lines) if line.startswith("litellm."))
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "message-429")
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", f"hang_after={first_error + 2}")  # then it "sleeps" for ever
    started = time.monotonic()
    with pytest.raises(llmrun.RateLimitError):
        await AiderRunner().complete(ChatRequest.of("hi", stall_timeout=100))
    assert time.monotonic() - started < 60  # stopped at once, not at the stall limit


# --- sessions --------------------------------------------------------------------------------


async def test_a_session_replays_the_conversation_on_stdin(fake: Path) -> None:
    runner = AiderRunner()
    first = await runner.complete(ChatRequest.of("My name is Ann"))
    assert first.session_id
    follow_up = ChatRequest(
        messages=[Message.user("My name is Ann"), Message.assistant(first.content), Message.user("Who am I?")],
        session_id=first.session_id,
    )
    second = await runner.complete(follow_up)
    assert second.session_id == first.session_id
    stdin = invocations(fake)[-1]["stdin"]
    assert "My name is Ann" in stdin and "Who am I?" in stdin


async def test_an_unknown_session_is_session_not_found(fake: Path) -> None:
    with pytest.raises(llmrun.SessionNotFound):
        await AiderRunner().complete(ChatRequest(messages=[Message.user("hi")], session_id="nope"))


async def test_health_reports_the_version(fake: Path) -> None:
    report = await AiderRunner().health()
    assert report.status == "ok" and report.version == "0.86.2"


# aider's show_exhausted_error (coders/base_coder.py), as printed after a ContextWindowExceededError
TOKEN_LIMIT = (
    "\n\n\nModel openai/mock-model has hit a token limit!\nToken counts below are approximate.\n\n"
    "Input tokens: ~130,000 of 128,000 -- possibly exhausted context window!\n"
    "Output tokens: ~0 of 16,384\nTotal tokens: ~130,000 of 128,000 -- possibly exhausted context window!\n"
)


@pytest.mark.parametrize("size", [0, 1, 9])
def test_an_exhausted_context_is_context_length_exceeded(size: int) -> None:
    parser, chunks = replay(BANNER + TOKEN_LIMIT, size)
    assert isinstance(parser.error, llmrun.ContextLengthExceeded)
    assert "has hit a token limit" in str(parser.error)
    assert joined(chunks) == ("", "")


def test_an_answer_cut_at_the_output_limit_ends_with_length() -> None:
    _, chunks = replay(BANNER + "The first half" + TOKEN_LIMIT, 4)
    assert joined(chunks)[1] == "The first half"
    assert chunks[-1].finish_reason == "length"


def test_an_answer_line_starting_with_model_is_answer() -> None:
    _, chunks = replay(BANNER + "Model answers vary.\nTokens: 9 sent, 4 received.\n", 2)
    assert joined(chunks)[1] == "Model answers vary."
    assert chunks[-1].finish_reason == "stop"
