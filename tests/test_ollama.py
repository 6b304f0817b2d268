"""Unit tests of the Ollama runner: argv, the parser, errors, health, sessions.

ollama is not installable from the registries the project uses, so fixtures/ollama/ holds
transcripts built from ollama's source (v0.33.0-rc2: cmd/cmd.go, api/types.go), not
captured; fixtures/bin/ollama replays them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners import ollama
from llmrun.runners.ollama import (
    CLOUD_SIGNIN,
    PULL_HINT,
    SERVER_HINT,
    OllamaParser,
    OllamaRunner,
    clean,
    error_text,
    parse_models,
    usage_from,
)

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "ollama"


def transcript(name: str, suffix: str) -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str, size: int = 0, **parser_args: object) -> tuple[OllamaParser, list[llmrun.ChatChunk]]:
    """Feed a transcript's stdout in pieces of `size` characters (0: whole), then close."""
    parser = OllamaParser(**parser_args)  # type: ignore[arg-type]
    text = transcript(name, "stdout")
    size = size or len(text) or 1
    chunks = [c for start in range(0, len(text), size) for c in parser.feed(text[start : start + size])]
    parser.stderr = transcript(name, "stderr")
    return parser, chunks + parser.close()


def joined(chunks: list[llmrun.ChatChunk]) -> tuple[str, str]:
    return "".join(c.thinking for c in chunks), "".join(c.delta for c in chunks)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_OLLAMA_BIN", str(FAKE_BIN / "ollama"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def recorded(record: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line ---------------------------------------------------------------------


def test_plain_request() -> None:
    inv = OllamaRunner().build_invocation(ChatRequest.of("-hi there"), "ollama")

    assert inv.argv == ["ollama", "run", "--nowordwrap", "--verbose", "--", "gemma4"]
    assert inv.stdin == b"-hi there"


def test_options_and_model() -> None:
    req = ChatRequest.of(
        "hi",
        model="qwen3:8b",
        json_schema={"type": "object"},
        options={"think": "High", "hide_thinking": True, "keepalive": "10m", "extra_args": ["--insecure"]},
    )
    argv = OllamaRunner().build_invocation(req, "ollama").argv

    assert argv == [
        "ollama",
        "run",
        "--nowordwrap",
        "--verbose",
        "--think=high",
        "--hidethinking",
        "--keepalive=10m",
        '--format={"type": "object"}',
        "--insecure",
        "--",
        "qwen3:8b",
    ]
    assert "--think=false" in OllamaRunner().build_invocation(ChatRequest.of("hi", options={"think": False}), "o").argv
    with pytest.raises(llmrun.UnsupportedFeature, match="think must be one of"):
        OllamaRunner().build_invocation(ChatRequest.of("hi", options={"think": "very"}), "ollama")


def test_system_prompt_goes_in_front_of_the_prompt() -> None:
    req = ChatRequest(messages=[Message.system("Be brief."), Message.user("hi")], system="Answer in French.")
    prompt = OllamaRunner().build_invocation(req, "ollama").stdin.decode()

    assert prompt == "<system_instructions>\nBe brief.\n\nAnswer in French.\n</system_instructions>\n\nhi"


async def test_settings_extra_args_go_after_run(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "run-plain")
    await llmrun.get_runner("ollama", extra_args=["--keepalive=1m"]).complete(ChatRequest.of("hi"))

    (inv,) = recorded(fake)
    assert inv["argv"][:2] == ["run", "--keepalive=1m"] and inv["argv"][-2:] == ["--", "gemma4"]


# --- reading ollama's output --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4, 13])
def test_thinking_answer_and_usage(size: int) -> None:
    parser, chunks = replay("run-thinking", size, model="gemma4")

    assert joined(chunks) == ("The user wants a greeting. I will say hello.", "Hello from mock")
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.model == "gemma4"
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (26, 12)
    assert parser.finished and parser.error is None
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_thinking_streams_before_its_end_marker() -> None:
    parser = OllamaParser()
    first = parser.feed("Thinking...\nLet me ")
    second = parser.feed("see.\n...done")

    assert joined(first) == ("Let me ", "")
    assert joined(second) == ("see.", "")  # "\n...done" may be the end marker: held


