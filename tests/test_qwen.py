"""Qwen Code specifics: its command line, its settings file, its variant of stream-json, health."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message, process
from llmrun.registry import canonical_name, get_runner, runner_names
from llmrun.runners import qwen as qwen_module
from llmrun.runners.qwen import (
    RUN_SETTINGS,
    SYSTEM_PROMPT_ARGV_LIMIT,
    WRITE_TOOLS,
    QwenParser,
    QwenRunner,
    run_settings,
)

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun

CAPTURES = FIXTURES / "qwen"
SESSION = "6d561eae-58c7-4c18-84b2-1f07bb499c23"  # of mock-stream-json-partial


@pytest.fixture
def qwen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    (tool,) = [t for t in FAKE_TOOLS if t.runner == "qwen"]
    return FakeRun(tool, monkeypatch, record)


@pytest.fixture(autouse=True)
def no_machine_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No qwen system-defaults file of this machine takes part (tests may point at their own)."""
    monkeypatch.setenv("QWEN_CODE_SYSTEM_DEFAULTS_PATH", str(tmp_path / "absent-defaults.json"))


def invocation(request: ChatRequest, runner: QwenRunner | None = None) -> Iterator[process.Invocation]:
    inv = (runner or QwenRunner()).build_invocation(request, "qwen")
    try:
        yield inv
    finally:
        for path in inv.temp_files:
            os.remove(path)


def build(request: ChatRequest, runner: QwenRunner | None = None) -> tuple[process.Invocation, dict[str, Any]]:
    """The invocation, and the settings file it names (read before the file is removed)."""
    gen = invocation(request, runner)
    inv = next(gen)
    settings = json.loads(Path(inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"]).read_text())
    gen.close()
    return inv, settings


def argv_of(request: ChatRequest) -> list[str]:
    return build(request)[0].argv


def parse(name: str) -> tuple[list[llmrun.ChatChunk], QwenParser]:
    return parse_lines((CAPTURES / f"{name}.stdout").read_text().splitlines())


def parse_lines(lines: list[str]) -> tuple[list[llmrun.ChatChunk], QwenParser]:
    parser = QwenParser()
    chunks = [c for line in lines for c in parser.feed(line)]
    return chunks + parser.close(), parser


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "session_id": "s1", "parent_tool_use_id": None, **fields})


