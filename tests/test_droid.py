"""Unit tests of the Factory Droid runner: argv and lockdown, the parser on captured lines,
error typing, sessions, health, and droid's hazards (exit 0 on SIGTERM, a command the model
calls low risk running in droid's default mode).

The transcripts in fixtures/droid/ are captured from the real droid 0.215.0 against a
loopback mock; fixtures/bin/droid replays them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.droid import (
    LOGIN_HINT,
    NO_TOOLS,
    DroidParser,
    DroidRunner,
    classify,
    custom_models,
)

from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun, still_alive
from .test_session_contract import received

TRANSCRIPTS = FIXTURES / "droid"
SESSION = "a73a6ddd-2a40-41d1-b70e-5f2fb9554be7"
BASE = ["droid", "exec", "--output-format=stream-json"]


def transcript(name: str, suffix: str = "stdout") -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str) -> tuple[DroidParser, list[llmrun.ChatChunk]]:
    parser = DroidParser()
    chunks = [c for line in transcript(name).splitlines() for c in parser.feed(line)]
    return parser, chunks + parser.close()


def invocation(request: ChatRequest, **settings: object):  # type: ignore[no-untyped-def]
    return DroidRunner(**settings).build_invocation(request, "droid")  # type: ignore[arg-type]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_DROID_BIN", str(FAKE_BIN / "droid"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def recorded(record: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line and the lockdown ----------------------------------------------------


def test_default_run_gives_the_model_no_tools_and_sends_the_prompt_on_stdin() -> None:
    inv = invocation(ChatRequest.of("-hello"))
    assert inv.argv[:-1] == [*BASE, f"--only-tools={NO_TOOLS}"]
    assert inv.stdin == b"-hello"
    assert not any(arg.startswith(("--auto", "--skip-permissions")) for arg in inv.argv)
    assert inv.env_defaults["FACTORY_DROID_AUTO_UPDATE_ENABLED"] == "false"
    assert inv.env_defaults["OTEL_SDK_DISABLED"] == "true"
    # No model named: droid's configured one may be a Factory model, which Airgap Mode refuses.
    assert "FACTORY_AIRGAP_ENABLED" not in inv.env_defaults


def test_the_users_hooks_are_off_through_a_private_runtime_settings_file() -> None:
    inv = invocation(ChatRequest.of("hi"))
    (flag,) = [arg for arg in inv.argv if arg.startswith("--settings=")]
    path = flag.split("=", 1)[1]
    assert json.loads(Path(path).read_text()) == {"hooks": {"hooksDisabled": True}}
    assert path in inv.temp_files and os.stat(path).st_mode & 0o077 == 0
    for request in (ChatRequest.of("hi", allow_tools=True), ChatRequest.of("hi", options={"hooks": True})):
        assert not any(arg.startswith("--settings") for arg in invocation(request).argv)


def test_a_custom_model_runs_in_airgap_mode_a_factory_model_does_not() -> None:
    custom = invocation(ChatRequest.of("hi", model="custom:mock-model"))
    assert "--model=custom:mock-model" in custom.argv
    assert custom.env_defaults["FACTORY_AIRGAP_ENABLED"] == "1"
    hosted = invocation(ChatRequest.of("hi", model="claude-opus-4-8"))
    assert "--model=claude-opus-4-8" in hosted.argv
    assert "FACTORY_AIRGAP_ENABLED" not in hosted.env_defaults
    forced = invocation(ChatRequest.of("hi", options={"airgap": True}))
    assert forced.env_defaults["FACTORY_AIRGAP_ENABLED"] == "1"
    off = invocation(ChatRequest.of("hi", model="custom:mock-model", options={"airgap": False}))
    assert "FACTORY_AIRGAP_ENABLED" not in off.env_defaults


def test_a_model_starting_with_a_dash_stays_one_argument() -> None:
    inv = invocation(ChatRequest.of("hi", model="--skip-permissions-unsafe"))
    assert "--model=--skip-permissions-unsafe" in inv.argv
    assert "--skip-permissions-unsafe" not in inv.argv


def test_read_only_tools_are_droids_reading_tools() -> None:
    inv = invocation(ChatRequest.of("hi", options={"tools": "read-only"}))
    assert "--only-tools=Read,LS,Grep,Glob" in inv.argv
    assert not any(arg.startswith("--auto") for arg in inv.argv)


def test_allow_tools_gives_all_tools_with_medium_autonomy() -> None:
    inv = invocation(ChatRequest.of("hi", allow_tools=True))
    assert not any(arg.startswith("--only-tools") for arg in inv.argv)
    assert "--auto=medium" in inv.argv
    unsafe = invocation(ChatRequest.of("hi", allow_tools=True, options={"autonomy": "unsafe"}))
    assert "--skip-permissions-unsafe" in unsafe.argv
    assert not any(arg.startswith("--auto") for arg in unsafe.argv)


def test_autonomy_needs_allow_tools_and_unknown_values_are_refused() -> None:
    with pytest.raises(llmrun.UnsupportedFeature, match="allow_tools"):
        invocation(ChatRequest.of("hi", options={"autonomy": "high"}))
    with pytest.raises(llmrun.UnsupportedFeature, match="autonomy"):
        invocation(ChatRequest.of("hi", allow_tools=True, options={"autonomy": "max"}))
    with pytest.raises(llmrun.UnsupportedFeature, match="tools"):
        invocation(ChatRequest.of("hi", options={"tools": "all"}))


def test_system_prompt_goes_in_a_private_file_not_argv() -> None:
    request = ChatRequest(messages=[Message.system("Be terse. " * 10), Message.user("hi")])
    inv = invocation(request)
    (flag,) = [arg for arg in inv.argv if arg.startswith("--append-system-prompt-file=")]
    path = flag.split("=", 1)[1]
    try:
        assert Path(path).read_text() == "Be terse. " * 10
        assert os.stat(path).st_mode & 0o077 == 0
        assert path in inv.temp_files
        assert "Be terse." not in inv.stdin.decode()
    finally:
        os.unlink(path)


def test_a_session_is_continued_by_fork_with_only_the_new_turns() -> None:
    request = ChatRequest(
        messages=[Message.user("My name is Ann"), Message.assistant("Hi Ann"), Message.user("What is my name?")],
        session_id=SESSION,
    )
    inv = invocation(request)
    assert f"--fork={SESSION}" in inv.argv
    # -s fetches the session from Factory's servers and fails offline: never used.
    assert not any(arg in ("-s", "--session-id") or arg.startswith("--session-id") for arg in inv.argv)
    assert inv.stdin == b"What is my name?"


def test_extra_args_of_the_settings_go_after_exec(fake: Path) -> None:
    runner = DroidRunner(extra_args=["--reasoning-effort=low"])
    inv = runner.prepared_invocation(ChatRequest.of("hi"))
    assert inv.argv[1:3] == ["exec", "--reasoning-effort=low"]


# --- the parser on captured transcripts ---------------------------------------------------


def test_answer_usage_session_and_model_from_a_captured_run() -> None:
    parser, chunks = replay("llmrun-text")
    assert "".join(c.delta or "" for c in chunks) == "Hello from mock"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.session_id == "a73a6ddd-2a40-41d1-b70e-5f2fb9554be7"
    assert last.model == "custom:Mock-0"
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (12, 7)
    assert parser.finished and parser.error is None


def test_a_refused_tool_is_a_permission_denial_and_messages_are_paragraphs() -> None:
    _, chunks = replay("llmrun-tooluse")
    events = [c.agent_event for c in chunks if c.agent_event]
    assert [e.kind for e in events] == ["tool_use", "permission_denied"]
    assert events[0].name == "Execute" and events[0].input["command"] == "touch created-by-mock.txt"
    assert events[1].is_error and "not permitted" in str(events[1].output)
    assert "".join(c.delta or "" for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    # What the real droid did: nothing was created.
    assert transcript("llmrun-tooluse", "workdir-after.txt").strip() == ""


def test_an_allowed_tool_result_is_reported() -> None:
    _, chunks = replay("llmrun-tooluse-allowed")
    (result,) = [c.agent_event for c in chunks if c.agent_event and c.agent_event.kind == "tool_result"]
    assert not result.is_error and "Command completed successfully" in str(result.output)


def test_droids_default_mode_runs_what_the_model_calls_low_risk() -> None:
    # Why llmrun gives the model no tools: droid's gate trusts the model's own risk label.
    _, chunks = replay("mock-exec-stream-json-tooluse-touch-default")
    (result,) = [c.agent_event for c in chunks if c.agent_event and c.agent_event.kind == "tool_result"]
    assert not result.is_error
    assert "created-by-mock.txt" in transcript("mock-exec-stream-json-tooluse-touch-default", "workdir-after.txt")


def test_api_error_is_typed_from_the_first_error_event_not_exec_failed() -> None:
    parser, chunks = replay("llmrun-401")
    assert isinstance(parser.error, llmrun.AuthenticationError)
    assert parser.error.message.startswith("401 Incorrect API key")
    assert parser.error.hint == LOGIN_HINT
    assert not any(c.is_final for c in chunks)


def test_a_429_droid_gave_up_on_is_a_rate_limit_error() -> None:
    parser, _ = replay("llmrun-429")
    assert isinstance(parser.error, llmrun.RateLimitError)
    assert parser.error.message.startswith("429 Rate limit reached")


def test_no_login_is_an_authentication_error() -> None:
    parser, _ = replay("llmrun-noauth")
    assert isinstance(parser.error, llmrun.AuthenticationError)
    assert parser.error.message.startswith("Authentication failed")


def test_a_run_stopped_at_a_tool_is_an_error_not_an_answer() -> None:
    parser, _ = replay("mock-exec-stream-json-tooluse-medium-default")
    assert type(parser.error) is llmrun.RunnerError
    assert "insufficient permission" in parser.error.message
    assert parser.error.hint and "allow_tools" in parser.error.hint


def test_completion_text_is_used_only_without_assistant_messages() -> None:
    parser = DroidParser()
    usage = {"input_tokens": 1, "output_tokens": 2}
    line = json.dumps({"type": "completion", "finalText": "only here", "usage": usage})
    chunks = parser.feed(line)
    assert [c.delta for c in chunks if c.delta] == ["only here"]
    _, replayed = replay("llmrun-text")
    assert [c.delta for c in replayed if c.delta] == ["Hello from mock"]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("429 Rate limit reached for requests", llmrun.RateLimitError),
        ("500 The server had an error", llmrun.ServiceUnavailable),
        ("Unable to connect. Is the computer able to access the url?", llmrun.ServiceUnavailable),
        ("403 forbidden", llmrun.AuthenticationError),
        ("400 This model's maximum context length is 8192 tokens", llmrun.ContextLengthExceeded),
        ("404 The model `x` does not exist", llmrun.ModelNotFound),
        ("Failed to fetch session", llmrun.SessionNotFound),
    ],
)
def test_classify(message: str, error: type) -> None:
    assert type(classify(message)) is error


def test_words_that_say_nothing_known_are_not_classified() -> None:
    assert classify("Exec failed") is None


# --- exits the output does not explain ----------------------------------------------------


def test_unknown_model_on_stderr_is_model_not_found() -> None:
    error = DroidRunner().error_for_exit(1, transcript("llmrun-unknown-model", "stderr"))
    assert isinstance(error, llmrun.ModelNotFound)
    assert error.message == "Invalid model: no-such-model"
    assert error.hint and "custom:" in error.hint


def test_silent_failure_is_process_failed() -> None:
    assert isinstance(DroidRunner().error_for_exit(1, ""), llmrun.ProcessFailed)


# --- through the fake ---------------------------------------------------------------------


async def test_sigterm_exit_0_without_completion_is_not_success(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # droid exits 0 on SIGTERM, having printed only its init and the user message.
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "llmrun-sigterm")
    with pytest.raises(llmrun.OutputParseError):
        await DroidRunner().complete(ChatRequest.of("say hello"))


async def test_a_run_through_the_fake_is_locked_down(fake: Path) -> None:
    response = await DroidRunner().complete(ChatRequest.of("say hello", model="custom:mock-model"))
    assert response.content == "Hello from mock"
    (inv,) = recorded(fake)
    assert f"--only-tools={NO_TOOLS}" in inv["argv"]
    assert inv["stdin"] == "say hello"


async def test_health_reports_the_version_and_custom_models(
    fake: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FACTORY_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    report = await DroidRunner().health()
    assert report.status == "ok" and report.version == "0.215.0"
    assert report.authenticated is None
    (tmp_path / ".factory").mkdir()
    (tmp_path / ".factory" / "settings.json").write_text(json.dumps({"customModels": [{"model": "m1"}, {"x": 1}]}))
    assert custom_models() == ["custom:m1"]
    report = await DroidRunner().health()
    assert report.authenticated is True and "custom:m1" in (report.message or "")
    models = await DroidRunner().available_models()
    assert [m.id for m in models] == ["custom:m1"]


async def test_factory_api_key_counts_as_logged_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FACTORY_API_KEY", "fk-test")
    assert await DroidRunner().check_auth("droid") == (True, "FACTORY_API_KEY is set")
    monkeypatch.delenv("FACTORY_API_KEY")
    assert await DroidRunner().check_auth("droid") == (None, "")


# --- the warm mode (droid exec --output-format=acp) ---------------------------------------


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(t for t in FAKE_TOOLS if t.runner == "droid"), monkeypatch, record)


def sent(fake: FakeRun, method: str) -> list[dict]:
    (inv,) = fake.invocations()
    return [m for m in received(fake, inv["pid"]) if m.get("method") == method]


async def test_warm_command_line_model_mode_and_system_prompt(warm: FakeRun) -> None:
    runner = warm.runner(extra_args=["--user-flag=1"])
    async with runner.session(model="custom:mock-model-large", system="Be terse.") as session:
        response = await session.complete("Say hi")
        (inv,) = warm.invocations()
        argv = inv["argv"]
        # droid's ACP mode ignores --model and --only-tools: the model is the session's option...
        (option,) = sent(warm, "session/set_config_option")
        # ...and the lockdown its "normal" mode, which asks before anything but reading.
        (mode,) = sent(warm, "session/set_mode")
        (prompt,) = sent(warm, "session/prompt")
    assert response.content == "Hello from mock"
    assert argv[:2] == ["exec", "--output-format=acp"] and "--user-flag=1" in argv  # argv[0] is not recorded
    one_shot = ("--only-tools", "--model", "--fork", "--append-system-prompt-file")
    assert not [arg for arg in argv if arg.split("=")[0] in one_shot], argv
    assert option["params"] == {"sessionId": session.id, "configId": "model", "value": "custom:mock-model-large"}
    assert mode["params"]["modeId"] == "normal"
    assert prompt["params"]["prompt"][0]["text"].startswith("<system_instructions>\nBe terse.")


async def test_warm_tool_permission_is_refused_unless_tools_are_allowed(warm: FakeRun) -> None:
    warm.fault("tool_call")
    async with warm.runner().session() as session:
        response = await session.complete("Create the marker file")
    (asked,) = [json.loads(line) for line in (warm.record / "permissions.jsonl").read_text().splitlines()]
    assert asked["kind"].startswith("reject"), asked
    assert [e.kind for e in response.agent_events if e.kind == "permission_denied"] == ["permission_denied"]


async def test_warm_401_is_typed_and_the_session_goes_on(warm: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SESSION", "acp-error-401")
    async with warm.runner().session() as session:
        with pytest.raises(llmrun.AuthenticationError):
            await session.complete("hello")  # typed from the error's data: "401 Incorrect API key …"
        assert len(warm.invocations()) == 1 and session.pids()
    assert still_alive(warm.pids()) == []
