"""Claude Code specifics: its command line, its event dialect, its errors and health."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.registry import canonical_name, get_runner, get_runner_class, runner_names
from llmrun.runners.claude_code import SYSTEM_PROMPT_ARGV_LIMIT, ClaudeCodeRunner, ClaudeParser

from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun, prompt_in

CAPTURES = FIXTURES / "claude"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(FAKE_TOOLS[0], monkeypatch, record)


def parse(name: str) -> tuple[list[llmrun.ChatChunk], ClaudeParser]:
    parser = ClaudeParser()
    chunks = [c for line in (CAPTURES / f"{name}.stdout").read_text().splitlines() for c in parser.feed(line)]
    return chunks + parser.close(), parser


def argv_of(request: ChatRequest) -> list[str]:
    return ClaudeCodeRunner().build_invocation(request, "claude").argv


# --- the command line -------------------------------------------------------------------


def test_command_line_defaults() -> None:
    invocation = ClaudeCodeRunner().build_invocation(ChatRequest.of("hello"), "claude")
    argv = invocation.argv
    assert argv[:5] == ["claude", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
    assert "--model" not in argv  # none asked for: claude's own choice applies
    assert argv[argv.index("--tools") + 1] == ""  # agent tools off unless allowed
    assert "hello" not in argv and prompt_in(invocation.stdin) == "hello"
    assert "CLAUDECODE" in invocation.env_remove
    assert invocation.env_defaults["CLAUDE_CODE_MAX_RETRIES"] == "2"


def test_model_tools_and_options_follow_the_request() -> None:
    argv = argv_of(
        ChatRequest.of(
            "hi",
            model="opus",
            allow_tools=True,
            options={"permission_mode": "plan", "max_turns": 3, "extra_args": ["--bare"]},
        )
    )
    assert argv[argv.index("--model") + 1] == "opus"
    assert "--tools" not in argv
    assert argv[argv.index("--permission-mode") + 1] == "plan"
    assert argv[argv.index("--max-turns") + 1] == "3"
    assert argv[-1] == "--bare"


def test_configured_default_model_and_extra_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.claude_code]\ndefault_model = "haiku"\nextra_args = ["--effort", "low"]\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    runner = get_runner("claude")
    assert runner.default_model == "haiku"
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_MODEL", "opus")  # the environment overrides the file
    assert get_runner("claude").default_model == "opus"


def test_invalid_config_names_file_and_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.claude_code]\ntimeout = "soon"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    with pytest.raises(llmrun.ConfigError, match=r"config.toml.*timeout.*number of seconds"):
        get_runner("claude_code")


def test_system_prompt_short_in_argv_long_in_a_file() -> None:
    argv = argv_of(ChatRequest(messages=[Message.system("Be terse"), Message.user("hi")], system="Use English"))
    assert argv[argv.index("--system-prompt") + 1] == "Be terse\n\nUse English"
    long_system = "rule " * SYSTEM_PROMPT_ARGV_LIMIT
    invocation = ClaudeCodeRunner().build_invocation(ChatRequest.of("hi", system=long_system), "claude")
    path = invocation.argv[invocation.argv.index("--system-prompt-file") + 1]
    assert Path(path).read_text() == long_system and path in invocation.temp_files
    os.remove(path)


async def test_system_prompt_file_is_removed_after_the_run(claude: FakeRun) -> None:
    await claude.runner().complete(ChatRequest.of("hi", system="x" * (SYSTEM_PROMPT_ARGV_LIMIT + 1)))
    (invocation,) = claude.invocations()
    path = invocation["argv"][invocation["argv"].index("--system-prompt-file") + 1]
    assert not Path(path).exists()


def test_history_is_flattened_without_a_session() -> None:
    request = ChatRequest(messages=[Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")])
    prompt = prompt_in(ClaudeCodeRunner().build_invocation(request, "claude").stdin)
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")
    assert prompt.rstrip().endswith("Times 3?")


def test_resuming_a_session_sends_only_the_new_turn() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")], session_id="abc"
    )
    invocation = ClaudeCodeRunner().build_invocation(request, "claude")
    assert "--resume=abc" in invocation.argv and "abc" not in invocation.argv
    assert prompt_in(invocation.stdin) == "second"


async def test_child_environment(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDECODE", "1")
    await claude.runner().complete(ChatRequest.of("hi"))
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "7")  # the user's own choice wins
    await claude.runner().complete(ChatRequest.of("hi"))
    first, second = claude.invocations()
    assert "CLAUDECODE" not in first["env"]
    assert first["env"]["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert second["env"]["CLAUDE_CODE_MAX_RETRIES"] == "7"


async def test_sampling_parameters_are_named_as_ignored_or_refused(claude: FakeRun) -> None:
    request = ChatRequest.of("hi", temperature=0.3, top_p=0.5, seed=7, max_tokens=100)
    response = await claude.runner().complete(request)
    assert ClaudeCodeRunner.honoured_parameters == {}  # claude has no setting for any of them
    assert response.warnings == [
        f"ignored parameter {name}: Claude Code has no way to set it" for name in ("temperature", "top_p", "seed")
    ]
    (recorded,) = claude.invocations()
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in recorded["env"]  # a cap per request, not on the answer
    with pytest.raises(llmrun.UnsupportedFeature, match="seed"):
        await claude.runner().complete(ChatRequest.of("hi", seed=7, strict_params=True))
    assert len(claude.invocations()) == 1  # refused before claude started


def test_empty_requests_are_refused_before_starting_the_tool() -> None:
    with pytest.raises(llmrun.InvalidRequest, match="no message"):
        ClaudeCodeRunner().check_request(ChatRequest.of("  "))
    resumed = ChatRequest(messages=[Message.user("q"), Message.assistant("a")], session_id="s")
    with pytest.raises(llmrun.InvalidRequest, match="no new message"):
        ClaudeCodeRunner().check_request(resumed)


def test_unsupported_requests_are_refused_not_dropped() -> None:
    with pytest.raises(llmrun.UnsupportedFeature):
        ClaudeCodeRunner().check_request(ChatRequest.of("hi", tools=[llmrun.ToolSpec(name="f")]))
    image = llmrun.ImagePart(url="https://example.invalid/cat.png")  # claude takes images as data only
    with pytest.raises(llmrun.UnsupportedFeature, match="as data"):
        ClaudeCodeRunner().build_invocation(ChatRequest(messages=[Message.user("look", images=[image])]), "claude")


# --- reading the captured output ---------------------------------------------------------


def test_partial_messages_stream_each_text_once() -> None:
    chunks, parser = parse("mock-stream-json-partial")
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.cost_usd == pytest.approx(0.000235)
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7)
    assert final.model == "claude-opus-4-8" and final.session_id == "01871f75-0c93-4e8f-a53a-b32da0c71f20"


def test_without_partial_messages_the_whole_message_is_used() -> None:
    chunks, _ = parse("mock-stream-json")
    assert "".join(c.delta for c in chunks) == "Hello from mock"


def test_thinking_and_cache_usage() -> None:
    chunks, _ = parse("thinking-partial")
    assert "".join(c.thinking for c in chunks) == "The user greets me. A short friendly reply is enough."
    assert "".join(c.delta for c in chunks) == "Hello after thinking"
    usage = chunks[-1].usage
    assert usage is not None and (usage.cache_read_tokens, usage.cache_write_tokens) == (5, 3)


def test_agent_tool_use_and_result_are_events_not_text() -> None:
    chunks, _ = parse("mock-tooluse-stream-partial")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    events = [c.agent_event for c in chunks if c.agent_event]
    assert [(e.kind, e.name) for e in events] == [("tool_use", "Bash"), ("tool_result", None)]
    assert events[0].input == {"command": "echo mock-tool-ran", "description": "Print a marker"}
    assert events[1].output == "mock-tool-ran" and events[1].id == events[0].id


def test_structured_output_is_the_answer_as_json_text() -> None:
    parser = ClaudeParser(structured=True)
    lines = (CAPTURES / "mock-json-schema-stream.stdout").read_text().splitlines()
    chunks = [c for line in lines for c in parser.feed(line)] + parser.close()
    assert "".join(c.delta for c in chunks) == '{"name": "mock-name"}'  # not the preamble
    assert not [c.agent_event for c in chunks if c.agent_event]  # claude's own mechanism, not an agent's act
    assert chunks[-1].finish_reason == "stop" and chunks[-1].cost_usd == pytest.approx(0.000235)


def test_without_a_schema_the_same_output_reads_as_before() -> None:
    chunks, _ = parse("mock-json-schema-stream")
    assert "".join(c.delta for c in chunks) == "I will run a command."
    assert chunks[-1].finish_reason == "tool_calls"


def test_without_a_structured_output_the_held_text_is_the_answer() -> None:
    parser = ClaudeParser(structured=True)
    lines = (CAPTURES / "mock-stream-json-partial.stdout").read_text().splitlines()
    chunks = [c for line in lines for c in parser.feed(line)] + parser.close()
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]
    assert chunks[-1].finish_reason == "stop"


async def test_json_schema_run_answers_with_the_json(claude: FakeRun) -> None:
    claude.scenario("mock-json-schema-stream")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    response = await get_runner("claude_code").complete(ChatRequest.of("give name", json_schema=schema))
    assert json.loads(response.content) == {"name": "mock-name"}
    assert response.finish_reason == "stop" and response.tool_calls == []


def test_retries_are_reported_as_activity() -> None:
    chunks, parser = parse("mock-529-stream-partial-retries2")
    retries = [c.agent_event for c in chunks if c.agent_event and c.agent_event.kind == "retry"]
    assert len(retries) == 2 and "529" in (retries[0].message or "")
    assert isinstance(parser.error, llmrun.ServiceUnavailable)
    assert not any(c.delta for c in chunks)  # the error text is not passed off as an answer


@pytest.mark.parametrize(
    ("capture", "error", "words"),
    [
        ("mock-401-stream", llmrun.AuthenticationError, "Invalid API key"),
        ("noauth-stream", llmrun.AuthenticationError, "Not logged in"),
        ("mock-500-stream-retries0", llmrun.ServiceUnavailable, "500"),
        ("mock-maxturns1-tooluse", llmrun.RunnerError, "maximum number of turns"),
    ],
)
def test_failed_results_become_typed_errors(capture: str, error: type, words: str) -> None:
    _, parser = parse(capture)
    assert type(parser.error) is error
    assert words in str(parser.error)


def test_rate_limit_and_model_errors_from_result_fields() -> None:
    parser = ClaudeParser()
    limited = {
        "type": "result",
        "is_error": True,
        "api_error_status": 429,
        "result": "API Error: Request rejected (429)",
    }
    assert isinstance(parser.error_from_result(limited), llmrun.RateLimitError)
    missing = {"type": "result", "is_error": True, "api_error_status": 404, "result": "model: nope"}
    assert isinstance(parser.error_from_result(missing), llmrun.ModelNotFound)
    long = {"type": "result", "is_error": True, "api_error_status": 400, "result": "Prompt is too long"}
    assert isinstance(parser.error_from_result(long), llmrun.ContextLengthExceeded)
    # In stream-json mode a bad --resume id is reported as a failed result, not on stderr.
    gone = {"type": "result", "is_error": True, "result": "No conversation found with session ID: 123"}
    assert isinstance(parser.error_from_result(gone), llmrun.SessionNotFound)


async def test_missing_session_is_session_not_found(claude: FakeRun) -> None:
    claude.scenario("mock-resume-missing")
    with pytest.raises(llmrun.SessionNotFound, match="No conversation found"):
        await claude.runner().complete(ChatRequest.of("q", session_id="99999999-2222-3333-4444-555555555555"))


async def test_not_logged_in_carries_a_login_hint(claude: FakeRun) -> None:
    claude.scenario("noauth-stream")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await claude.runner().complete(ChatRequest.of("hi"))
    assert caught.value.hint and "claude auth login" in caught.value.hint
    assert caught.value.process_exit_code == 1


# --- health -----------------------------------------------------------------------------


async def test_health_ok_unauthenticated_and_probe(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    report = await claude.runner().health(probe=True)
    assert (report.status, report.version, report.authenticated) == ("ok", "2.1.197", True)
    assert report.latency_ms is not None
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["auth", "status"], "auth-status"]]))
    report = await claude.runner().health()
    assert report.status == "unauthenticated" and report.hint and "login" in report.hint


async def test_health_probe_that_fails_auth(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    report = await claude.runner().health(probe=True)
    assert report.status == "unauthenticated"


async def test_health_outdated_and_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "claude"
    old.write_text("#!/bin/sh\necho '1.0.3 (Claude Code)'\n")
    old.chmod(0o755)
    report = await ClaudeCodeRunner(binary=str(old)).health()
    assert report.status == "outdated" and report.version == "1.0.3"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = await ClaudeCodeRunner().health()
    assert report.status == "not_installed"
    assert report.hint and "npm install -g @anthropic-ai/claude-code" in report.hint


# --- lookup -----------------------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert canonical_name("claude") == canonical_name("Claude-Code") == "claude_code"
    assert get_runner_class("claude") is ClaudeCodeRunner
    assert "claude_code" in runner_names()
    with pytest.raises(llmrun.RunnerNotFound, match="known runners: claude_code"):
        get_runner("nope")


def test_binary_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_BIN", str(FAKE_BIN / "claude"))
    assert ClaudeCodeRunner().resolve_binary() == str(FAKE_BIN / "claude")


def test_third_party_runners_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    class EchoRunner(ClaudeCodeRunner):
        name = "echo_plugin"

    class EntryPoint:
        name = "echo_plugin"

        def load(self) -> type:
            return EchoRunner

    monkeypatch.setattr("llmrun.registry._entry_points", lambda: {"echo_plugin": EntryPoint()})
    assert "echo_plugin" in runner_names()
    assert isinstance(get_runner("echo_plugin"), EchoRunner)


def test_metadata(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANTHROPIC_MODEL", raising=False)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path))  # no settings: claude's built-in default
    meta = ClaudeCodeRunner().metadata()
    assert meta.name == "claude_code" and meta.display_name == "Claude Code"
    assert meta.capabilities.token_streaming and meta.capabilities.cost
    assert meta.default_model is None and not any(m.is_default for m in meta.models)
    assert any("sonnet" in m.aliases for m in meta.models)  # the built-in list stays


def test_sync_convenience(claude: FakeRun) -> None:
    response = llmrun.complete("claude", "Say hi", model="sonnet")
    assert response.content == "Hello from mock"


async def test_health_reports_a_failing_auth_check_as_error(claude: FakeRun) -> None:
    class HangingAuth(ClaudeCodeRunner):
        async def check_auth(self, binary: str) -> tuple[bool | None, str]:
            raise llmrun.RunnerTimeout("no output for 15 s")

    report = await HangingAuth().health()
    assert report.status == "error" and "auth check failed" in report.message


# --- images ---------------------------------------------------------------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_images_go_as_image_blocks_of_one_stream_json_message() -> None:
    image = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    request = ChatRequest(messages=[Message.user("What is this?", images=[image])], system="Be brief.")
    inv = ClaudeCodeRunner().build_invocation(request, "claude")
    assert inv.argv[inv.argv.index("--input-format") + 1] == "stream-json"
    assert inv.argv[inv.argv.index("--system-prompt") + 1] == "Be brief."
    assert inv.stdin is not None and inv.stdin.endswith(b"\n")
    line = json.loads(inv.stdin)
    assert line["type"] == "user" and line["message"]["role"] == "user"
    assert line["message"]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA}},
        {"type": "text", "text": "What is this?"},
    ]
    assert inv.temp_files == []  # the image travels on stdin: no file


def test_a_one_shot_turn_uses_stream_json_input_without_print_mode() -> None:
    # The invocation claude-agent-sdk uses reaches the model sooner than `-p` with text.
    inv = ClaudeCodeRunner().build_invocation(ChatRequest.of("hi"), "claude")
    assert "-p" not in inv.argv and "--print" not in inv.argv
    assert inv.argv[inv.argv.index("--input-format") + 1] == "stream-json"
    assert inv.stdin is not None and inv.stdin.count(b"\n") == 1 and inv.stdin.endswith(b"\n")
    assert json.loads(inv.stdin)["message"] == {"role": "user", "content": [{"type": "text", "text": "hi"}]}


def test_a_resumed_session_sends_only_the_new_turns_images() -> None:
    old = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    new = llmrun.ImagePart(url=f"data:image/gif;base64,{PNG_DATA}")
    history = [Message.user("first", images=[old]), Message.assistant("a cat"), Message.user("and this?", images=[new])]
    inv = ClaudeCodeRunner().build_invocation(ChatRequest(messages=history, session_id="abc-1"), "claude")
    assert inv.stdin is not None
    blocks = json.loads(inv.stdin)["message"]["content"]
    assert [b["source"]["media_type"] for b in blocks if b["type"] == "image"] == ["image/gif"]


def test_an_image_of_another_kind_or_bad_data_is_refused() -> None:
    svg = llmrun.ImagePart(data="PHN2Zz4=", media_type="image/svg+xml")
    broken = llmrun.ImagePart(data="not base64!", media_type="image/png")
    for image in (svg, broken):
        with pytest.raises(llmrun.UnsupportedFeature):
            ClaudeCodeRunner().build_invocation(ChatRequest(messages=[Message.user("x", images=[image])]), "claude")
