"""Unit tests of the llm runner: argv, the parser over captured output, errors, health.

The transcripts in fixtures/llm/ were captured from the real llm 0.36 (with llm-echo 0.5,
llm-markov 0.1 and llm's OpenAI plugin pointed at tests/mock_openai_chat.py); the fake
`fixtures/bin/llm` replays them for the tests that need a process.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, ImagePart, Message
from llmrun.runners.llm import (
    SYSTEM_PROMPT_ARGV_LIMIT,
    LlmParser,
    LlmRunner,
    classify,
    error_text,
    parse_models,
    ulid_floor,
    usage_from,
)

from .conftest import FAKE_BIN, FIXTURES

CAPTURES = FIXTURES / "llm"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()


def capture(name: str, suffix: str) -> str:
    return (CAPTURES / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str, pieces: int = 1, **parser_args: object) -> list[llmrun.ChatChunk]:
    """Feed a captured stdout in `pieces` text pieces, then its stderr and close."""
    parser = LlmParser(**parser_args)  # type: ignore[arg-type]
    text = capture(name, "stdout")
    size = max(1, -(-len(text) // pieces))
    chunks = [c for start in range(0, len(text), size) for c in parser.feed(text[start : start + size])]
    parser.stderr = capture(name, "stderr")
    return chunks + parser.close()


def invocation(request: ChatRequest, **settings: object):  # type: ignore[no-untyped-def]
    return LlmRunner(**settings).build_invocation(request, "llm")  # type: ignore[arg-type]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The fake llm on LLMRUN_LLM_BIN, recording its invocations; llm's env vars cleared."""
    monkeypatch.setenv("LLMRUN_LLM_BIN", str(FAKE_BIN / "llm"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    for name in ("OPENAI_API_KEY", "LLM_RAISE_ERRORS", "LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return record


def recorded(record: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line ---------------------------------------------------------------------


def test_plain_request_goes_over_stdin_without_logging() -> None:
    inv = invocation(ChatRequest.of("-hello\nthere"))

    assert inv.argv == ["llm", "prompt", "--usage", "--no-log"]
    assert inv.stdin == b"-hello\nthere"
    assert "LLM_RAISE_ERRORS" in inv.env_remove


def test_model_system_options_and_schema_are_flags_with_their_values_attached() -> None:
    req = ChatRequest(
        messages=[Message.system("-be brief"), Message.user("hi")],
        model="-odd-model",
        temperature=0.3,
        max_tokens=50,
        json_schema={"type": "object"},
        options={
            "model_options": {"delay": 0.1, "length": 5, "flag": True},
            "hide_reasoning": True,
            "extra_args": ["-x"],
        },
    )
    argv = invocation(req).argv

    assert argv[:4] == ["llm", "prompt", "--usage", "--model=-odd-model"]
    assert "--system=-be brief" in argv
    options = [tuple(argv[i + 1 : i + 3]) for i, arg in enumerate(argv) if arg == "--option"]
    assert options == [
        ("delay", "0.1"),
        ("length", "5"),
        ("flag", "true"),
        ("temperature", "0.3"),
        ("max_tokens", "50"),
    ]
    assert '--schema={"type": "object"}' in argv
    assert argv[-2:] == ["--hide-reasoning", "-x"]


def test_sampling_parameters_become_model_options_and_the_caller_s_own_win() -> None:
    req = ChatRequest.of(
        "hi",
        top_p=0.5,
        seed=7,
        frequency_penalty=0.25,
        presence_penalty=-0.5,
        stop=["END"],
        options={"model_options": {"top_p": 0.9}},
    )
    argv = invocation(req).argv

    options = [tuple(argv[i + 1 : i + 3]) for i, arg in enumerate(argv) if arg == "--option"]
    assert options == [("top_p", "0.9"), ("seed", "7"), ("frequency_penalty", "0.25"), ("presence_penalty", "-0.5")]
    assert "stop" not in LlmRunner.honoured_parameters  # llmrun's own: llm takes one stop string only


def test_long_system_prompt_goes_through_a_fragment_file() -> None:
    system = "ü" * SYSTEM_PROMPT_ARGV_LIMIT
    inv = invocation(ChatRequest.of("hi", system=system))
    try:
        (path,) = inv.temp_files
        assert f"--sf={path}" in inv.argv
        assert Path(path).read_text("utf-8") == system
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert not any(system in arg for arg in inv.argv)
    finally:
        for path in inv.temp_files:
            os.remove(path)


def test_logging_and_conversations() -> None:
    assert "--log" in invocation(ChatRequest.of("hi", options={"log": True})).argv
    argv = invocation(ChatRequest.of("hi", options={"database": "/tmp/my.db"})).argv
    assert "--log" in argv and "--database=/tmp/my.db" in argv and "--no-log" not in argv

    history = [Message.user("first"), Message.assistant("answer"), Message.user("second")]
    inv = invocation(ChatRequest(messages=history, session_id="01abc"))
    assert "--cid=01abc" in inv.argv and "--log" in inv.argv
    assert inv.stdin == b"second"  # llm has the rest in its conversation


def test_history_without_a_session_is_flattened() -> None:
    history = [Message.user("first"), Message.assistant("an earlier answer"), Message.user("second")]
    prompt = invocation(ChatRequest(messages=history)).stdin.decode()

    assert "first" in prompt and "an earlier answer" in prompt and prompt.endswith("second")


def test_images_become_attachments() -> None:
    images = [ImagePart(data=PNG, media_type="image/png"), ImagePart(url="https://example.com/cat.jpg")]
    inv = invocation(ChatRequest(messages=[Message.user("look", images=images)]))
    try:
        (path,) = inv.temp_files
        assert path.endswith(".png") and Path(path).read_bytes() == base64.b64decode(PNG)
        assert [a for a in inv.argv if a.startswith("--attachment=")] == [
            f"--attachment={path}",
            "--attachment=https://example.com/cat.jpg",
        ]
    finally:
        for path in inv.temp_files:
            os.remove(path)

    data_url = ImagePart(url=f"data:image/png;base64,{PNG}")
    inv = invocation(ChatRequest(messages=[Message.user("look", images=[data_url])]))
    (path,) = inv.temp_files
    os.remove(path)
    assert path.endswith(".png")

    with pytest.raises(llmrun.UnsupportedFeature, match="not valid base64"):
        invocation(ChatRequest(messages=[Message.user("look", images=[ImagePart(data="%%%", media_type="image/png")])]))


async def test_settings_extra_args_go_after_the_subcommand(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "runner-mock-chat")
    await llmrun.get_runner("llm", extra_args=["--key", "from-settings"]).complete(ChatRequest.of("hi"))

    (inv,) = recorded(fake)
    assert inv["argv"][:3] == ["prompt", "--key", "from-settings"]
    assert inv["stdin"] == "hi"


# --- reading llm's output -----------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 3, 40])
def test_answer_and_usage(pieces: int) -> None:
    chunks = replay("runner-mock-chat", pieces, model="mock-chat")

    *body, last = chunks
    assert "".join(c.delta for c in body) == "Hello from mock"
    assert last.finish_reason == "stop" and last.model == "mock-chat" and last.session_id is None
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (12, 7)


def test_multibyte_answer() -> None:
    assert "".join(c.delta for c in replay("runner-mock-chat-multibyte", 7)) == "Héllo wörld 日本語 🙂"


def test_only_llms_own_last_newline_is_dropped() -> None:
    parser = LlmParser()
    text = "".join(c.delta for piece in ("First\n", "\n", "ends with a newline\n", "\n") for c in parser.feed(piece))

    assert text == "First\n\nends with a newline\n"  # the answer's own newline; the last one is llm's
    assert [c.delta for c in parser.close()] == [""]


def test_cached_tokens_are_counted_once() -> None:
    usage = replay("runner-mock-chat-cached")[-1].usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (12, 100, 7)


def test_anthropic_style_and_reasoning_details() -> None:
    line = (
        'Token usage: 1,204 input, 56 output, {"cache_read_input_tokens": 900, "cache_creation_input_tokens": 30,'
        ' "completion_tokens_details": {"reasoning_tokens": 20}}'
    )
    usage = usage_from(line)

    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        1204,
        56,
        900,
        30,
    )
    assert usage.reasoning_tokens == 20


def test_model_without_usage_reports_zeros() -> None:
    chunks = replay("runner-markov")
    assert "".join(c.delta for c in chunks) == capture("runner-markov", "stdout")[:-1]
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == 0


def test_reasoning_on_stderr_is_thinking() -> None:
    chunks = replay("runner-echo-thinking")

    assert [c.thinking for c in chunks if c.thinking] == ["First I consider the prompt, then I decide what to say."]
    assert json.loads("".join(c.delta for c in chunks))["prompt"] == "Say hi"
    assert chunks[-1].is_final and not chunks[-1].thinking


def test_reasoning_keeps_its_paragraphs() -> None:
    parser = LlmParser()
    parser.stderr = "\x1b[2mStep one.\n\nStep two.\x1b[0m\n\nToken usage: 5 input, 9 output\n"

    thinking, final = parser.close()
    assert thinking.thinking == "Step one.\n\nStep two."
    assert final.usage is not None and final.usage.output_tokens == 9


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("runner-401", llmrun.AuthenticationError, "Error code: 401 - Incorrect API key"),
        ("runner-nokey", llmrun.AuthenticationError, "No key found"),
        ("runner-429", llmrun.RateLimitError, "Rate limit reached"),
        ("runner-500", llmrun.ServiceUnavailable, "Error code: 500"),
        ("runner-unknown-model", llmrun.ModelNotFound, "Unknown model: no-such-model"),
        ("runner-resume-missing", llmrun.SessionNotFound, "No conversation found"),
        ("runner-bad-option", llmrun.UnsupportedFeature, "temperature\n  Extra inputs are not permitted"),
    ],
)
def test_errors_on_stderr_are_typed(name: str, error: type, words: str) -> None:
    stderr = capture(name, "stderr")
    typed = LlmRunner().error_for_exit(1, stderr)

    assert type(typed) is error
    assert words in str(typed)
    assert not str(typed).startswith(("Error: ", "'"))


def test_missing_key_hint_names_the_key_and_the_variable() -> None:
    typed = classify(error_text(capture("runner-nokey", "stderr")))
    assert typed.hint == "run `llm keys set openai`, or set OPENAI_API_KEY"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Error code: 403 - forbidden", llmrun.AuthenticationError),
        ("Error code: 404 - The model `gpt-9` does not exist", llmrun.ModelNotFound),
        ("Error code: 400 - This model's maximum context length is 8192 tokens", llmrun.ContextLengthExceeded),
        ("Connection error.", llmrun.ServiceUnavailable),
        ("Echo: echo does not support schemas", llmrun.UnsupportedFeature),
        ("something else went wrong", llmrun.RunnerError),
    ],
)
def test_classify(message: str, error: type) -> None:
    assert type(classify(message)) is error


