"""Unit tests of the Cline runner: argv and lockdown, the parser on captured lines, errors,
the warm mode's start, and cline's hazards (one-word prompts, the sticky `-m`, the hub daemon).

The transcripts in fixtures/cline/ are captured from the real cline 3.0.65 against
tests/mock_openai_chat.py; fixtures/bin/cline replays them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message, process
from llmrun.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    UnsupportedFeature,
)
from llmrun.runners.cline import (
    ACTING_TOOLS,
    PROMPT_PLACEHOLDER,
    SYSTEM_PROMPT_ARGV_LIMIT,
    ClineParser,
    ClineRunner,
    classify,
)
from llmrun.sessions import SessionSettings

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "cline"


def replay(name: str) -> tuple[ClineParser, list[llmrun.ChatChunk]]:
    parser = ClineParser()
    text = (TRANSCRIPTS / f"{name}.stdout").read_text("utf-8")
    chunks = [c for line in text.splitlines() for c in parser.feed(line)]
    return parser, chunks + parser.close()


@pytest.fixture
def cline_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cline data dir of the user's own, with a saved provider and global settings."""
    data = tmp_path / "cline-data"
    (data / "settings").mkdir(parents=True)
    providers = {
        "version": 1,
        "lastUsedProvider": "openai-compatible",
        "providers": {
            "openai-compatible": {
                "settings": {"provider": "openai-compatible", "apiKey": "sk-saved", "model": "saved-model"}
            }
        },
    }
    (data / "settings" / "providers.json").write_text(json.dumps(providers))
    (data / "settings" / "global-settings.json").write_text(
        json.dumps({"compactionStrategy": "basic", "disabledTools": ["my_tool"], "telemetryOptOut": False})
    )
    for name in ("CLINE_DIR", "CLINE_GLOBAL_SETTINGS_PATH", "CLINE_PROVIDER_SETTINGS_PATH", "CLINE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLINE_DATA_DIR", str(data))
    return data


def build(request: ChatRequest) -> tuple[process.Invocation, list[str]]:
    invocation = ClineRunner().build_invocation(request, "cline")
    return invocation, list(invocation.temp_files)


def settings_of(invocation: process.Invocation) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(Path(invocation.env["CLINE_GLOBAL_SETTINGS_PATH"]).read_text())
    return settings


# --- the command line and lockdown --------------------------------------------------------


def test_prompt_goes_on_stdin_after_a_one_space_argument(cline_home: Path) -> None:
    # "hello" alone in argv is a sub-command to cline; "-x" an option: neither reaches argv.
    for prompt in ("hello", "-x --yolo", "history"):
        invocation, _ = build(ChatRequest.of(prompt))
        assert invocation.argv[-1] == PROMPT_PLACEHOLDER == " "
        assert invocation.stdin == prompt.encode()
        assert not any(prompt in arg for arg in invocation.argv)
        invocation.remove_files()


def test_default_run_is_locked_down(cline_home: Path) -> None:
    invocation, files = build(ChatRequest.of("hi"))
    assert invocation.argv[:3] == ["cline", "--json", "--auto-approve=false"]
    assert invocation.env["CLINE_SESSION_BACKEND_MODE"] == "local"
    settings = settings_of(invocation)
    assert settings["telemetryOptOut"] is True and settings["autoUpdateEnabled"] is False
    assert settings["toolAutoApprove"] is False
    assert set(ACTING_TOOLS) <= set(settings["disabledTools"])
    assert {"run_commands", "editor", "fetch_web_content", "spawn_agent"} <= set(ACTING_TOOLS)
    # The user's own settings are kept underneath, and their file is not touched.
    assert settings["compactionStrategy"] == "basic" and "my_tool" in settings["disabledTools"]
    user = json.loads((cline_home / "settings" / "global-settings.json").read_text())
    assert user == {"compactionStrategy": "basic", "disabledTools": ["my_tool"], "telemetryOptOut": False}
    assert Path(invocation.env["CLINE_GLOBAL_SETTINGS_PATH"]).stat().st_mode & 0o077 == 0
    assert all(str(cline_home) not in path for path in files)
    invocation.remove_files()
    assert not any(os.path.exists(path) for path in files)


def test_allow_tools_auto_approves_and_keeps_the_users_tools(cline_home: Path) -> None:
    invocation, _ = build(ChatRequest.of("hi", allow_tools=True))
    assert "--auto-approve=true" in invocation.argv
    assert settings_of(invocation)["disabledTools"] == ["my_tool"]
    invocation.remove_files()


