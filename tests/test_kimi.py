"""Unit tests of the Kimi CLI runner: argv and lockdown, the parser, errors, the tombstone.

The transcripts in fixtures/kimi/ are captured from the real kimi-cli 1.51.0 (and the 1.52.0
tombstone) against a loopback mock, plus a few hand-made in the same format (see its
README.md); fixtures/bin/kimi replays them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message, process
from llmrun.runners.kimi import INSTALL, KimiParser, KimiRunner, agent_spec, classify, turn_usage

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "kimi"
SHARE = TRANSCRIPTS / "share"  # a session kimi saved: its wire.jsonl holds the token counts
SESSION = "4d8e6b9b-7d86-4056-bce6-9c6735059bca"
BASE = ["kimi", "--print", "--input-format=stream-json", "--output-format=stream-json"]


def transcript(name: str, suffix: str = "stdout") -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str) -> tuple[KimiParser, list[llmrun.ChatChunk]]:
    parser = KimiParser()
    chunks = [c for line in transcript(name).splitlines() for c in parser.feed(line)]
    parser.stderr = transcript(name, "stderr")
    return parser, chunks + parser.close()


@pytest.fixture
def built() -> Iterator[list[process.Invocation]]:
    """Invocations built in a test; their private files are removed afterwards."""
    made: list[process.Invocation] = []
    yield made
    for invocation in made:
        for path in invocation.temp_files:
            process.remove_path(path)


@pytest.fixture
def invocation(built: list[process.Invocation]):  # type: ignore[no-untyped-def]
    def build(request: ChatRequest) -> process.Invocation:
        made = KimiRunner().build_invocation(request, "kimi")
        built.append(made)
        return made

    return build


def agent_file(made: process.Invocation) -> dict | None:
    (path,) = [arg.partition("=")[2] for arg in made.argv if arg.startswith("--agent-file=")] or [None]
    return json.loads(Path(path).read_text()) if path else None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_KIMI_BIN", str(FAKE_BIN / "kimi"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def recorded(record: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line ---------------------------------------------------------------------


def test_prompt_goes_over_stdin_as_one_stream_json_user_message(invocation) -> None:  # type: ignore[no-untyped-def]
    made = invocation(ChatRequest.of("-rm -rf [/INST] ünïcode"))
    assert made.argv[: len(BASE)] == BASE
    assert not any("INST" in arg for arg in made.argv)
    assert made.stdin is not None and made.stdin.endswith(b"\n") and made.stdin.count(b"\n") == 1
    assert json.loads(made.stdin) == {"role": "user", "content": "-rm -rf [/INST] ünïcode"}


def test_locked_down_by_default_with_an_agent_without_tools(invocation) -> None:  # type: ignore[no-untyped-def]
    made = invocation(ChatRequest.of("hi"))
    spec = agent_file(made)
    assert spec == {"version": 1, "agent": {"extend": "default", "tools": [], "subagents": {}}}
    (mcp,) = [arg.partition("=")[2] for arg in made.argv if arg.startswith("--mcp-config-file=")]
    assert json.loads(Path(mcp).read_text()) == {"mcpServers": {}}  # not the user's MCP servers
    assert sorted(made.temp_files) == sorted([mcp, *[a.partition("=")[2] for a in made.argv if "--agent-file=" in a]])
    assert not any(arg in ("--yolo", "--yes", "-y", "--afk") for arg in made.argv)
    assert made.env == {"KIMI_DISABLE_TELEMETRY": "1", "KIMI_CLI_NO_AUTO_UPDATE": "1"}


def test_allow_tools_keeps_kimis_own_agent(invocation) -> None:  # type: ignore[no-untyped-def]
    made = invocation(ChatRequest.of("hi", allow_tools=True))
    assert agent_file(made) is None
    assert not any(arg.startswith("--mcp-config-file") for arg in made.argv) and made.temp_files == []
    spec = agent_file(invocation(ChatRequest.of("hi", allow_tools=True, system="Be terse.")))
    assert spec == {
        "version": 1,
        "agent": {"extend": "default", "system_prompt_args": {"ROLE_ADDITIONAL": "Be terse."}},
    }


def test_system_prompt_goes_in_the_agent_file_not_the_prompt(invocation) -> None:  # type: ignore[no-untyped-def]
    made = invocation(ChatRequest.of("hi", system="Answer in French."))
    assert agent_file(made)["agent"]["system_prompt_args"] == {"ROLE_ADDITIONAL": "Answer in French."}  # type: ignore[index]
    assert "French" not in (made.stdin or b"").decode()


def test_agent_spec_is_none_only_when_the_default_agent_will_do() -> None:
    assert agent_spec(None, tools=True) is None
    assert json.loads(agent_spec(None, tools=False) or "")["agent"]["tools"] == []


def test_model_session_cwd_and_options(invocation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    request = ChatRequest(
        messages=[Message.user("My name is Ann"), Message.assistant("Hi Ann"), Message.user("Name?")],
        model="-weird",
        session_id="f1c44a0d-5786-446b-ac07-74ec00f797f7",
        cwd=str(tmp_path),
        options={"max_steps": 3, "max_retries": 1, "thinking": False},
    )
    made = invocation(request)
    assert "--model=-weird" in made.argv
    assert "--session=f1c44a0d-5786-446b-ac07-74ec00f797f7" in made.argv
    assert f"--work-dir={tmp_path}" in made.argv and made.cwd == str(tmp_path)
    assert {"--max-steps-per-turn=3", "--max-retries-per-step=1", "--no-thinking"} <= set(made.argv)
    assert json.loads(made.stdin or b"")["content"] == "Name?"  # a resumed session gets only the new turn


def test_without_a_session_the_history_is_flattened_into_the_prompt(invocation) -> None:  # type: ignore[no-untyped-def]
    request = ChatRequest(messages=[Message.user("My name is Ann"), Message.assistant("Hi Ann"), Message.user("Name?")])
    content = json.loads(invocation(request).stdin or b"")["content"]
    assert "My name is Ann" in content and "Hi Ann" in content and content.rstrip().endswith("Name?")


def test_rich_gets_a_wide_terminal_unless_the_user_set_one(invocation) -> None:  # type: ignore[no-untyped-def]
    made = invocation(ChatRequest.of("hi"))
    assert made.env_defaults.get("COLUMNS") == "10000" and "COLUMNS" not in made.env


# --- the parser ---------------------------------------------------------------------------


def test_parser_reads_the_captured_answer_and_the_session_id_from_stderr() -> None:
    parser, chunks = replay("mock-print-stream-json")
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert parser.finished and parser.error is None
    assert chunks[-1].finish_reason == "stop" and chunks[-1].session_id == "c2047d41-4fc0-4611-b89c-132eac00be52"


def test_parser_reads_captured_tool_calls_and_results() -> None:
    parser, chunks = replay("mock-print-stream-json-tooluse")
    events = [c.agent_event for c in chunks if c.agent_event]
    assert [e.kind for e in events] == ["tool_use", "tool_result"]
    assert events[0].name == "Shell" and events[0].input == {"command": "echo mock-tool-ran"}
    assert events[0].id == events[1].id == "call_mock1"
    assert "".join(c.delta for c in chunks) == "Tool finished: Hello from mock"
    assert parser.finished


def test_parser_keeps_thinking_apart_and_separates_steps() -> None:
    parser, chunks = replay("llmrun-tooluse")
    assert "".join(c.thinking for c in chunks).startswith("The user wants a greeting")
    assert "".join(c.delta for c in chunks) == "Let me look.\n\nHello from mock"
    assert parser.finished


def test_output_that_ends_after_a_tool_call_is_not_an_answer() -> None:
    parser = KimiParser()
    lines = transcript("mock-print-stream-json-tooluse").splitlines()
    for line in lines[:2]:  # the tool call and its result, not the answer after them
        parser.feed(line)
    assert not parser.finished
    assert parser.close() == [] and parser.error is None  # the exit code or the cut tell the rest


def test_unknown_lines_are_skipped() -> None:
    parser = KimiParser()
    assert parser.feed('{"id":"n1","category":"task","type":"done","title":"t","body":"b"}') == []
    assert parser.feed('{"role":"assistant","content":[{"type":"image_url","image_url":{}}]}') == []
    assert parser.feed('{"role":"assistant","content":7,"tool_calls":"x"}') == []


# --- usage, from the session kimi saved ------------------------------------------------------


def test_usage_is_the_sum_of_the_last_turns_steps() -> None:
    usage = turn_usage(SHARE, SESSION)  # two steps of 12 input and 7 output tokens each
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (24, 14, 0)


def test_usage_counts_only_the_last_turn(tmp_path: Path) -> None:
    wire = tmp_path / "sessions" / "abc" / SESSION / "wire.jsonl"
    wire.parent.mkdir(parents=True)
    earlier = (SHARE / "sessions").glob(f"*/{SESSION}/wire.jsonl").__next__().read_text()
    later = [
        {"message": {"type": "TurnBegin", "payload": {"user_input": "again"}}},
        {
            "message": {
                "type": "StatusUpdate",
                "payload": {
                    "token_usage": {"input_other": 5, "output": 2, "input_cache_read": 30, "input_cache_creation": 4}
                },
            }
        },
        {"message": {"type": "TurnEnd", "payload": {}}},
    ]
    wire.write_text(earlier + "".join(json.dumps(event) + "\n" for event in later))
    usage = turn_usage(tmp_path, SESSION)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (5, 2, 30, 4)


def test_no_session_file_no_usage(tmp_path: Path) -> None:
    assert turn_usage(tmp_path, SESSION) is None
    assert turn_usage(SHARE, "../*") is None  # an id is never a path pattern


async def test_the_final_chunk_carries_the_saved_usage(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "mock-stdin-glob")
    monkeypatch.setenv("KIMI_SHARE_DIR", str(SHARE))
    response = await llmrun.get_runner("kimi").complete(ChatRequest.of("hi"))
    assert response.content == "I will run a command.\n\nTool finished: Hello from mock"
    assert response.session_id == SESSION
    assert response.usage is not None and response.usage.output_tokens == 14


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("mock-401-stream-json", llmrun.AuthenticationError),
        ("noauth-print", llmrun.AuthenticationError),
        ("mock-429-stream-json", llmrun.RateLimitError),
        ("mock-500-stream-json", llmrun.ServiceUnavailable),
        ("llmrun-connection-error", llmrun.ServiceUnavailable),
        ("llmrun-404-model", llmrun.ModelNotFound),
        ("llmrun-400-context", llmrun.ContextLengthExceeded),
    ],
)
def test_errors_on_stdout_are_typed(name: str, error: type[llmrun.RunnerError]) -> None:
    parser, chunks = replay(name)
    assert type(parser.error) is error
    assert not any(c.finish_reason for c in chunks)


def test_a_401_folded_by_rich_is_read_whole() -> None:
    parser, _ = replay("mock-401-stream-json")
    assert "authentica" in str(parser.error) and "invalid_api_key" in str(parser.error)
    assert parser.error is not None and parser.error.hint and "api_key" in parser.error.hint


def test_plain_text_that_is_no_error_is_not_classified() -> None:
    assert classify("[SandboxDebug] noise") is None


async def test_exit_75_without_words_is_service_unavailable(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "stop_after=0,exit=75")
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        await llmrun.get_runner("kimi").complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 75
    assert "To resume" not in str(caught.value)


async def test_a_run_removes_its_agent_file(fake: Path) -> None:
    response = await llmrun.get_runner("kimi").complete(ChatRequest.of("hi"))
    assert response.content == "Let me look.\n\nHello from mock"
    (run,) = recorded(fake)
    paths = [a.partition("=")[2] for a in run["argv"] if a.startswith(("--agent-file=", "--mcp-config-file="))]
    assert len(paths) == 2 and not any(os.path.exists(path) for path in paths)
    assert json.loads(run["stdin"]) == {"role": "user", "content": "hi"}


# --- the 1.52 tombstone -------------------------------------------------------------------


async def test_a_chat_with_the_tombstone_is_an_error_not_an_empty_answer(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "tombstone-print")
    with pytest.raises(llmrun.RunnerError) as caught:
        await llmrun.get_runner("kimi").complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 0
    assert caught.value.hint and INSTALL in caught.value.hint


async def test_health_says_the_tombstone_is_outdated_with_the_fix(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["--version"], "tombstone-version"]]))
    report = await llmrun.get_runner("kimi").health()
    assert report.status == "outdated" and report.version == "1.52.0"
    assert report.hint and INSTALL in report.hint


async def test_health_of_1_51_is_ok(fake: Path) -> None:
    report = await llmrun.get_runner("kimi").health()
    assert report.status == "ok" and report.version == "1.51.0"
    # Health runs `kimi --version` once: never a prompt (nor kimi bare) unless asked to probe.
    assert [run["argv"] for run in recorded(fake)] == [["--version"]]


def test_runner_is_registered_with_its_aliases() -> None:
    for name in ("kimi", "kimi-cli", "kimi_cli"):
        assert type(llmrun.get_runner(name)) is KimiRunner
    assert KimiRunner.aliases == ("kimi-cli", "kimi_cli")