def test_crash_without_an_error_line_is_process_failed() -> None:
    typed = LlmRunner().error_for_exit(-11, "Fatal Python error: Segmentation fault\n")
    assert isinstance(typed, llmrun.ProcessFailed) and "Segmentation fault" in str(typed)


# --- conversations ------------------------------------------------------------------------


def test_ulid_floor_sorts_just_before_ids_of_that_moment() -> None:
    (row,) = json.loads(capture("logs-list-json", "stdout"))
    moment = datetime.fromisoformat(row["datetime_utc"]).timestamp()

    assert ulid_floor(moment - 1) <= row["id"] < ulid_floor(moment + 1)
    assert ulid_floor(0) == "0" * 26 and len(ulid_floor(moment)) == 26


async def test_a_logged_request_reports_the_conversation_it_started(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "runner-echo-log")
    response = await llmrun.get_runner("llm").complete(ChatRequest.of("First question", options={"log": True}))

    (row,) = json.loads(capture("logs-list-json", "stdout"))
    assert response.session_id == row["conversation_id"]
    run, lookup = sorted(recorded(fake), key=lambda inv: inv["argv"][0] != "prompt")
    assert "--log" in run["argv"]
    assert lookup["argv"][:4] == ["logs", "list", "--json", "--count=0"]
    assert lookup["argv"][4].startswith("--id-gte=")


