"""Unit tests of the Mistral Vibe runner: argv and lockdown, the parser, the export, errors.

The transcripts in fixtures/vibe/ were captured from the real vibe with the runner's own
command lines; fixtures/bin/vibe replays them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.process import Invocation
from llmrun.runners.vibe import (
    EXPORT_FILE,
    LOGIN_HINT,
    VibeParser,
    VibeRunner,
    classify,
    usage_from,
)

from .conftest import FAKE_BIN, FIXTURES

TRANSCRIPTS = FIXTURES / "vibe"
BASE = ["vibe", "-p", "--output=streaming"]


def transcript(name: str, suffix: str = "stdout") -> str:
    return (TRANSCRIPTS / f"{name}.{suffix}").read_text("utf-8")


def replay(name: str) -> tuple[VibeParser, list[llmrun.ChatChunk]]:
    parser = VibeParser()
    chunks = [c for line in transcript(name).splitlines() for c in parser.feed(line)]
    return parser, chunks + parser.close()


def invocation(request: ChatRequest) -> Invocation:
    return VibeRunner().build_invocation(request, "vibe")


def without_output_dir(argv: list[str]) -> list[str]:
    return [arg for arg in argv if not arg.startswith("--output-dir=")]


def error_for(name: str) -> llmrun.RunnerError:
    rc = int(transcript(name, "rc").split()[0].removeprefix("rc="))
    return VibeRunner().error_for_exit(rc, transcript(name, "stderr"))


# --- the command line and its lockdown ----------------------------------------------------


def test_plain_request_is_locked_down_and_goes_over_stdin() -> None:
    inv = invocation(ChatRequest.of("-hi there"))

    assert without_output_dir(inv.argv) == [*BASE, "--enabled-tools=read_file", "--agent=ask"]
    assert inv.stdin == b"-hi there"
    # Forced, not defaults: neither the user's config nor their environment approves tools.
    assert inv.env == {"VIBE_BYPASS_TOOL_PERMISSIONS": "false", "VIBE_ENABLE_AUTO_APPROVE": "false"}
    assert inv.env_defaults["VIBE_ENABLE_TELEMETRY"] == "false"
    assert inv.env_defaults["VIBE_ENABLE_UPDATE_CHECKS"] == "false"
    assert inv.env_defaults["VIBE_API_RETRY_MAX_ELAPSED_TIME"] == "30.0"


def test_locked_settings_beat_the_users_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIBE_BYPASS_TOOL_PERMISSIONS", "true")
    monkeypatch.setenv("VIBE_API_RETRY_MAX_ELAPSED_TIME", "5")
    env = invocation(ChatRequest.of("hi")).child_env()

    assert env["VIBE_BYPASS_TOOL_PERMISSIONS"] == "false"
    assert env["VIBE_API_RETRY_MAX_ELAPSED_TIME"] == "5"  # a retry budget of the user's own stays


def test_allow_tools_auto_approves_and_lifts_the_lockdown() -> None:
    inv = invocation(ChatRequest.of("hi", allow_tools=True, options={"agent": "accept-edits", "trust": True}))

    assert without_output_dir(inv.argv) == [*BASE, "--auto-approve", "--agent=accept-edits", "--trust"]
    assert "VIBE_BYPASS_TOOL_PERMISSIONS" not in inv.env and "VIBE_ENABLE_AUTO_APPROVE" not in inv.env


def test_an_agent_of_the_users_keeps_only_read_file_without_allow_tools() -> None:
    inv = invocation(ChatRequest.of("hi", options={"agent": "auto-approve"}))

    assert "--enabled-tools=read_file" in inv.argv and "--agent=auto-approve" in inv.argv
    assert inv.env["VIBE_ENABLE_AUTO_APPROVE"] == "false"


def test_model_goes_in_the_environment_never_the_config() -> None:
    inv = invocation(ChatRequest.of("hi", model="-mock"))

    assert inv.env["VIBE_ACTIVE_MODEL"] == "-mock"
    assert not any("mock" in arg for arg in inv.argv)


def test_resume_sends_only_the_new_turns() -> None:
    history = [Message.user("first"), Message.assistant("answer"), Message.user("second")]
    inv = invocation(ChatRequest(messages=history, session_id="8782ed18-fc77-d198-5176-91b9152d8fe2"))

    assert inv.argv[-1] == "--resume=8782ed18-fc77-d198-5176-91b9152d8fe2"
    assert inv.stdin == b"second"


def test_system_prompt_goes_in_front_of_the_prompt() -> None:
    inv = invocation(ChatRequest(messages=[Message.system("Be terse."), Message.user("hi")]))

    assert inv.stdin is not None
    text = inv.stdin.decode()
    assert text.index("Be terse.") < text.index("hi")


def test_limits_and_retry_budget_options() -> None:
    inv = invocation(
        ChatRequest.of("hi", options={"max_turns": 3, "max_price": 0.5, "retry_seconds": None, "extra_args": ["-x"]})
    )

    assert without_output_dir(inv.argv)[-3:] == ["--max-turns=3", "--max-price=0.5", "-x"]
    assert "VIBE_API_RETRY_MAX_ELAPSED_TIME" not in inv.env_defaults


def test_output_dir_is_private() -> None:
    inv = invocation(ChatRequest.of("hi"))
    (path,) = [arg.partition("=")[2] for arg in inv.argv if arg.startswith("--output-dir=")]

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    os.rmdir(path)


# --- the parser, on captured output --------------------------------------------------------


def test_text_and_session_id() -> None:
    parser, chunks = replay("llmrun-text")

    assert "".join(c.delta for c in chunks) == "Hello from mock"  # the user's own entry is not echoed
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].session_id == "8782ed18-fc77-d198-5176-91b9152d8fe2"


def test_reasoning_is_thinking() -> None:
    _, chunks = replay("llmrun-thinking")

    assert "".join(c.thinking for c in chunks) == "Let me think. Done thinking."
    assert "".join(c.delta for c in chunks) == "Hello from mock"


def test_denied_tool_is_a_permission_denied_event_between_two_messages() -> None:
    _, chunks = replay("llmrun-tooluse-denied")
    events = [c.agent_event for c in chunks if c.agent_event]

    assert [e.kind for e in events] == ["tool_use", "permission_denied"]
    assert events[0].name == "file_system.bash" and events[0].input == {"command": "echo mock-tool-ran"}
    assert events[1].message == "Tool execution denied by approval policy"
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"


def test_allowed_tool_ran_and_its_output_is_reported() -> None:
    _, chunks = replay("llmrun-tooluse-allowed")
    events = [c.agent_event for c in chunks if c.agent_event]

    assert [e.kind for e in events] == ["tool_use", "tool_result"]
    assert events[1].output == "mock-tool-ran\n" and not events[1].is_error


def test_unknown_and_broken_lines_are_skipped() -> None:
    parser = VibeParser()
    for line in ["not json", "[1]", '{"type":"checkpoint"}', '{"type":"message","role":"assistant","content":7}']:
        assert parser.feed(line) == []


# --- usage and completion, from vibe's export ----------------------------------------------


def test_usage_keeps_cached_tokens_apart() -> None:
    usage = usage_from({"input_tokens": 112, "output_tokens": 7, "cached_input_tokens": 100, "total_tokens": 119})

    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.total_tokens) == (12, 100, 7, 119)


def test_final_chunk_takes_usage_and_cost_from_the_export(tmp_path: Path) -> None:
    (tmp_path / EXPORT_FILE).write_text(transcript("llmrun-text", "export.json"))
    final = VibeRunner()._completed(llmrun.ChatChunk(finish_reason="stop"), str(tmp_path))

    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.cost_usd == 0.0
    assert final.session_id == "8782ed18-fc77-d198-5176-91b9152d8fe2"


@pytest.mark.parametrize("export", [None, "{broken", json.dumps({"outcome": "turn_limit"})])
def test_a_run_without_a_finished_export_did_not_complete(tmp_path: Path, export: str | None) -> None:
    if export is not None:
        (tmp_path / EXPORT_FILE).write_text(export)
    with pytest.raises(llmrun.OutputParseError):
        VibeRunner()._completed(llmrun.ChatChunk(finish_reason="stop"), str(tmp_path))


# --- errors, from captured stderr -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("llmrun-401", llmrun.AuthenticationError),
        ("llmrun-noauth", llmrun.AuthenticationError),
        ("llmrun-429", llmrun.RateLimitError),
        ("llmrun-500", llmrun.ServiceUnavailable),
        ("llmrun-unreachable", llmrun.ServiceUnavailable),
        ("llmrun-resume-missing", llmrun.SessionNotFound),
    ],
)
def test_captured_failures_are_typed(name: str, error: type[llmrun.RunnerError]) -> None:
    typed = error_for(name)

    assert type(typed) is error
    assert "Reading API keys" not in typed.message  # the keyring notice is not the reason


def test_auth_error_says_how_to_log_in() -> None:
    assert error_for("llmrun-401").hint == LOGIN_HINT


def test_the_http_status_decides_over_words_in_the_url() -> None:
    # A port that reads like a status, and "api key"-like words, must not mislead.
    message = "Server error '503 Service Unavailable' for url 'http://127.0.0.1:40129/v1/chat/completions'"
    assert type(classify(message)) is llmrun.ServiceUnavailable
    assert type(classify("Client error '404 Not Found' for url 'http://h/v1'")) is llmrun.ModelNotFound
    assert type(classify("Error: maximum context length is 8192 tokens")) is llmrun.ContextLengthExceeded


def test_a_limit_or_sigterm_stop_is_a_process_failure_that_names_it() -> None:
    stderr = "Reading API keys from the system keyring (set them as environment variables to skip this)\n"
    stopped = VibeRunner().error_for_exit(3, stderr + "Stopped: turn_limit\n")
    terminated = VibeRunner().error_for_exit(3, stderr + "Stopped: terminated\n")

    assert type(stopped) is llmrun.ProcessFailed and "turn_limit" in stopped.message and stopped.hint
    assert "terminated" in terminated.message and terminated.hint is None


def test_the_keyring_notice_alone_is_no_auth_error() -> None:
    stderr = transcript("llmrun-text", "stderr")
    assert type(VibeRunner().error_for_exit(1, stderr)) is llmrun.ProcessFailed


def test_flags_of_a_newer_llmrun_say_to_upgrade() -> None:
    error = VibeRunner().error_for_exit(2, "Error: unexpected argument '--output-dir' found\n")

    assert "does not accept llmrun's flags" in error.message and error.hint


# --- runs against the fake ---------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_VIBE_BIN", str(FAKE_BIN / "vibe"))
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


async def test_the_export_directory_goes_with_the_run(fake: Path, temp_dir: Path) -> None:
    response = await llmrun.get_runner("vibe").complete(ChatRequest.of("hi"))

    assert response.usage is not None and response.usage.output_tokens == 7
    assert not list(temp_dir.glob("llmrun-*/vibe-run-*"))


async def test_health_reports_version_and_no_verdict_on_keys(fake: Path) -> None:
    report = await llmrun.get_runner("vibe").health()

    assert report.status == "ok" and report.version == "3.0.2"
    assert report.authenticated is None


# --- warm sessions (vibe-acp) ---------------------------------------------------------------


def test_acp_server_is_found_where_the_vibe_link_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv, on_path = tmp_path / "venv" / "bin", tmp_path / "bin"
    venv.mkdir(parents=True)
    on_path.mkdir()
    for name in ("vibe", "vibe-acp"):
        (venv / name).write_text("#!/bin/sh\n")
        (venv / name).chmod(0o755)
    (on_path / "vibe").symlink_to(venv / "vibe")  # as an installer links only `vibe`
    monkeypatch.setenv("PATH", str(on_path))

    assert VibeRunner()._acp_binary(str(on_path / "vibe")) == str(venv / "vibe-acp")


def test_missing_acp_server_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(llmrun.BinaryNotFound) as caught:
        VibeRunner()._acp_binary(str(tmp_path / "vibe"))
    assert "vibe-acp" in caught.value.message and caught.value.hint


def test_warm_session_is_locked_down_through_the_environment(fake: Path) -> None:
    from llmrun.sessions import SessionSettings

    locked = VibeRunner().warm_connection(SessionSettings(model="mock"), None).invocation
    allowed = VibeRunner().warm_connection(SessionSettings(allow_tools=True), None).invocation

    assert Path(locked.argv[0]).name == "vibe-acp" and locked.argv[1:] == []
    assert json.loads(locked.env["VIBE_ENABLED_TOOLS"]) == ["read_file"]
    assert locked.env["VIBE_BYPASS_TOOL_PERMISSIONS"] == "false" and locked.env["VIBE_ACTIVE_MODEL"] == "mock"
    assert "VIBE_ENABLED_TOOLS" not in allowed.env and "VIBE_ENABLE_AUTO_APPROVE" not in allowed.env


async def test_warm_session_asks_for_the_ask_mode(fake: Path) -> None:
    async with llmrun.get_runner("vibe").session() as session:
        answer = await session.complete("hi")
    (pid,) = [json.loads(path.read_text())["pid"] for path in fake.glob("invocation-*.json")]

    assert answer.content == "Hello from mock"
    received = [json.loads(line) for line in (fake / f"received-{pid}.jsonl").read_text().splitlines()]
    assert {"method": "session/set_mode", "modeId": "ask"} in [
        {"method": m.get("method"), "modeId": (m.get("params") or {}).get("modeId")} for m in received
    ]