def text_delta(text: str) -> str:
    return event(
        "stream_event", event={"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )


# --- registry -----------------------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert "qwen" in runner_names()
    assert canonical_name("qwen_code") == canonical_name("qwen-code") == canonical_name("Qwen") == "qwen"
    runner = get_runner("qwen-code")
    assert isinstance(runner, QwenRunner)
    assert runner.default_model is None  # qwen's own configuration picks the model
    assert runner.capabilities.prompt_via_stdin and runner.capabilities.token_streaming


# --- the command line -------------------------------------------------------------------


def test_command_line_defaults() -> None:
    inv, settings = build(ChatRequest.of("-hello, a prompt with a leading dash"))
    assert inv.argv == [
        "qwen",
        "--output-format=stream-json",
        "--include-partial-messages",
        "--approval-mode=default",
        "--exclude-tools=" + ",".join(WRITE_TOOLS),
    ]
    assert inv.stdin == b"-hello, a prompt with a leading dash"
    assert inv.env_defaults == {"QWEN_CODE_NO_RELAUNCH": "true"}
    assert settings == RUN_SETTINGS
    assert settings["memory"] == {"enableManagedAutoMemory": False}
    assert settings["model"]["generationConfig"]["maxRetries"] == 0
    assert inv.temp_files == [inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"]]


def test_settings_file_is_private(temp_dir: Path) -> None:
    inv = QwenRunner().build_invocation(ChatRequest.of("hi"), "qwen")
    path = Path(inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"])
    assert path.parent.parent == temp_dir  # in llmrun's private directory there
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.remove(path)


async def test_temp_files_are_removed_after_the_run(qwen: FakeRun, temp_dir: Path) -> None:
    system = "rule " * SYSTEM_PROMPT_ARGV_LIMIT  # long enough for a file
    response = await qwen.runner().complete(ChatRequest.of("hi", system=system))
    assert response.content == "Hello from mock"
    (recorded,) = qwen.invocations()
    assert not any(arg.startswith("--system-prompt") for arg in recorded["argv"])
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == []


def test_model_tools_and_options_follow_the_request() -> None:
    argv = argv_of(
        ChatRequest.of(
            "hi",
            model="qwen3-coder-plus",
            allow_tools=True,
            session_id="odd-id",
            options={"approval_mode": "auto-edit", "max_session_turns": 3, "extra_args": ["--debug"]},
        )
    )
    assert "--model=qwen3-coder-plus" in argv
    assert "--approval-mode=auto-edit" in argv
    assert not any(arg.startswith("--exclude-tools") for arg in argv)
    assert "--resume=odd-id" in argv  # one argument: the id cannot turn into a flag
    assert "--max-session-turns=3" in argv
    assert argv[-1] == "--debug"
    assert "--approval-mode=yolo" in argv_of(ChatRequest.of("hi", allow_tools=True))
    assert "--approval-mode=plan" in argv_of(ChatRequest.of("hi", options={"approval_mode": "plan"}))


@pytest.mark.parametrize("mode", ["yolo", "auto-edit", "bogus"])
def test_approval_modes_that_run_tools_need_allow_tools(mode: str) -> None:
    with pytest.raises(llmrun.UnsupportedFeature) as caught:
        QwenRunner().build_invocation(ChatRequest.of("hi", options={"approval_mode": mode}), "qwen")
    assert caught.value.runner == "qwen"


def test_configured_default_model_and_extra_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.qwen]\nextra_args = ["--auth-type", "openai"]\ndefault_model = "mock-model"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    runner = get_runner("qwen")
    assert runner.extra_args == ["--auth-type", "openai"]
    inv, _ = build(ChatRequest.of("hi"), runner)  # type: ignore[arg-type]
    assert "--model=mock-model" in inv.argv


def test_system_prompt_short_in_argv_long_in_a_file() -> None:
    argv = argv_of(ChatRequest(messages=[Message.system("-Be terse"), Message.user("hi")], system="Use English"))
    assert "--system-prompt=-Be terse\n\nUse English" in argv
    long_system = "rule " * SYSTEM_PROMPT_ARGV_LIMIT
    gen = invocation(ChatRequest.of("hi", system=long_system))
    inv = next(gen)
    assert not any(arg.startswith("--system-prompt") for arg in inv.argv)
    path = inv.env["QWEN_SYSTEM_MD"]
    assert Path(path).read_text() == long_system and path in inv.temp_files
    gen.close()
    assert not Path(path).exists()


def test_history_is_flattened_without_a_session() -> None:
    request = ChatRequest(messages=[Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")])
    prompt = build(request)[0].stdin.decode()  # type: ignore[union-attr]
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")
    assert prompt.rstrip().endswith("Times 3?")


def test_resuming_a_session_sends_only_the_new_turn() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")], session_id="abc"
    )
    inv, _ = build(request)
    assert "--resume=abc" in inv.argv
    assert inv.stdin == b"second"


def test_prompt_over_what_qwen_reads_from_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qwen_module, "STDIN_LIMIT_UNITS", 10)
    build(ChatRequest.of("0123456789"))
    with pytest.raises(llmrun.UnsupportedFeature, match="stdin"):
        build(ChatRequest.of("0123456789x"))
    build(ChatRequest.of("012345678é"))  # counted as qwen counts: UTF-16 units
    with pytest.raises(llmrun.UnsupportedFeature):
        build(ChatRequest.of("012345678🙂"))  # one character, two UTF-16 units


def test_unsupported_requests_are_refused_not_dropped() -> None:
    with pytest.raises(llmrun.UnsupportedFeature):
        QwenRunner().check_request(ChatRequest.of("hi", tools=[llmrun.ToolSpec(name="f")]))


# --- the settings file: llmrun's defaults under the machine's own ---------------------------


def test_machine_defaults_are_kept_and_win(tmp_path: Path) -> None:
    machine = tmp_path / "system-defaults.json"
    machine.write_text(json.dumps({"model": {"generationConfig": {"maxRetries": 5}}, "ui": {"theme": "x"}}))
    merged = run_settings({"QWEN_CODE_SYSTEM_DEFAULTS_PATH": str(machine)})
    assert merged is not None
    assert merged["model"]["generationConfig"]["maxRetries"] == 5
    assert merged["ui"] == {"theme": "x"}
    assert merged["memory"] == {"enableManagedAutoMemory": False}


def test_machine_defaults_beside_the_system_settings(tmp_path: Path) -> None:
    (tmp_path / "system-defaults.json").write_text('{"memory": {"enableManagedAutoMemory": true}}')
    merged = run_settings({"QWEN_CODE_SYSTEM_SETTINGS_PATH": str(tmp_path / "settings.json")})
    assert merged is not None and merged["memory"] == {"enableManagedAutoMemory": True}
    assert run_settings({"QWEN_CODE_SYSTEM_SETTINGS_PATH": str(tmp_path / "elsewhere" / "s.json")}) == RUN_SETTINGS


def test_unreadable_machine_defaults_are_left_to_qwen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = tmp_path / "system-defaults.json"
    machine.write_text('{"memory": {} // a comment qwen accepts and JSON does not\n}')
    monkeypatch.setenv("QWEN_CODE_SYSTEM_DEFAULTS_PATH", str(machine))
    inv = QwenRunner().build_invocation(ChatRequest.of("hi"), "qwen")
    assert "QWEN_CODE_SYSTEM_DEFAULTS_PATH" not in inv.env and inv.temp_files == []


def test_the_runners_env_setting_is_honoured(tmp_path: Path) -> None:
    machine = tmp_path / "defaults.json"
    machine.write_text('{"model": {"generationConfig": {"maxRetries": 1}}}')
    runner = QwenRunner(env={"QWEN_CODE_SYSTEM_DEFAULTS_PATH": str(machine)})
    _, settings = build(ChatRequest.of("hi"), runner)
    assert settings["model"]["generationConfig"]["maxRetries"] == 1


# --- sampling parameters: the request's values over every settings file ------------------


def test_sampling_parameters_go_in_the_system_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = tmp_path / "system-settings.json"
    machine.write_text(
        json.dumps({"ui": {"theme": "x"}, "model": {"generationConfig": {"samplingParams": {"top_k": 3}}}})
    )
    monkeypatch.setenv("QWEN_CODE_SYSTEM_SETTINGS_PATH", str(machine))
    assert "QWEN_CODE_SYSTEM_SETTINGS_PATH" not in QwenRunner().build_invocation(ChatRequest.of("hi"), "qwen").env

    inv = QwenRunner().build_invocation(ChatRequest.of("hi", temperature=0.3, max_tokens=77, top_p=0.5, seed=7), "qwen")
    path = inv.env["QWEN_CODE_SYSTEM_SETTINGS_PATH"]
    settings = json.loads(Path(path).read_text())
    inv.remove_files()
    assert path in inv.temp_files and not Path(path).exists()
    assert settings["ui"] == {"theme": "x"}  # the machine's own system settings still hold
    params = settings["model"]["generationConfig"]["samplingParams"]
    assert params == {"top_k": 3, "temperature": 0.3, "top_p": 0.5, "max_tokens": 77}


def test_system_defaults_stay_found_beside_the_machines_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QWEN_CODE_SYSTEM_DEFAULTS_PATH")
    monkeypatch.setenv("QWEN_CODE_SYSTEM_SETTINGS_PATH", str(tmp_path / "settings.json"))
    (tmp_path / "system-defaults.json").write_text("{} // not plain JSON: left to qwen")
    inv = QwenRunner().build_invocation(ChatRequest.of("hi", temperature=0.3), "qwen")
    inv.remove_files()
    assert inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"] == str(tmp_path / "system-defaults.json")


def test_unreadable_system_settings_refuse_sampling_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = tmp_path / "settings.json"
    machine.write_text("{} // a comment")
    monkeypatch.setenv("QWEN_CODE_SYSTEM_SETTINGS_PATH", str(machine))
    with pytest.raises(llmrun.UnsupportedFeature, match="temperature"):
        QwenRunner().build_invocation(ChatRequest.of("hi", temperature=0.3), "qwen")


async def test_parameters_qwen_cannot_take_are_named_or_refused(
    qwen: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN_CODE_SYSTEM_SETTINGS_PATH", str(tmp_path / "absent-settings.json"))
    response = await qwen.runner().complete(ChatRequest.of("hi", temperature=0.3, seed=7, frequency_penalty=0.1))
    assert response.warnings == [
        "ignored parameter seed: Qwen Code has no way to set it",
        "ignored parameter frequency_penalty: Qwen Code has no way to set it",
    ]
    with pytest.raises(llmrun.UnsupportedFeature, match="seed"):
        await qwen.runner().complete(ChatRequest.of("hi", seed=7, strict_params=True))


# --- reading the captured output ---------------------------------------------------------


def test_partial_messages_stream_each_text_once() -> None:
    chunks, parser = parse("mock-stream-json-partial")
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop"
    # The run's own call: `result` adds qwen's memory-extraction call (24/14) on top.
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7, total_tokens=19)
    assert final.model == "mock-model" and final.session_id == SESSION
    assert parser.error is None and parser.finished


@pytest.mark.parametrize("name", ["mock-stream-json", "mock-json", "llmrun-text-partial"])
def test_other_shapes_of_the_same_answer(name: str) -> None:
    chunks, parser = parse(name)
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].session_id
    assert [c.is_final for c in chunks].count(True) == 1
    assert parser.finished and parser.error is None


def test_cached_tokens_are_not_counted_twice() -> None:
    chunks, _ = parse("llmrun-usage-cached-partial")
    usage = chunks[-1].usage
    assert usage == llmrun.Usage(input_tokens=12, output_tokens=7, cache_read_tokens=100, total_tokens=119)
    assert usage.to_openai()["prompt_tokens"] == 112  # what the API reported


@pytest.mark.parametrize(("limit", "reason"), [(None, "stop"), (8, "stop"), (7, "length")])
def test_an_answer_that_used_the_whole_limit_was_cut(limit: int | None, reason: str) -> None:
    parser = QwenParser(max_tokens=limit)  # the capture's answer is 7 tokens
    chunks = [
        c for line in (CAPTURES / "llmrun-text-partial.stdout").read_text().splitlines() for c in parser.feed(line)
    ]
    assert chunks[-1].finish_reason == reason


def test_a_resumed_session_reports_its_own_run_only() -> None:
    chunks, _ = parse("llmrun-resume-partial")
    result = json.loads((CAPTURES / "llmrun-resume-partial.stdout").read_text().splitlines()[-1])
    assert result["usage"]["input_tokens"] == 24  # qwen's total for the whole session
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (12, 7)


def test_thinking_streams_apart_from_the_text() -> None:
    chunks, _ = parse("llmrun-thinking-partial")
    assert "".join(c.thinking for c in chunks) == "Let me think. Done thinking."
    assert "".join(c.delta for c in chunks) == "Hello from mock"


def test_declined_tool_call_is_reported_not_run() -> None:
    chunks, _ = parse("llmrun-tooluse-partial")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    events = [c.agent_event for c in chunks if c.agent_event is not None]
    assert [e.kind for e in events] == ["tool_use", "tool_result", "permission_denied"]
    use, result, denied = events
    assert use.name == "run_shell_command" and use.input == {
        "command": "echo mock-tool-ran",
        "description": "Print a marker",
    }
    assert result.id == use.id == denied.id and result.is_error
    assert "declined" in result.output and "mock-tool-ran" not in result.output
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 14  # both turns


def test_allowed_tool_call_runs() -> None:
    chunks, _ = parse("llmrun-tooluse-partial-yolo")
    use, result = [c.agent_event for c in chunks if c.agent_event is not None]
    assert use.kind == "tool_use" and result.kind == "tool_result"
    assert not result.is_error and result.output == "mock-tool-ran"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("llmrun-401-partial", llmrun.AuthenticationError, "401 Incorrect API key"),
        ("mock-401-json", llmrun.AuthenticationError, "401 invalid x-api-key"),
        ("llmrun-429-partial", llmrun.RateLimitError, "429 Rate limit reached"),
        ("llmrun-500-partial", llmrun.ServiceUnavailable, "500 The server had an error"),
        ("noauth-stream", llmrun.AuthenticationError, "No auth type is selected"),
        ("noauth-json", llmrun.AuthenticationError, "No auth type is selected"),
        ("llmrun-nokey-partial", llmrun.AuthenticationError, "Missing API key"),
    ],
)
def test_api_errors_are_typed_and_never_an_answer(name: str, error: type, words: str) -> None:
    chunks, parser = parse(name)
    assert type(parser.error) is error, parser.error
    assert words in str(parser.error)
    assert parser.finished
    assert not any(c.delta or c.is_final for c in chunks), chunks
    if error is llmrun.AuthenticationError:
        assert parser.error.hint and "OPENAI_API_KEY" in parser.error.hint