async def test_a_conversation_not_found_in_the_log_gives_no_session(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "runner-mock-chat")
    response = await llmrun.get_runner("llm").complete(ChatRequest.of("another prompt", options={"log": True}))

    assert response.content == "Hello from mock" and response.session_id is None


async def test_a_continued_conversation_keeps_its_id_without_a_lookup(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "runner-mock-chat")
    response = await llmrun.get_runner("llm").complete(ChatRequest.of("more", session_id="01conversation"))

    assert response.session_id == "01conversation"
    assert [inv["argv"][0] for inv in recorded(fake)] == ["prompt"]


# --- health and models --------------------------------------------------------------------


async def test_health_without_a_key_for_llms_default_model(fake: Path) -> None:
    report = await llmrun.get_runner("llm").health()

    assert report.status == "unauthenticated", report
    assert report.version == "0.36"
    assert report.message == "no key for gpt-5.6-luna: run `llm keys set openai` or set OPENAI_API_KEY"


async def test_health_with_the_key_variable_set(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    report = await llmrun.get_runner("llm").health()

    assert report.status == "ok", report
    assert report.message == "gpt-5.6-luna: key from OPENAI_API_KEY"


async def test_health_with_a_stored_key(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["keys", "list"], "keys-list-openai"]]))
    report = await llmrun.get_runner("llm").health()

    assert report.status == "ok", report
    assert report.message == "gpt-5.6-luna: key 'openai' stored in llm"


async def test_health_of_a_model_that_needs_no_key(fake: Path) -> None:
    report = await llmrun.get_runner("llm", default_model="mock-chat").health()

    assert report.status == "ok", report
    assert report.message == "mock-chat needs no key"


async def test_available_models_come_from_llm(fake: Path) -> None:
    models = await llmrun.get_runner("llm").available_models()

    ids = [m.id for m in models]
    assert ids[:2] == ["gpt-4o", "gpt-4o-mini"] and ids[-3:] == ["markov", "echo", "echo-needs-key"]
    assert all(m.source == "discovered" for m in models)


def test_parse_models_skips_options_and_the_default_line() -> None:
    text = capture("models-options-mock-chat", "stdout") + capture("models-list", "stdout")
    models = parse_models(text)

    assert models[0] == "mock-chat" and "gpt-5.6-luna" in models
    assert not any(m.startswith(("Default", "temperature")) for m in models)