@pytest.mark.parametrize("size", [0, 1, 5])
def test_paragraphs_and_the_answers_own_last_newline_survive(size: int) -> None:
    _, chunks = replay("run-paragraphs", size)

    assert joined(chunks) == ("", "First paragraph.\n\nSecond paragraph ends with a newline.\n")


def test_multibyte_answer() -> None:
    assert joined(replay("run-multibyte", 3)[1]) == ("", "Héllo wörld 日本語 🙂")


def test_an_answer_without_its_closing_newlines_was_cut_short() -> None:
    parser, chunks = replay("run-interrupted")

    assert not parser.finished and not any(c.is_final for c in chunks)
    cut = OllamaParser()
    cut.feed("Thinking...\nhalf a thought")
    assert cut.close() == [] and not cut.finished


async def test_a_cut_short_answer_with_exit_code_0_is_an_error(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "run-interrupted")
    with pytest.raises(llmrun.OutputParseError) as caught:
        await llmrun.get_runner("ollama").complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 0


def test_escapes_cut_between_pieces_are_removed() -> None:
    parser = OllamaParser(thinking_shown=False)
    text = "".join(
        c.delta
        for piece in ("Hel", "lo\x1b[", "1G\x1b", "[K wor", "ld\x1b]0;ti", "tle\x07!\n\n")
        for c in parser.feed(piece)
    )
    text += "".join(c.delta for c in parser.close())

    assert text == "Hello world!"


def test_word_wrap_escapes_are_removed() -> None:
    # What ollama prints without --nowordwrap when a word crosses column 75.
    parser = OllamaParser(thinking_shown=False)
    chunks = parser.feed("a long line that wraps\x1b[5D\x1b[K\nwraps here\n\n") + parser.close()

    assert joined(chunks)[1] == "a long line that wraps\nwraps here"


def test_with_thinking_hidden_the_marker_is_answer_text() -> None:
    parser = OllamaParser(thinking_shown=False)
    chunks = parser.feed("Thinking...\nis what I said.\n\n") + parser.close()

    assert joined(chunks) == ("", "Thinking...\nis what I said.")


def test_cloud_sign_in_notice_is_an_authentication_error_not_an_answer() -> None:
    parser, chunks = replay("run-cloud-signin", 7)

    assert not any(c.delta for c in chunks)
    assert isinstance(parser.error, llmrun.AuthenticationError) and str(parser.error) == CLOUD_SIGNIN


def test_an_answer_that_only_starts_like_the_sign_in_notice_is_kept() -> None:
    parser = OllamaParser(thinking_shown=False)
    chunks = parser.feed("You") + parser.feed(" need a plan.") + parser.feed("\n\n") + parser.close()

    assert joined(chunks)[1] == "You need a plan." and parser.error is None


def test_usage_from_verbose_statistics() -> None:
    usage = usage_from(transcript("run-thinking", "stderr"))
    assert (usage.input_tokens, usage.output_tokens) == (26, 12)
    # A cached prompt has no prompt eval count line.
    assert usage_from("eval count:           9 token(s)\n").input_tokens == 0


def test_clean_removes_spinner_frames_and_escapes() -> None:
    assert clean(transcript("run-500", "stderr")).strip().startswith("Error: 500")


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "hint"),
    [
        ("run-no-server", llmrun.ServiceUnavailable, SERVER_HINT),
        ("run-not-pulled-offline", llmrun.ModelNotFound, PULL_HINT),
        ("run-not-in-registry", llmrun.ModelNotFound, PULL_HINT),
        ("run-404", llmrun.ModelNotFound, PULL_HINT),
        ("run-500", llmrun.ServiceUnavailable, None),
        ("run-context", llmrun.ContextLengthExceeded, None),
        ("run-429", llmrun.RateLimitError, None),
        ("run-401", llmrun.AuthenticationError, ollama.SIGNIN_HINT),
        ("run-think-unsupported", llmrun.UnsupportedFeature, None),
    ],
)
def test_errors_are_typed_with_ollamas_words(name: str, error: type, hint: str | None) -> None:
    stderr = transcript(name, "stderr")
    typed = OllamaRunner().error_for_exit(1, stderr)

    assert type(typed) is error
    assert str(typed) == error_text(stderr) and "\x1b" not in str(typed)
    assert typed.hint == hint


