"""Unit tests of the gptme runner: argv and lock-down, the parser, errors, sessions, health.

fixtures/gptme/ holds runs of the real gptme 0.35.1 against a loopback mock; fixtures/bin/gptme
replays them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message, parameters
from llmrun.runners.gptme import (
    DEFAULT_MAX_RETRIES,
    SYSTEM_PROMPT_ARGV_LIMIT,
    GptmeParser,
    GptmeRunner,
    _generate_command,
)

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "gptme"


def transcript(name: str, suffix: str) -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str) -> tuple[GptmeParser, list[llmrun.ChatChunk]]:
    parser = GptmeParser(model="openai/mock-model")
    chunks = [c for line in transcript(name, "stdout").splitlines(keepends=True) for c in parser.feed(line)]
    return parser, chunks + parser.close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_GPTME_BIN", str(FAKE_BIN / "gptme"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def invocations(record: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line: one direct generation, no agent ----------------------------------------


def test_argv_is_a_direct_generation_with_the_prompt_on_stdin() -> None:
    request = ChatRequest(
        messages=[Message.system("-be terse"), Message.user("-hello")],
        model="openai/gpt-5",
        temperature=0.2,
        max_tokens=50,
    )
    invocation = GptmeRunner().build_invocation(request, "/nowhere/gptme")
    assert invocation.argv == [
        "/nowhere/gptme",
        "llm",
        "generate",
        "--output-format=json",
        "--model=openai/gpt-5",
        "--system=-be terse",
        "--temperature=0.2",
        "--max-tokens=50",
    ]
    assert invocation.stdin == b"-hello"
    # gptme's chat command (`-n`), its tools and its `complete` nudge loop are never used.
    assert not any(arg in ("-n", "--non-interactive", "-t", "--tools") for arg in invocation.argv)


def test_a_parameter_without_a_flag_is_refused_under_strict_params() -> None:
    request = ChatRequest.of("hi", temperature=0.2, top_p=0.5, seed=7, strict_params=True)
    with pytest.raises(llmrun.UnsupportedFeature, match="gptme cannot honour top_p, seed"):
        parameters.warnings_for(GptmeRunner(), request)
    assert "--temperature=0.2" in GptmeRunner().build_invocation(request, "gptme").argv


def test_environment_keeps_telemetry_off_and_bounds_retries() -> None:
    invocation = GptmeRunner().build_invocation(ChatRequest.of("hi"), "gptme")
    assert invocation.env["GPTME_TELEMETRY_ENABLED"] == "false"
    assert invocation.env["PYTHONIOENCODING"] == "utf-8"
    assert "GPTME_LLM_MAX_RETRIES" not in invocation.env  # the user's own setting wins
    assert invocation.env_defaults["GPTME_LLM_MAX_RETRIES"] == str(DEFAULT_MAX_RETRIES)
    chosen = GptmeRunner().build_invocation(ChatRequest.of("hi", options={"max_retries": 1}), "gptme")
    assert chosen.env["GPTME_LLM_MAX_RETRIES"] == "1"


def test_long_system_prompt_goes_with_the_prompt_not_in_argv() -> None:
    system = "rule " * (SYSTEM_PROMPT_ARGV_LIMIT // 4)
    invocation = GptmeRunner().build_invocation(
        ChatRequest(messages=[Message.system(system), Message.user("hi")]), "gptme"
    )
    assert not any("rule rule" in arg for arg in invocation.argv)
    assert invocation.stdin is not None
    text = invocation.stdin.decode()
    assert system.strip() in text and text.endswith("hi")


def test_gptme_util_beside_the_resolved_gptme_is_run_directly(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    for name in ("gptme", "gptme-util"):
        (venv / name).write_text("#!/bin/sh\n")
        (venv / name).chmod(0o755)
    linked = tmp_path / "gptme"
    linked.symlink_to(venv / "gptme")
    assert _generate_command(str(linked)) == [str(venv / "gptme-util"), "llm", "generate"]
    os.remove(venv / "gptme-util")
    assert _generate_command(str(linked)) == [str(linked), "llm", "generate"]


# --- the parser on captured output ------------------------------------------------------------


def test_parser_reads_the_answer_and_usage() -> None:
    parser, chunks = replay("generate-json-system")
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.model == "openai/mock-model"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_tokens) == (12, 7, 100)
    assert parser.finished


def test_parser_splits_reasoning_from_the_answer() -> None:
    _, chunks = replay("generate-json-reasoning")
    assert "".join(c.thinking for c in chunks) == "**Thinking it over** The user greets me; a short reply is enough."
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    usage = chunks[-1].usage
    assert usage is not None and usage.reasoning_tokens == 3


def test_parser_without_the_result_object_is_unfinished() -> None:
    parser = GptmeParser()
    assert parser.feed('{"content": "Hello fr') == []
    assert parser.feed("Traceback (most recent call last):") == []
    assert parser.close() == []
    assert not parser.finished


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("generate-json-401", llmrun.AuthenticationError),
        ("generate-json-nokey", llmrun.AuthenticationError),
        ("generate-json-noprovider", llmrun.AuthenticationError),
        ("generate-json-429", llmrun.RateLimitError),
        ("generate-json-500", llmrun.ServiceUnavailable),
        ("generate-json-connrefused", llmrun.ServiceUnavailable),
        ("generate-json-model-not-found", llmrun.ModelNotFound),
    ],
)
def test_captured_failures_are_typed(name: str, error: type[llmrun.RunnerError]) -> None:
    found = GptmeRunner().error_for_exit(1, transcript(name, "stderr"))
    assert type(found) is error
    assert "Error generating response" not in str(found)


def test_context_length_and_missing_util_are_typed() -> None:
    runner = GptmeRunner()
    context = "Error generating response: Responses stream response.failed: context_length_exceeded: too long\n"
    assert isinstance(runner.error_for_exit(1, context), llmrun.ContextLengthExceeded)
    missing = (
        "Error: 'llm' is a gptme-util subcommand but gptme-util is not installed.\n"
        "Install it with: pip install gptme[util]\n"
    )
    assert isinstance(runner.error_for_exit(1, missing), llmrun.BinaryNotFound)
    assert isinstance(runner.error_for_exit(1, "Segmentation fault\n"), llmrun.ProcessFailed)


# --- sessions kept by the runner --------------------------------------------------------------


async def test_a_session_replays_its_earlier_turns(fake: Path) -> None:
    runner = GptmeRunner()
    first = await runner.complete(ChatRequest.of("first question"))
    assert first.session_id
    request = ChatRequest(
        messages=[Message.user("first question"), Message.assistant("ignored"), Message.user("second question")],
        session_id=first.session_id,
    )
    await runner.complete(request)
    stdin = str(invocations(fake)[-1]["stdin"])
    assert "first question" in stdin and "Hello from mock" in stdin and stdin.endswith("second question")
    assert "ignored" not in stdin  # the runner's own record of the answer is replayed


async def test_unknown_session_is_session_not_found(fake: Path) -> None:
    with pytest.raises(llmrun.SessionNotFound):
        await GptmeRunner().complete(ChatRequest.of("hi", session_id="never-made"))
    assert invocations(fake) == []


# --- health ------------------------------------------------------------------------------------


async def test_health_reports_version_and_providers(fake: Path) -> None:
    report = await GptmeRunner().health()
    assert report.status == "ok" and report.version == "0.35.1"
    assert report.authenticated is True and "openai" in (report.message or "")


async def test_health_without_a_provider_is_unauthenticated(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["--version-json"], "version-json-noprovider"]]))
    report = await GptmeRunner().health()
    assert report.status == "unauthenticated"
    assert report.hint and "OPENAI_API_KEY" in report.hint
