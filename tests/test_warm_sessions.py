"""What warm sessions add beyond the shared session contract: lockdown of the ACP agents,
their errors, resuming, and output a client must skip. Against the fakes, which replay ACP
sessions and stream-json input captured from the real tools."""

from __future__ import annotations

import json
import logging

import pytest

import llmrun
from llmrun import get_runner
from llmrun.transports.acp import error_for

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun, FakeTool, still_alive
from .test_session_contract import received

ACP_RUNNERS = ("gemini", "qwen", "copilot", "opencode", "cline", "kilo", "droid", "vibe")
ACP_TOOLS = [tool for tool in FAKE_TOOLS if tool.runner in ACP_RUNNERS]
WARM_TOOLS = [tool for tool in FAKE_TOOLS if tool.runner in ("claude_code", "codex", *ACP_RUNNERS)]


@pytest.fixture(params=ACP_TOOLS, ids=lambda t: t.runner)
def acp_fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> FakeRun:  # type: ignore[no-untyped-def]
    return _fake(request.param, monkeypatch, tmp_path)


@pytest.fixture(params=WARM_TOOLS, ids=lambda t: t.runner)
def warm_fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> FakeRun:  # type: ignore[no-untyped-def]
    return _fake(request.param, monkeypatch, tmp_path)


def _fake(tool: FakeTool, monkeypatch: pytest.MonkeyPatch, tmp_path) -> FakeRun:  # type: ignore[no-untyped-def]
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(tool, monkeypatch, record)


def permissions(fake: FakeRun) -> list[dict]:
    path = fake.record / "permissions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def requests_of(fake: FakeRun, method: str) -> list[dict]:
    (invocation,) = fake.invocations()
    return [m for m in received(fake, invocation["pid"]) if m.get("method") == method]


def test_every_warm_runner_says_so() -> None:
    for tool in WARM_TOOLS:
        assert get_runner(tool.runner).capabilities.warm, tool.runner
    for name in ("llm", "ollama", "cursor_agent"):
        assert not get_runner(name).capabilities.warm, name


# Flags of a one-shot run that the warm mode's command line must not carry.
ONE_SHOT_FLAGS = {
    "claude_code": ("-p",),
    "codex": ("exec",),
    "gemini": ("-p", "--output-format"),
    "qwen": ("--output-format", "--include-partial-messages"),
    "copilot": ("--output-format", "--usage-output-file"),
    "opencode": ("run", "--format"),
    "kilo": ("run", "--format"),
    "cline": ("--json", "--auto-approve", "--system", "--model"),
    "droid": ("--only-tools", "--model", "--fork", "--append-system-prompt-file"),
    "vibe": ("-p", "--output", "--output-dir"),
}


async def test_the_warm_command_line_keeps_extra_args_and_drops_one_shot_flags(warm_fake: FakeRun) -> None:
    runner = warm_fake.runner(extra_args=["--user-flag=1"])
    async with runner.session() as session:
        await session.complete("Say hi")
    (invocation,) = warm_fake.invocations()
    argv = invocation["argv"]
    dropped = ONE_SHOT_FLAGS[warm_fake.tool.runner]
    assert not [arg for arg in argv if arg.split("=")[0] in dropped], argv
    # `opencode acp` (and kilo's) takes none of `opencode run`'s flags, `vibe-acp` none of vibe's.
    if warm_fake.tool.runner not in ("opencode", "kilo", "vibe"):
        assert "--user-flag=1" in argv


# --- lockdown -------------------------------------------------------------------------------


def asks_permission(fake: FakeRun) -> FakeRun:
    """The fake, for a tool captured asking for a permission (kilo's read-only agent denies
    without asking)."""
    captures = (FIXTURES / fake.tool.tool).glob("acp-*.jsonl")
    if not any("session/request_permission" in path.read_text() for path in captures):
        pytest.skip(f"{fake.tool.runner} was never captured asking for a permission")
    fake.fault("tool_call")
    return fake


async def test_tool_permission_is_refused_by_default(acp_fake: FakeRun) -> None:
    asks_permission(acp_fake)
    async with acp_fake.runner().session() as session:
        response = await session.complete("Create the marker file")
    (asked,) = permissions(acp_fake)
    assert asked["outcome"] == "selected" and asked["kind"].startswith("reject"), asked
    denied = [e for e in response.agent_events if e.kind == "permission_denied"]
    assert len(denied) == 1 and denied[0].is_error