def test_error_after_some_text_keeps_the_text_and_fails() -> None:
    lines = [
        event("system", subtype="init"),
        text_delta("Hello "),
        text_delta("[API Error: Connection error.]"),
        event("result", subtype="success", is_error=False, result="Hello [API Error: Connection error.]"),
    ]
    chunks, parser = parse_lines(lines)
    assert [c.delta for c in chunks] == ["Hello "]
    assert isinstance(parser.error, llmrun.ServiceUnavailable)


def test_error_in_a_whole_message_without_deltas() -> None:
    message = {"id": "m1", "content": [{"type": "text", "text": "[API Error: 429 slow down]"}]}
    lines = [event("assistant", message=message), event("result", is_error=False, result="[API Error: 429 slow down]")]
    chunks, parser = parse_lines(lines)
    assert chunks == [] and isinstance(parser.error, llmrun.RateLimitError)


def test_error_only_in_the_result_is_not_an_answer() -> None:
    # Without message events the result text would otherwise become the answer.
    chunks, parser = parse_lines([event("result", is_error=False, result="[API Error: 500 upstream failed]")])
    assert chunks == [] and isinstance(parser.error, llmrun.ServiceUnavailable)


def test_a_sub_agents_error_is_not_the_answers() -> None:
    sub = json.loads(text_delta("[API Error: 500 in a sub-agent]"))
    sub["parent_tool_use_id"] = "call_1"
    chunks, parser = parse_lines([json.dumps(sub), text_delta("fine"), event("result", result="fine")])
    assert parser.error is None and "".join(c.delta for c in chunks) == "fine"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[API Error: 403 Forbidden]", llmrun.AuthenticationError),
        ("[API Error: 404 The model `nope` does not exist or you do not have access to it.]", llmrun.ModelNotFound),
        ("[API Error: 400 This model's maximum context length is 8192 tokens.]", llmrun.ContextLengthExceeded),
        ("[API Error: 503 Service Unavailable]", llmrun.ServiceUnavailable),
        ("[API Error: Connection error.]", llmrun.ServiceUnavailable),
        ("[API Error: quota exceeded (Status: RESOURCE_EXHAUSTED)]", llmrun.RateLimitError),
        ("[API Error: Request had invalid credentials (Status: UNAUTHENTICATED)]", llmrun.AuthenticationError),
        ("[API Error: 400 Invalid value for temperature]", llmrun.RunnerError),
    ],
)
def test_error_texts_map_to_types(text: str, error: type) -> None:
    _, parser = parse_lines([text_delta(text), event("result", result=text)])
    assert type(parser.error) is error