def test_the_last_error_line_counts() -> None:
    assert error_text("Error: first\nmore\nError: 500 Internal Server Error: second\n") == (
        "500 Internal Server Error: second"
    )


def test_crash_without_an_error_line_is_process_failed() -> None:
    typed = OllamaRunner().error_for_exit(2, "\x1b[?25lpanic: runtime error\n")
    assert isinstance(typed, llmrun.ProcessFailed) and "panic: runtime error" in str(typed)


# --- sessions -----------------------------------------------------------------------------


async def test_a_session_replays_the_conversation(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "run-plain")
    runner = llmrun.get_runner("ollama")
    first = await runner.complete(ChatRequest.of("My name is Ada."))
    assert first.session_id

    history = [Message.user("My name is Ada."), Message.assistant(first.content), Message.user("What is my name?")]
    second = await runner.complete(ChatRequest(messages=[history[-1]], session_id=first.session_id))

    assert second.session_id == first.session_id
    prompt = recorded(fake)[-1]["stdin"]
    assert "My name is Ada." in prompt and "Hello from mock" in prompt
    assert prompt.endswith("What is my name?")

    third = await runner.complete(ChatRequest.of("And again?", session_id=first.session_id))
    prompt = recorded(fake)[-1]["stdin"]
    assert third.session_id == first.session_id
    assert prompt.count("Hello from mock") == 2 and "What is my name?" in prompt
    assert history  # the caller's own list is untouched


async def test_an_unknown_session_is_not_found_without_running_ollama(fake: Path) -> None:
    with pytest.raises(llmrun.SessionNotFound):
        await llmrun.get_runner("ollama").complete(ChatRequest.of("hi", session_id="nope"))
    assert recorded(fake) == []


async def test_sessions_are_bounded(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "run-plain")
    monkeypatch.setattr(ollama.OllamaRunner, "max_conversations", 2)
    runner = llmrun.get_runner("ollama")
    ids = [(await runner.complete(ChatRequest.of(f"q{n}"))).session_id for n in range(3)]

    with pytest.raises(llmrun.SessionNotFound):
        await runner.complete(ChatRequest.of("hi", session_id=ids[0]))
    assert (await runner.complete(ChatRequest.of("hi", session_id=ids[2]))).session_id == ids[2]


# --- health and models --------------------------------------------------------------------


async def test_health_with_the_server_and_the_model(fake: Path) -> None:
    report = await llmrun.get_runner("ollama").health()

    assert report.status == "ok", report
    assert report.version == "0.33.0" and report.message == "server running; 3 model(s) pulled"
    for model in ("gemma4:latest", "qwen3:8b"):
        assert (await llmrun.get_runner("ollama", default_model=model).health()).status == "ok"


async def test_health_tells_a_stopped_server(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = [[["--version"], "version-no-server"], [["list"], "list-no-server"]]
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps(commands))
    report = await llmrun.get_runner("ollama").health()

    assert report.status == "error", report
    assert report.version == "0.33.0"
    assert report.message == (
        "the Ollama server is not running: could not connect to ollama server, run 'ollama serve' to start it"
    )
    assert report.hint == SERVER_HINT


async def test_health_tells_a_model_that_is_not_pulled(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = await llmrun.get_runner("ollama", default_model="llama3.2").health()
    assert report.status == "error", report
    assert report.message == (
        "the server is running, but the model llama3.2 is not pulled (pulled: gemma4:latest, qwen3:8b, gpt-oss:20b)"
    )
    assert report.hint and "ollama pull llama3.2" in report.hint

    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["list"], "list-empty"]]))
    report = await llmrun.get_runner("ollama").health()
    assert report.status == "error" and "(pulled: none)" in report.message


async def test_available_models_come_from_ollama_list(fake: Path) -> None:
    models = await llmrun.get_runner("ollama").available_models()

    assert [m.id for m in models] == ["gemma4:latest", "qwen3:8b", "gpt-oss:20b"]


def test_parse_models() -> None:
    assert parse_models(transcript("list", "stdout")) == ["gemma4:latest", "qwen3:8b", "gpt-oss:20b"]
    assert parse_models(transcript("list-empty", "stdout")) == []
    assert parse_models("Error: something\n") == []