async def test_tool_permission_is_granted_only_with_allow_tools(acp_fake: FakeRun) -> None:
    asks_permission(acp_fake)
    async with acp_fake.runner().session(allow_tools=True) as session:
        response = await session.complete("Create the marker file")
    (asked,) = permissions(acp_fake)
    assert asked["kind"].startswith("allow"), asked
    assert not [e for e in response.agent_events if e.kind == "permission_denied"]


async def test_no_file_system_or_terminal_is_offered(acp_fake: FakeRun) -> None:
    async with acp_fake.runner().session() as session:
        await session.complete("Say hi")
        (hello,) = requests_of(acp_fake, "initialize")
    # Capabilities left out are capabilities not offered (ACP's defaults are all false).
    offered = hello["params"].get("clientCapabilities", {})
    assert not offered.get("terminal")
    assert not any(offered.get("fs", {}).values())


async def test_opencode_runs_in_its_read_only_mode_unless_tools_are_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # opencode runs tools without asking; its plan mode (or llmrun's agent) is what holds it back.
    fake = _fake(next(t for t in ACP_TOOLS if t.runner == "opencode"), monkeypatch, tmp_path)
    async with fake.runner().session() as session:
        await session.complete("Say hi")
        (change,) = requests_of(fake, "session/set_config_option") + requests_of(fake, "session/set_mode")
    assert change["params"].get("value", change["params"].get("modeId")) == "plan"
    async with fake.runner().session(allow_tools=True) as session:
        await session.complete("Say hi")
        pid = fake.invocations()[-1]["pid"]
        mode_methods = ("session/set_config_option", "session/set_mode")
        changes = [m for m in received(fake, pid) if m.get("method") in mode_methods]
    assert changes == []