def test_an_answer_that_merely_mentions_api_errors_is_an_answer() -> None:
    text = "qwen prints [API Error: 401 ...] when the key is wrong"
    chunks, parser = parse_lines([text_delta(text), event("result", result=text)])
    assert parser.error is None and "".join(c.delta for c in chunks) == text


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.stdout")), ids=lambda p: p.stem)
def test_every_capture_parses_without_raising(path: Path) -> None:
    parser = QwenParser()
    for line in path.read_text().splitlines():
        parser.feed(line)
    parser.close()


# --- exits the output does not explain --------------------------------------------------------


def test_exit_errors() -> None:
    runner = QwenRunner()
    missing = (CAPTURES / "llmrun-resume-missing.stderr").read_text()
    assert isinstance(runner.error_for_exit(1, missing), llmrun.SessionNotFound)
    assert isinstance(runner.error_for_exit(1, 'No saved session found with title "x".'), llmrun.SessionNotFound)
    old = runner.error_for_exit(1, "Unknown argument: include-partial-messages")
    assert isinstance(old, llmrun.ProcessFailed) and old.hint and "npm install" in old.hint
    assert isinstance(runner.error_for_exit(1, "No auth type is selected."), llmrun.AuthenticationError)
    assert type(runner.error_for_exit(1, "boom")) is llmrun.ProcessFailed