def test_hub_daemon_is_off_even_when_the_user_asks_for_one(cline_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINE_SESSION_BACKEND_MODE", "hub")
    invocation, _ = build(ChatRequest.of("hi"))
    assert invocation.child_env()["CLINE_SESSION_BACKEND_MODE"] == "local"
    assert invocation.child_env()["CLINE_NO_AUTO_UPDATE"] == "1"
    invocation.remove_files()


def test_a_model_goes_to_a_private_copy_of_the_provider_settings(cline_home: Path) -> None:
    saved = cline_home / "settings" / "providers.json"
    invocation, _ = build(ChatRequest.of("hi", model="other-model"))
    assert "--model=other-model" in invocation.argv
    copy = Path(invocation.env["CLINE_PROVIDER_SETTINGS_PATH"])
    assert copy != saved and copy.read_bytes() == saved.read_bytes()
    invocation.remove_files()
    # Without a model cline keeps using the user's file (it rewrites the same provider and model).
    plain, _ = build(ChatRequest.of("hi"))
    assert "CLINE_PROVIDER_SETTINGS_PATH" not in plain.env
    assert not any(arg.startswith("--model") for arg in plain.argv)
    plain.remove_files()


def test_system_prompt_replaces_clines_and_a_long_one_leads_the_prompt(cline_home: Path) -> None:
    short, _ = build(ChatRequest(messages=[Message.system("Be terse."), Message.user("hi")]))
    assert "--system=Be terse." in short.argv and short.stdin == b"hi"
    short.remove_files()
    system = "x" * (SYSTEM_PROMPT_ARGV_LIMIT + 1)
    long, _ = build(ChatRequest(messages=[Message.system(system), Message.user("hi")]))
    assert not any(arg.startswith("--system") for arg in long.argv)
    assert long.stdin is not None and system.encode() in long.stdin and long.stdin.endswith(b"hi")
    long.remove_files()


def test_a_session_id_is_checked_and_the_whole_conversation_goes_instead(cline_home: Path) -> None:
    history = [Message.user("My name is Ann"), Message.assistant("Hi Ann"), Message.user("My name?")]
    request = ChatRequest(messages=history, session_id="1796587912182_vgrap")
    invocation, _ = build(request)
    assert invocation.stdin is not None and b"My name is Ann" in invocation.stdin
    assert not any("1796587912182_vgrap" in arg for arg in invocation.argv)
    invocation.remove_files()
    with pytest.raises(InvalidRequest, match="session id"):
        build(request.model_copy(update={"session_id": "--last"}))


def test_plan_mode_and_extra_args(cline_home: Path) -> None:
    invocation, _ = build(ChatRequest.of("hi", options={"mode": "plan", "extra_args": ["--thinking=low"]}))
    assert invocation.argv[-3:] == ["--plan", "--thinking=low", " "]
    invocation.remove_files()
    with pytest.raises(UnsupportedFeature, match="mode"):
        build(ChatRequest.of("hi", options={"mode": "yolo"}))


# --- the parser on captured runs ----------------------------------------------------------


def test_captured_answer_streams_token_by_token_with_usage() -> None:
    parser, chunks = replay("json-text")
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    last = chunks[-1]
    assert last.finish_reason == "stop" and parser.finished
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (12, 7)
    assert last.session_id and last.session_id.startswith("conv_")
    assert last.model == "mock-model" and last.cost_usd == 0
    assert parser.error is None


def test_captured_reasoning_is_thinking_not_answer() -> None:
    _, chunks = replay("json-thinking")
    assert "".join(c.thinking for c in chunks) == "Let me think. Done thinking."
    assert "".join(c.delta for c in chunks) == "Hello from mock"


def test_captured_model_flag_run_reports_the_model() -> None:
    _, chunks = replay("json-model")
    assert chunks[-1].model == "mock-model-large"


def test_a_tool_of_the_locked_run_is_reported_denied() -> None:
    _, chunks = replay("json-tooluse-locked")
    events = [c.agent_event for c in chunks if c.agent_event]
    assert [e.kind for e in events] == ["tool_use", "permission_denied"]
    assert events[0].name == "bash" and events[0].input == {"command": "echo mock-tool-ran"}
    assert "".join(c.delta for c in chunks) == "I will run a command.Tool finished: Hello from mock"


def test_tool_result_and_approval_refusal_of_real_shapes() -> None:
    parser = ClineParser()
    done = parser.feed(
        json.dumps(
            {
                "type": "agent_event",
                "event": {
                    "type": "content_end",
                    "contentType": "tool",
                    "toolName": "read_files",
                    "toolCallId": "c1",
                    "output": [{"query": "a.txt", "result": "text", "success": True}],
                },
            }
        )
    )
    assert done[0].agent_event is not None and done[0].agent_event.kind == "tool_result"
    assert not done[0].agent_event.is_error
    refused = parser.feed(
        '{"type":"agent_event","event":{"type":"content_end","contentType":"tool","toolName":"run_commands",'
        '"toolCallId":"c2","output":{"error":"Tool \\"run_commands\\" requires approval in a TTY session"}}}'
    )
    assert refused[0].agent_event is not None and refused[0].agent_event.kind == "permission_denied"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("json-401", AuthenticationError),
        ("mock-401-json", AuthenticationError),
        ("json-429", RateLimitError),
        ("json-500", ServiceUnavailable),
    ],
)
def test_captured_failures_are_typed(name: str, error: type[RunnerError]) -> None:
    parser, chunks = replay(name)
    assert type(parser.error) is error and parser.finished
    assert not any(c.is_final for c in chunks)


