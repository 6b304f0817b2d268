"""Unit tests of the Goose runner: argv and lockdown, the parser, errors, sessions, health.

Goose is not in a package registry the project installs from, so there are no tests of
the real binary: the transcripts in fixtures/goose/ are hand-made from goose's source
(the stream-json events of crates/goose-cli, the ACP server of `goose acp`), and
fixtures/bin/goose replays them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.runners.goose import GooseParser, GooseRunner, classify, config_file
from llmrun.sessions import SessionSettings

from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun

TRANSCRIPTS = FIXTURES / "goose"
BASE = ["goose", "run", "--output-format=stream-json", "-i", "-"]


def replay(name: str, session_id: str | None = "llmrun-s1") -> tuple[GooseParser, list[llmrun.ChatChunk]]:
    parser = GooseParser(session_id)
    text = (TRANSCRIPTS / f"{name}.stdout").read_text("utf-8")
    chunks = [c for line in text.splitlines() for c in parser.feed(line)]
    return parser, chunks + parser.close()


def invocation(request: ChatRequest):  # type: ignore[no-untyped-def]
    return GooseRunner().build_invocation(request, "goose")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LLMRUN_GOOSE_BIN", str(FAKE_BIN / "goose"))
    monkeypatch.setenv("GOOSE_PATH_ROOT", str(TRANSCRIPTS / "root"))
    record = tmp_path / "record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    return record


def recorded(record: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]


# --- the command line and the lockdown ------------------------------------------------------


def test_plain_request_is_chat_only_without_extensions_and_goes_over_stdin() -> None:
    inv = invocation(ChatRequest.of("-hi there", options={"session_name": "llmrun-a"}))

    assert inv.argv == [*BASE, "--name=llmrun-a", "--no-profile"]
    assert inv.stdin == b"-hi there"
    assert inv.env["GOOSE_MODE"] == "chat"
    assert inv.env["GOOSE_TELEMETRY_OFF"] == "1" and inv.env["GOOSE_TELEMETRY_ENABLED"] == "false"


def test_allow_tools_uses_auto_mode_and_the_users_extensions() -> None:
    inv = invocation(ChatRequest.of("hi", allow_tools=True, options={"max_turns": 5}))

    assert inv.env["GOOSE_MODE"] == "auto"
    assert "--no-profile" not in inv.argv
    assert "--max-turns=5" in inv.argv


def test_model_provider_system_and_resume() -> None:
    history = [Message.system("Be brief."), Message.user("first"), Message.assistant("answer"), Message.user("second")]
    req = ChatRequest(
        messages=history,
        model="-odd",
        session_id="llmrun-abc",
        options={"provider": "openai", "extra_args": ["--debug"]},
    )
    inv = invocation(req)

    assert inv.argv == [
        *BASE,
        "--resume",
        "--name=llmrun-abc",
        "--provider=openai",
        "--model=-odd",
        "--system=Be brief.",
        "--no-profile",
        "--debug",
    ]
    assert inv.stdin == b"second"


def test_a_system_prompt_over_the_argv_limit_leads_the_prompt_on_stdin() -> None:
    inv = invocation(ChatRequest.of("hi", system="x" * (129 * 1024)))

    assert not any(arg.startswith("--system") for arg in inv.argv)
    assert b"x" * 1000 in inv.stdin and inv.stdin.rstrip().endswith(b"hi")


async def test_each_new_run_gets_a_session_name_which_is_its_session_id(fake: Path) -> None:
    runner = GooseRunner()
    first = await runner.complete(ChatRequest.of("hi"))
    second = await runner.complete(ChatRequest.of("hi"))
    names = [next(a for a in inv["argv"] if a.startswith("--name=")) for inv in recorded(fake)]

    assert first.session_id and first.session_id.startswith("llmrun-")
    assert names == [f"--name={first.session_id}", f"--name={second.session_id}"]
    assert first.session_id != second.session_id


async def test_a_resumed_session_keeps_its_id(fake: Path) -> None:
    response = await GooseRunner().complete(ChatRequest.of("again", session_id="20260101_1"))
    (inv,) = recorded(fake)

    assert response.session_id == "20260101_1"
    assert inv["argv"][-3:] == ["--resume", "--name=20260101_1", "--no-profile"]


# --- the parser -------------------------------------------------------------------------------


def test_text_pieces_stream_and_complete_carries_usage_and_session() -> None:
    parser, chunks = replay("stream-json-text")
    *body, last = chunks

    assert [c.delta for c in body] == ["Hello", " from", " mock"]
    assert parser.finished and parser.error is None
    assert last.finish_reason == "stop" and last.session_id == "llmrun-s1"
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.total_tokens) == (52, 5, 57)


def test_thinking_and_cost() -> None:
    _, chunks = replay("stream-json-thinking")

    assert "".join(c.thinking for c in chunks) == "The user wants a greeting."
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert chunks[-1].cost_usd == pytest.approx(0.00042)


def test_tool_request_and_response_are_agent_events_and_text_after_them_is_a_new_paragraph() -> None:
    _, chunks = replay("stream-json-tool")
    events = [c.agent_event for c in chunks if c.agent_event]

    assert "".join(c.delta for c in chunks) == "Let me look.\n\nHello from mock"
    assert [(e.kind, e.id, e.name) for e in events] == [
        ("tool_use", "call_1", "developer__shell"),
        ("tool_result", "call_1", None),
    ]
    assert events[0].input == {"command": "ls"}
    assert events[1].output == "README.md\n" and not events[1].is_error


def test_a_refused_tool_is_permission_denied() -> None:
    line = json.dumps(
        {
            "type": "message",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "toolResponse",
                        "id": "c",
                        "toolResult": {"status": "error", "error": "-32603: Tool call cancelled by user"},
                    }
                ],
            },
        }
    )
    (chunk,) = GooseParser().feed(line)

    assert chunk.agent_event is not None
    assert chunk.agent_event.kind == "permission_denied" and chunk.agent_event.is_error


def test_legacy_build_total_tokens_only_and_model_change() -> None:
    _, chunks = replay("stream-json-legacy")
    last = chunks[-1]

    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert last.model == "gpt-4o-mini"
    assert last.usage is not None and last.usage.total_tokens == 57 and last.usage.input_tokens == 0


def test_extension_log_is_a_notice() -> None:
    line = '{"type":"notification","extension_id":"developer","log":{"message":"running ls"}}'
    (chunk,) = GooseParser().feed(line)
    assert chunk.agent_event is not None and chunk.agent_event.message == "running ls"


def test_user_text_is_not_answer_text() -> None:
    line = json.dumps({"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": "echo"}]}})
    assert GooseParser().feed(line) == []


def test_error_then_complete_of_an_older_build_is_still_an_error() -> None:
    parser, chunks = replay("error-401-legacy")

    assert isinstance(parser.error, llmrun.AuthenticationError)
    assert not any(c.finish_reason for c in chunks)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Authentication error: Status: 401 Unauthorized", llmrun.AuthenticationError),
        ("Rate limit exceeded: slow down", llmrun.RateLimitError),
        ("Credits exhausted: top up", llmrun.RateLimitError),
        ("Server error: 503 Service Unavailable", llmrun.ServiceUnavailable),
        ("Network error: Could not connect to 127.0.0.1:9", llmrun.ServiceUnavailable),
        ("Context length exceeded: too long", llmrun.ContextLengthExceeded),
        ("Request failed: The model `x` does not exist", llmrun.ModelNotFound),
        ("No session found with name 'llmrun-1'", llmrun.SessionNotFound),
        ("No provider configured. Run 'goose configure' first", llmrun.AuthenticationError),
    ],
)
def test_classify(message: str, error: type[llmrun.RunnerError]) -> None:
    assert type(classify(message)) is error


def test_unknown_failure_is_not_classified() -> None:
    assert classify("Execution error: something odd") is None


# --- errors through the runner -----------------------------------------------------------------


async def test_error_event_with_exit_0_is_typed(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "error-401-legacy")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await GooseRunner().complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 0
    assert caught.value.hint and "goose configure" in caught.value.hint


async def test_flag_this_goose_does_not_know_says_update(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", "no-provider")
    monkeypatch.setenv("LLMRUN_FAKE_FAULT", "stderr=error: unexpected argument '--no-profile' found")
    with pytest.raises(llmrun.RunnerError) as caught:
        await GooseRunner().complete(ChatRequest.of("hi"))
    assert "goose update" in (caught.value.hint or "")


# --- health ------------------------------------------------------------------------------------


async def test_health_reads_version_and_configured_provider(fake: Path) -> None:
    report = await GooseRunner().health()

    assert report.status == "ok" and report.version == "1.25.0"
    assert report.authenticated is True and "openai" in (report.message or "")


async def test_health_without_a_provider_is_unauthenticated(
    fake: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOSE_PATH_ROOT", str(tmp_path / "empty"))
    monkeypatch.delenv("GOOSE_PROVIDER", raising=False)
    report = await GooseRunner().health()

    assert report.status == "unauthenticated" and "goose configure" in (report.hint or "")


async def test_health_with_goose_provider_in_the_environment(
    fake: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOSE_PATH_ROOT", str(tmp_path / "empty"))
    monkeypatch.setenv("GOOSE_PROVIDER", "anthropic")
    report = await GooseRunner().health()

    assert report.status == "ok" and "anthropic" in (report.message or "")


def test_config_file_follows_xdg_without_goose_path_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOSE_PATH_ROOT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/xdg")
    assert config_file({}) == Path("/xdg/goose/config.yaml")
    assert config_file({"GOOSE_PATH_ROOT": "/r"}) == Path("/r/config/config.yaml")


# --- warm sessions over `goose acp` ---------------------------------------------------------------


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(tool for tool in FAKE_TOOLS if tool.runner == "goose"), monkeypatch, record)


def sent(fake: FakeRun, method: str) -> list[dict]:  # type: ignore[type-arg]
    (invocation,) = fake.invocations()
    path = fake.record / f"received-{invocation['pid']}.jsonl"
    return [m for m in map(json.loads, path.read_text().splitlines()) if m.get("method") == method]


def test_warm_command_keeps_the_lockdown_in_the_environment() -> None:
    settings = SessionSettings(model="mock-model-large", options={"provider": "openai"})
    connection = GooseRunner(binary=str(FAKE_BIN / "goose")).warm_connection(settings, None)

    assert connection.invocation.argv[1:] == ["acp"]
    env = connection.invocation.env
    assert env["GOOSE_MODE"] == "chat" and env["GOOSE_TELEMETRY_OFF"] == "1"
    assert (env["GOOSE_MODEL"], env["GOOSE_PROVIDER"]) == ("mock-model-large", "openai")


def test_warm_command_with_tools_allowed_is_auto_mode() -> None:
    connection = GooseRunner(binary=str(FAKE_BIN / "goose")).warm_connection(SessionSettings(allow_tools=True), None)

    assert connection.invocation.env["GOOSE_MODE"] == "auto"
    assert "GOOSE_MODEL" not in connection.invocation.env


async def test_warm_session_chooses_chat_mode_and_refuses_tools(warm: FakeRun) -> None:
    warm.fault("tool_call")
    async with warm.runner().session() as session:
        response = await session.complete("Create a file named hello.txt")

    assert [m["params"]["modeId"] for m in sent(warm, "session/set_mode")] == ["chat"]
    (asked,) = [json.loads(line) for line in (warm.record / "permissions.jsonl").read_text().splitlines()]
    assert asked["kind"].startswith("reject")
    assert response.content and response.usage is not None and response.usage.input_tokens > 0


async def test_warm_session_with_tools_allowed_keeps_goose_mode(warm: FakeRun) -> None:
    warm.fault("tool_call")
    async with warm.runner().session(allow_tools=True) as session:
        await session.complete("Create a file named hello.txt")

    assert sent(warm, "session/set_mode") == []
    (asked,) = [json.loads(line) for line in (warm.record / "permissions.jsonl").read_text().splitlines()]
    assert asked["kind"].startswith("allow")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("Error in agent response stream: Authentication error: Status: 401 Unauthorized", llmrun.AuthenticationError),
        ("Error in agent response stream: Rate limit exceeded: slow down", llmrun.RateLimitError),
        ("Error in agent response stream: Server error: 500 Internal Server Error", llmrun.ServiceUnavailable),
    ],
)
def test_goose_acp_errors_are_typed(data: str, error: type[llmrun.RunnerError]) -> None:
    from llmrun.transports.acp import error_for

    assert type(error_for(-32603, "Internal error", data)) is error