async def test_unknown_session_through_the_fake(qwen: FakeRun) -> None:
    qwen.scenario("llmrun-resume-missing")
    request = ChatRequest(messages=[Message.user("a"), Message.assistant("b"), Message.user("c")], session_id="x")
    with pytest.raises(llmrun.SessionNotFound) as caught:
        await qwen.runner().complete(request)
    assert caught.value.process_exit_code == 1
    assert "3f0c6f0e" in str(caught.value)


# --- health -----------------------------------------------------------------------------------


def auth_status(fake: FakeRun, capture: str) -> None:
    fake.monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["auth", "status"], capture]]))


@pytest.fixture
def no_auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_MODEL", "OPENAI_BASE_URL", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


async def test_health_with_auth_in_the_settings(qwen: FakeRun) -> None:
    report = await qwen.runner().health()
    assert report.status == "ok", report
    assert report.authenticated is True
    assert report.version == "0.15.10"
    assert "OpenAI-compatible Provider" in report.message


@pytest.mark.usefixtures("no_auth_env")
async def test_health_without_any_auth(qwen: FakeRun) -> None:
    auth_status(qwen, "auth-status")
    report = await qwen.runner().health()
    assert report.status == "unauthenticated", report
    assert report.hint and "qwen auth" in report.hint