def test_a_recoverable_error_does_not_fail_the_run() -> None:
    parser = ClineParser()
    parser.feed(
        '{"type":"agent_event","event":{"type":"error","error":{"message":"1 tool call(s) failed"},"recoverable":true}}'
    )
    assert parser.error is None


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Incorrect API key provided: sk-test.", AuthenticationError),
        ("invalid x-api-key", AuthenticationError),
        ("Rate limit reached for requests. Please try again later.", RateLimitError),
        ("This model's maximum context length is 128000 tokens", ContextLengthExceeded),
        ("The model `nope` does not exist or you do not have access to it.", ModelNotFound),
        ("The server had an error while processing your request.", ServiceUnavailable),
        ("Unable to connect. Is the computer able to access the url?", ServiceUnavailable),
        ("something odd", RunnerError),
    ],
)
def test_classify(message: str, error: type[RunnerError]) -> None:
    assert type(classify(message)) is error
    assert type(classify("whatever", "auth")) is AuthenticationError


def test_error_line_on_stderr_types_a_failed_exit() -> None:
    stderr = (TRANSCRIPTS / "json-401.stderr").read_text()
    assert type(ClineRunner().error_for_exit(1, stderr)) is AuthenticationError
    refused = (TRANSCRIPTS / "mock-json-stdin-only.stderr").read_text()
    error = ClineRunner().error_for_exit(1, refused)
    assert type(error) is ProcessFailed and "requires a prompt argument" in str(error)


# --- against the fake ---------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cline_home: Path) -> Path:
    monkeypatch.setenv("LLMRUN_CLINE_BIN", str(FAKE_BIN / "cline"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


async def test_run_files_are_gone_after_the_run(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    build_invocation = ClineRunner.build_invocation

    def recording(self: ClineRunner, request: ChatRequest, binary: str):  # type: ignore[no-untyped-def]
        invocation = build_invocation(self, request, binary)
        written.extend(invocation.temp_files)
        return invocation

    monkeypatch.setattr(ClineRunner, "build_invocation", recording)
    response = await llmrun.get_runner("cline").complete(ChatRequest.of("hi", model="m"))
    assert response.content == "Hello from mock"
    (record,) = [json.loads(p.read_text()) for p in fake.glob("invocation-*.json")]
    assert record["stdin"] == "hi" and record["argv"][-1] == " " and "--model=m" in record["argv"]
    assert written and not any(os.path.exists(path) for path in written)


async def test_health_reports_the_saved_provider(fake: Path, cline_home: Path) -> None:
    report = await llmrun.get_runner("cline").health()
    assert report.status == "ok" and report.version == "3.0.65"
    assert report.message and "openai-compatible" in report.message and "saved-model" in report.message


async def test_health_without_a_saved_provider_cannot_tell(fake: Path, cline_home: Path) -> None:
    (cline_home / "settings" / "providers.json").unlink()
    report = await llmrun.get_runner("cline").health()
    assert report.status == "ok" and report.authenticated is None and "cline auth" in (report.message or "")


# --- the warm mode ------------------------------------------------------------------------


def test_warm_mode_runs_acp_with_the_saved_provider(fake: Path) -> None:
    connection = ClineRunner().warm_connection(SessionSettings(), resume=None)
    argv = connection.invocation.argv
    assert argv[:2] == [str(FAKE_BIN / "cline"), "--acp"]
    assert not {"--json", " ", "--auto-approve=false"} & set(argv)
    env = connection.invocation.env
    assert env["CLINE_PROVIDER"] == "openai-compatible" and env["CLINE_API_KEY"] == "sk-saved"
    assert env["CLINE_SESSION_BACKEND_MODE"] == "local"
    assert set(ACTING_TOOLS) <= set(json.loads(Path(env["CLINE_GLOBAL_SETTINGS_PATH"]).read_text())["disabledTools"])
    assert connection.model == "saved-model"  # type: ignore[attr-defined]
    assert connection.profile.read_only_modes == ("plan",)  # type: ignore[attr-defined]
    connection.invocation.remove_files()


def test_warm_mode_leaves_clines_own_sign_in_alone(fake: Path, cline_home: Path) -> None:
    path = cline_home / "settings" / "providers.json"
    path.write_text(json.dumps({"lastUsedProvider": "cline", "providers": {"cline": {"settings": {"apiKey": "k"}}}}))
    settings = SessionSettings(model="chosen", allow_tools=True)
    connection = ClineRunner().warm_connection(settings, resume=None)
    assert "CLINE_API_KEY" not in connection.invocation.env and "CLINE_PROVIDER" not in connection.invocation.env
    assert connection.model == "chosen"  # type: ignore[attr-defined]
    assert "--auto-approve=true" in connection.invocation.argv
    connection.invocation.remove_files()