async def test_a_model_is_set_through_the_option_named_model(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # cline lists a "provider" option of the category "model" before its "model" option.
    fake = _fake(next(t for t in ACP_TOOLS if t.runner == "cline"), monkeypatch, tmp_path)
    async with fake.runner().session(model="mock-model-large") as session:
        await session.complete("Say hi")
        changes = requests_of(fake, "session/set_config_option")
    assert [(c["params"]["configId"], c["params"]["value"]) for c in changes] == [("model", "mock-model-large")]


# --- errors ----------------------------------------------------------------------------------

ERRORS = {
    ("gemini", "acp-error-401"): "AuthenticationError",
    ("gemini", "acp-error-429"): "RateLimitError",
    ("gemini", "acp-error-500"): "ServiceUnavailable",
    ("qwen", "acp-error-401"): "AuthenticationError",
    ("qwen", "acp-error-429"): "RateLimitError",
    ("copilot", "acp-error-401"): "AuthenticationError",
    ("copilot", "acp-error-500"): "ServiceUnavailable",
    ("opencode", "acp-error-401"): "AuthenticationError",
    ("kilo", "acp-error-401"): "AuthenticationError",
    ("kilo", "acp-error-500"): "ServiceUnavailable",
    ("droid", "acp-error-401"): "AuthenticationError",
    ("claude_code", "stream-input-error-401"): "AuthenticationError",
    ("codex", "app-server-error-401"): "AuthenticationError",
}


@pytest.mark.parametrize(("runner", "capture"), list(ERRORS), ids=lambda v: str(v))
async def test_an_error_the_tool_reports_is_typed_and_the_session_goes_on(
    runner: str, capture: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    fake = _fake(next(t for t in WARM_TOOLS if t.runner == runner), monkeypatch, tmp_path)
    monkeypatch.setenv("LLMRUN_FAKE_SESSION", capture)
    async with fake.runner().session() as session:
        with pytest.raises(llmrun.RunnerError) as caught:
            await session.complete("hello")
        assert type(caught.value).__name__ == ERRORS[(runner, capture)], caught.value
        assert caught.value.runner == runner
        assert len(fake.invocations()) == 1 and session.pids()  # the tool is still up for the next turn
    assert still_alive(fake.pids()) == []


def test_acp_error_codes_and_texts_map_to_types() -> None:
    assert isinstance(error_for(-32000, "Authentication required"), llmrun.AuthenticationError)
    assert isinstance(error_for(-32603, "Internal error", {"details": "429 Too Many Requests"}), llmrun.RateLimitError)
    assert isinstance(error_for(-32603, "Internal error", {"details": "503 upstream"}), llmrun.ServiceUnavailable)
    context = error_for(-32603, "Internal error", {"details": "This model's maximum context length is exceeded"})
    assert isinstance(context, llmrun.ContextLengthExceeded)
    assert isinstance(error_for(-32603, "model gpt-x not found"), llmrun.ModelNotFound)
    plain = error_for(-32603, "Internal error", {"details": "Request was aborted."})
    assert type(plain) is llmrun.RunnerError and str(plain) == "Request was aborted."
    # An API error carried as a JSON string: its own message is what the user reads.
    embedded = error_for(401, '{"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}')
    assert str(embedded) == "API key not valid."
    droid = error_for(-32603, "Internal error: Agent error", "401 Incorrect API key provided")
    assert isinstance(droid, llmrun.AuthenticationError) and str(droid) == "401 Incorrect API key provided"


async def test_an_answer_outside_the_protocol_is_a_typed_error(acp_fake: FakeRun) -> None:
    acp_fake.fault("bad_answer")
    async with acp_fake.runner().session() as session:
        with pytest.raises(llmrun.OutputParseError, match="outside the protocol") as caught:
            await session.complete("Say hi")
        assert caught.value.runner == acp_fake.tool.runner
    assert still_alive(acp_fake.pids()) == []


# --- resuming ----------------------------------------------------------------------------


async def test_resuming_a_session_the_tool_does_not_have_is_session_not_found(warm_fake: FakeRun) -> None:
    async with warm_fake.runner().session(resume="no-such-session") as session:
        with pytest.raises(llmrun.SessionNotFound) as caught:
            await session.complete("What is my name?")
    assert caught.value.runner == warm_fake.tool.runner
    assert still_alive(warm_fake.pids()) == []


async def test_an_agent_that_cannot_load_sessions_is_session_not_found(acp_fake: FakeRun) -> None:
    async with acp_fake.runner().session() as session:
        await session.complete("My name is Ann")
        session_id = session.id
    acp_fake.fault("no_load")
    async with acp_fake.runner().session(resume=session_id) as session:
        with pytest.raises(llmrun.SessionNotFound, match="cannot load"):
            await session.complete("What is my name?")


async def test_a_loaded_session_does_not_take_the_replayed_history_for_the_answer(acp_fake: FakeRun) -> None:
    async with acp_fake.runner().session() as session:
        first = await session.complete("My name is Ann")
        session_id = session.id
    async with acp_fake.runner().session(resume=session_id) as session:
        response = await session.complete("What is my name?")
    assert response.content == first.content  # the fake's first turn again, and no history in it


# --- output to skip --------------------------------------------------------------------------


async def test_unknown_messages_and_noise_are_skipped(warm_fake: FakeRun, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def two_turns() -> list[llmrun.ChatResponse]:
        async with warm_fake.runner().session() as session:
            return [await session.complete("My name is Ann"), await session.complete("What is my name?")]

    clean = await two_turns()
    warm_fake.fault("noise")
    noisy = await two_turns()
    assert [r.content for r in noisy] == [r.content for r in clean]
    assert all(r.content and r.finish_reason == "stop" for r in noisy)
    assert not caplog.records, "skipped quietly, not logged as failures"


async def test_usage_is_the_turns_own_even_where_the_tool_counts_the_whole_session(warm_fake: FakeRun) -> None:
    async with warm_fake.runner().session() as session:
        first = await session.complete("My name is Ann")
        second = await session.complete("What is my name?")
    if first.usage.output_tokens == 0:
        pytest.skip(f"{warm_fake.tool.runner} reports no usage over its warm protocol")
    assert second.usage.output_tokens <= first.usage.output_tokens * 1.5
    if first.cost_usd is not None and second.cost_usd is not None:
        assert second.cost_usd <= first.cost_usd * 1.5