@pytest.mark.usefixtures("no_auth_env")
async def test_health_with_an_incomplete_setup(qwen: FakeRun) -> None:
    auth_status(qwen, "auth-status-incomplete")
    report = await qwen.runner().health()
    assert report.status == "unauthenticated"
    assert "API key not found" in report.message


@pytest.mark.usefixtures("no_auth_env")
async def test_health_with_auth_from_the_environment(qwen: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    auth_status(qwen, "auth-status")  # `qwen auth status` reads only the settings
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert (await qwen.runner().health()).status == "unauthenticated"  # a model is needed too
    monkeypatch.setenv("OPENAI_MODEL", "mock-model")
    report = await qwen.runner().health()
    assert report.status == "ok" and "OPENAI_API_KEY" in report.message


@pytest.mark.usefixtures("no_auth_env")
async def test_health_with_auth_type_in_extra_args(qwen: FakeRun) -> None:
    auth_status(qwen, "auth-status")
    runner = qwen.runner(extra_args=["--auth-type", "openai"])
    assert (await runner.health()).status == "unauthenticated"
    runner = qwen.runner(extra_args=["--auth-type=openai"], env={"OPENAI_API_KEY": "sk-test"})
    report = await runner.health()
    assert report.status == "ok" and "openai" in report.message


async def test_auth_status_is_read_in_english(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_run_command(argv: list[str], **kwargs: Any) -> process.CommandResult:
        seen.update(argv=argv, env=kwargs.get("env"))
        return process.CommandResult(0, "✓ Authentication Method: anthropic\n", "")

    monkeypatch.setattr(process, "run_command", fake_run_command)
    assert await QwenRunner().check_auth("qwen") == (True, "Authentication Method: anthropic")
    assert seen["argv"] == ["qwen", "auth", "status"] and seen["env"]["QWEN_CODE_LANG"] == "en"


# --- images ---------------------------------------------------------------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_images_are_at_references_and_the_model_is_told_to_take_them() -> None:
    image = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    inv = QwenRunner().build_invocation(ChatRequest(messages=[Message.user("What is it?", images=[image])]), "qwen")
    try:
        (folder,) = [arg.partition("=")[2] for arg in inv.argv if arg.startswith("--include-directories=")]
        assert folder in inv.temp_files
        path = os.path.join(folder, "image-1.png")
        assert os.listdir(folder) == ["image-1.png"]
        assert inv.stdin == f"What is it?\n\n@{path}".encode()
        settings = json.loads(Path(inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"]).read_text())
        assert settings["model"]["generationConfig"]["modalities"] == {"image": True}
        assert settings["model"]["generationConfig"]["maxRetries"] == 0  # llmrun's other settings stay
    finally:
        for temp in inv.temp_files:
            process.remove_path(temp)


def test_the_machine_defaults_say_whether_the_model_takes_images(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    machine = tmp_path / "defaults.json"
    machine.write_text(json.dumps({"model": {"generationConfig": {"modalities": {"image": False}}}}))
    monkeypatch.setenv("QWEN_CODE_SYSTEM_DEFAULTS_PATH", str(machine))
    image = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    inv = QwenRunner().build_invocation(ChatRequest(messages=[Message.user("x", images=[image])]), "qwen")
    try:
        settings = json.loads(Path(inv.env["QWEN_CODE_SYSTEM_DEFAULTS_PATH"]).read_text())
        assert settings["model"]["generationConfig"]["modalities"] == {"image": False}
    finally:
        for temp in inv.temp_files:
            process.remove_path(temp)


def test_a_text_request_does_not_touch_the_modalities() -> None:
    inv, settings = build(ChatRequest.of("hi"))
    assert "modalities" not in settings["model"]["generationConfig"]
    assert not any(arg.startswith("--include-directories") for arg in inv.argv)
