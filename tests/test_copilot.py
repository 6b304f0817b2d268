"""GitHub Copilot CLI specifics: its command line, its JSON lines, its usage report, health."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.registry import canonical_name, get_runner, runner_names
from llmrun.runners.copilot import (
    DENIED_TOOLS,
    CopilotParser,
    CopilotRunner,
    session_totals,
    stderr_error,
    usage_from,
    usage_totals,
)

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun

CAPTURES = FIXTURES / "copilot"
SESSION = "90b7ddbb-3d26-4c27-a7a4-cbc0d14b5a1b"
SHELL_CALL = {"command": "echo mock-tool-ran > marker.txt; echo mock-tool-ran"}


@pytest.fixture
def copilot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    (tool,) = [t for t in FAKE_TOOLS if t.runner == "copilot"]
    return FakeRun(tool, monkeypatch, record)


@pytest.fixture(autouse=True)
def no_copilot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's credentials nor their copilot home take part."""
    for name in (
        "COPILOT_GITHUB_TOKEN",
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "COPILOT_PROVIDER_BASE_URL",
        "COPILOT_OFFLINE",
        "COPILOT_CUSTOM_INSTRUCTIONS_DIRS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COPILOT_HOME", str(tmp_path / "copilot-home"))


def build(request: ChatRequest, runner: CopilotRunner | None = None) -> llmrun.process.Invocation:
    return (runner or CopilotRunner()).build_invocation(request, "copilot")


def parse(name: str, **options: Any) -> tuple[list[llmrun.ChatChunk], CopilotParser]:
    return parse_lines((CAPTURES / f"{name}.stdout").read_text().splitlines(), **options)


def parse_lines(lines: list[str], **options: Any) -> tuple[list[llmrun.ChatChunk], CopilotParser]:
    parser = CopilotParser(**options)
    chunks = []
    for line in lines:
        chunks += parser.feed(line)
        if parser.finished:
            break  # as the runner does: nothing after the parser is done
    return chunks + parser.close(), parser


def event(kind: str, **data: Any) -> str:
    return json.dumps({"type": kind, "data": data, "id": "e", "timestamp": "t"})


def result(exit_code: int = 0, session: str = "s1") -> str:
    return json.dumps({"type": "result", "sessionId": session, "exitCode": exit_code, "usage": {}})


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- registry -----------------------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert "copilot" in runner_names()
    assert canonical_name("github-copilot") == canonical_name("copilot-cli") == canonical_name("Copilot") == "copilot"
    runner = get_runner("github-copilot")
    assert isinstance(runner, CopilotRunner)
    assert runner.default_model is None  # copilot's own choice
    caps = runner.capabilities
    assert caps.prompt_via_stdin and caps.token_streaming and caps.sessions and caps.usage and caps.agent_tools


# --- the command line -------------------------------------------------------------------


def test_command_line_defaults() -> None:
    runner = CopilotRunner()
    inv = build(ChatRequest.of("-hello, a prompt with a leading dash"), runner)
    usage_flag = next(arg for arg in inv.argv if arg.startswith("--usage-output-file="))
    assert inv.argv == [
        "copilot",
        "--output-format=json",
        "--no-auto-update",
        "--no-color",
        "--disable-client-telemetry",
        usage_flag,
        "--deny-tool=shell",
        "--deny-tool=write",
        "--deny-tool=url",
    ]
    assert inv.stdin == b"-hello, a prompt with a leading dash"  # without -p, copilot reads stdin whole
    assert inv.env == {} and inv.env_defaults == {"COPILOT_AUTO_UPDATE": "false"}
    run_dir = Path(usage_flag.partition("=")[2]).parent
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700 and stat.S_IMODE(run_dir.parent.stat().st_mode) == 0o700
    assert DENIED_TOOLS == ("shell", "write", "url")


def test_model_tools_session_and_options_follow_the_request() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")],
        model="-odd-model",
        allow_tools=True,
        session_id="odd-id",
        options={"reasoning_effort": "high", "agent": "reviewer", "extra_args": ["--log-level", "debug"]},
    )
    inv = build(request)
    assert "--model=-odd-model" in inv.argv  # one argument: a leading dash cannot turn it into a flag
    assert "--allow-all-tools" in inv.argv and not any(a.startswith("--deny-tool") for a in inv.argv)
    assert "--resume=odd-id" in inv.argv
    assert "--reasoning-effort=high" in inv.argv and "--agent=reviewer" in inv.argv
    assert inv.argv[-2:] == ["--log-level", "debug"]
    assert inv.stdin == b"second"  # only what the resumed session has not seen


def test_history_is_flattened_without_a_session() -> None:
    request = ChatRequest(messages=[Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")])
    prompt = (build(request).stdin or b"").decode()
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")
    assert not any("2+2" in arg for arg in build(request).argv)


def test_system_prompt_becomes_custom_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPILOT_CUSTOM_INSTRUCTIONS_DIRS", "/home/me/notes")
    runner = CopilotRunner()  # its private directory lives as long as the runner
    inv = build(ChatRequest(messages=[Message.system("-Be terse"), Message.user("hi")], system="Use English"), runner)
    (path,) = inv.temp_files
    assert Path(path).read_text() == "-Be terse\n\nUse English"
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert path.endswith(".instructions.md") and Path(path).parent.name == "instructions"
    run_dir = str(Path(path).parent.parent)
    assert inv.env["COPILOT_CUSTOM_INSTRUCTIONS_DIRS"] == f"/home/me/notes,{run_dir}"  # the user's own stay first
    assert not any("terse" in arg for arg in inv.argv)


def test_unsupported_requests_are_refused_not_dropped() -> None:
    runner = CopilotRunner()
    with pytest.raises(llmrun.UnsupportedFeature):
        runner.check_request(ChatRequest.of("hi", tools=[llmrun.ToolSpec(name="f")]))
    url = llmrun.ImagePart(url="http://i")
    with pytest.raises(llmrun.UnsupportedFeature, match="as data"):  # copilot attaches images as files of data
        runner.build_invocation(ChatRequest(messages=[Message.user("x", images=[url])]), "copilot")


# --- reading the captured output ---------------------------------------------------------


def test_deltas_stream_each_text_once() -> None:
    chunks, parser = parse("llmrun-text")
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.model == "mock-model"
    assert final.session_id == json.loads((CAPTURES / "llmrun-text.stdout").read_text().splitlines()[-1])["sessionId"]
    assert final.usage is None  # copilot reports usage in a file, which the runner reads
    assert [c.is_final for c in chunks].count(True) == 1
    assert parser.finished and parser.error is None


@pytest.mark.parametrize("name", ["mock-p-json", "llmrun-model-flag", "llmrun-resume", "llmrun-usage-cached"])
def test_other_runs_of_the_same_answer(name: str) -> None:
    chunks, parser = parse(name)
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert chunks[-1].is_final and chunks[-1].session_id and parser.error is None


def test_the_whole_message_is_used_when_no_delta_came() -> None:
    lines = [
        event("assistant.message", messageId="m1", model="gpt-x", content="Whole answer", toolRequests=[]),
        result(),
    ]
    chunks, _ = parse_lines(lines)
    assert "".join(c.delta for c in chunks) == "Whole answer" and chunks[-1].model == "gpt-x"


def test_reasoning_streams_apart_from_the_text_and_only_once() -> None:
    chunks, _ = parse("llmrun-thinking")
    assert "".join(c.thinking for c in chunks) == "Let me think. Done thinking."
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    whole = [event("assistant.reasoning", reasoningId="r9", content="Only whole."), result()]
    assert "".join(c.thinking for c in parse_lines(whole)[0]) == "Only whole."


def test_denied_tool_call_is_reported_not_run() -> None:
    chunks, _ = parse("llmrun-tooluse")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    use, denied = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.kind, use.name, use.input) == ("tool_use", "bash", SHELL_CALL)
    assert denied.kind == "permission_denied" and denied.id == use.id and denied.name == "bash"
    assert denied.message and "denied" in denied.message and "`shell`" in denied.message


def test_copilots_own_denial_of_a_write_is_reported_too() -> None:
    chunks, _ = parse("mock-p-json-tooluse-write-noallow")
    kinds = [c.agent_event.kind for c in chunks if c.agent_event is not None]
    assert kinds == ["tool_use", "permission_denied"]


def test_allowed_tool_call_runs() -> None:
    chunks, _ = parse("llmrun-tooluse-allowed")
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert done.kind == "tool_result" and done.id == use.id and done.name == "bash" and not done.is_error
    assert "mock-tool-ran" in done.output


def test_failed_tool_call_is_an_error_result() -> None:
    lines = [
        event("tool.execution_start", toolCallId="c1", toolName="view", arguments={"path": "x"}),
        event("tool.execution_complete", toolCallId="c1", success=False, error={"message": "no such file"}),
        result(),
    ]
    chunks, _ = parse_lines(lines)
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.name, done.kind, done.is_error, done.output) == ("view", "tool_result", True, "no such file")


@pytest.mark.parametrize("name", ["llmrun-401", "mock-401-json"])
def test_401_is_an_authentication_error_with_copilots_advice(name: str) -> None:
    chunks, parser = parse(name)
    error = parser.error
    assert type(error) is llmrun.AuthenticationError
    assert str(error).startswith("Authentication failed with provider at") and "(HTTP 401)" in str(error)
    assert error.hint and error.hint.startswith("Check your COPILOT_PROVIDER_API_KEY")
    assert not any(c.delta or c.is_final for c in chunks)


def test_500_retries_are_bounded_and_typed() -> None:
    chunks, parser = parse("llmrun-500")
    assert type(parser.error) is llmrun.ServiceUnavailable
    assert "HTTP 500" in str(parser.error) and "(stopped after 2 retries)" in str(parser.error)
    retries = [c.agent_event for c in chunks if c.agent_event is not None]
    assert len(retries) == 2 and all(e.kind == "retry" and "HTTP 500" in (e.message or "") for e in retries)


def test_copilots_own_give_up_is_typed_when_retries_are_not_bounded() -> None:
    chunks, parser = parse("llmrun-500", max_retries=None)
    assert type(parser.error) is llmrun.ServiceUnavailable
    assert "retried 5 times" in str(parser.error)
    assert sum(1 for c in chunks if c.agent_event is not None) == 5
    _, parser = parse("mock-500-json", max_retries=None)
    assert type(parser.error) is llmrun.ServiceUnavailable


def test_429_is_a_rate_limit_error_stopped_early() -> None:
    _, parser = parse("llmrun-429-partial")
    assert type(parser.error) is llmrun.RateLimitError and "Rate limit reached" in str(parser.error)
    _, parser = parse("llmrun-429-partial", max_retries=0)
    assert type(parser.error) is llmrun.RateLimitError and "(stopped after 0 retries)" in str(parser.error)
    _, parser = parse("llmrun-429-partial", max_retries=None)
    assert parser.error is None and not parser.finished  # copilot was still retrying


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"errorType": "query", "message": "Request failed: 503 upstream", "statusCode": 503},
            llmrun.ServiceUnavailable,
        ),
        (
            {"errorType": "query", "message": "prompt token count exceeds the context window"},
            llmrun.ContextLengthExceeded,
        ),
        (
            {"errorType": "query", "message": "The requested model is not supported", "statusCode": 400},
            llmrun.ModelNotFound,
        ),
        ({"errorType": "authentication", "message": "Not authorized"}, llmrun.AuthenticationError),
        ({"errorType": "query", "message": "Something odd"}, llmrun.RunnerError),
    ],
)
def test_session_errors_are_typed(data: dict[str, Any], error: type) -> None:
    _, parser = parse_lines([event("session.error", **data), result(exit_code=1)])
    assert type(parser.error) is error
    assert parser.finished


def test_a_failed_result_without_a_reason_leaves_it_to_the_exit() -> None:
    chunks, parser = parse_lines([event("assistant.message_delta", messageId="m", deltaContent="partial"), result(1)])
    assert not parser.finished and parser.error is None  # never a complete answer
    assert not any(c.is_final for c in chunks)


async def test_a_failed_result_is_never_an_answer(copilot: FakeRun, tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fixtures, ignore=shutil.ignore_patterns("*.usage.json"))
    lines = (CAPTURES / "llmrun-text.stdout").read_text().splitlines()
    (fixtures / "copilot" / "failed-result.stdout").write_text("\n".join([*lines[:-1], result(1)]) + "\n")
    copilot.monkeypatch.setenv("LLMRUN_COPILOT_BIN", str(fixtures / "bin" / "copilot"))
    copilot.scenario("failed-result")
    with pytest.raises(llmrun.OutputParseError):  # exit 0 with a failed result: not an answer
        await copilot.runner().complete(ChatRequest.of("hi"))
    copilot.fault("exit=1,stderr=Failed to write usage stats: disk full")
    with pytest.raises(llmrun.ProcessFailed, match="disk full"):
        await copilot.runner().complete(ChatRequest.of("hi"))


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.stdout")), ids=lambda p: p.stem)
def test_every_capture_parses_without_raising(path: Path) -> None:
    parser = CopilotParser(max_retries=None)
    for line in path.read_text().splitlines():
        parser.feed(line)
    parser.close()


# --- usage: copilot's report file ----------------------------------------------------------


def test_usage_report_counts_cached_tokens_once() -> None:
    usage = usage_from(usage_totals(report(CAPTURES / "llmrun-usage-cached.usage.json")))
    assert usage == llmrun.Usage(input_tokens=12, output_tokens=7, cache_read_tokens=100)
    assert usage.to_openai()["prompt_tokens"] == 112  # what the API reported


def test_usage_totals_sum_every_model() -> None:
    two = {
        "modelMetrics": {
            "a": {"usage": {"inputTokens": 10, "outputTokens": 2, "reasoningTokens": 1}},
            "b": {"usage": {"inputTokens": 5, "outputTokens": 3, "cacheWriteTokens": 4}},
        }
    }
    assert usage_totals(two) == {"inputTokens": 15, "outputTokens": 5, "reasoningTokens": 1, "cacheWriteTokens": 4}
    assert usage_from(usage_totals(two)) == llmrun.Usage(
        input_tokens=11, output_tokens=5, reasoning_tokens=1, cache_write_tokens=4
    )
    assert usage_totals(None) == {} and usage_totals({"modelMetrics": []}) == {}


def write_session(home: Path, session: str, *snapshots: dict[str, Any]) -> Path:
    path = home / "session-state" / session / "events.jsonl"
    path.parent.mkdir(parents=True)
    lines = [event("session.start", sessionId=session)]
    for snapshot in snapshots:
        lines += [event("user.message", content="x"), event("session.shutdown", accountingSnapshot=snapshot)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_session_totals_come_from_the_last_shutdown(tmp_path: Path) -> None:
    first = report(CAPTURES / "llmrun-text.usage.json")
    second = report(CAPTURES / "llmrun-resume.usage.json")
    write_session(tmp_path, SESSION, first, second)
    assert session_totals(str(tmp_path), SESSION) == usage_totals(second)
    assert session_totals(str(tmp_path), "no-such-session") is None
    assert session_totals(str(tmp_path), "../escape") is None
    write_session(tmp_path, "s-never-ended")
    assert session_totals(str(tmp_path), "s-never-ended") == {}


async def test_usage_of_a_run_comes_from_its_report(copilot: FakeRun) -> None:
    runner = copilot.runner()
    response = await runner.complete(ChatRequest.of("hi"))
    assert response.usage == llmrun.Usage(input_tokens=12, output_tokens=7)
    assert response.model == "mock-model" and response.agent_events == []
    (recorded,) = copilot.invocations()
    usage_file = next(a for a in recorded["argv"] if a.startswith("--usage-output-file=")).partition("=")[2]
    assert not Path(usage_file).parent.exists(), "the run's private directory was not removed"
    copilot.scenario("llmrun-usage-cached")
    usage = (await runner.complete(ChatRequest.of("hi"))).usage
    assert (usage.input_tokens, usage.cache_read_tokens) == (12, 100)


async def test_resumed_session_reports_its_own_run(copilot: FakeRun, tmp_path: Path) -> None:
    copilot.scenario("llmrun-resume")  # copilot's report: both turns, 24 in / 14 out
    write_session(tmp_path / "copilot-home", SESSION, report(CAPTURES / "llmrun-text.usage.json"))
    request = ChatRequest(messages=[Message.user("a"), Message.assistant("b"), Message.user("c")], session_id=SESSION)
    response = await copilot.runner().complete(request)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.agent_events == []


async def test_resumed_session_without_its_log_says_so(copilot: FakeRun) -> None:
    copilot.scenario("llmrun-resume")
    request = ChatRequest(messages=[Message.user("a"), Message.assistant("b"), Message.user("c")], session_id=SESSION)
    response = await copilot.runner().complete(request)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (24, 14)
    (notice,) = response.agent_events
    assert notice.kind == "notice" and "resumed session" in (notice.message or "")


async def test_no_report_means_unknown_usage_and_a_notice(copilot: FakeRun) -> None:
    copilot.scenario("mock-p-json")  # a transcript without a report
    chunks = [c async for c in copilot.runner().stream(ChatRequest.of("hi"))]
    assert chunks[-1].is_final and chunks[-1].usage is None
    notices = [c.agent_event for c in chunks if c.agent_event is not None]
    assert [n.kind for n in notices] == ["notice"] and "no usage report" in (notices[0].message or "")


async def test_system_prompt_files_are_removed_after_the_run(copilot: FakeRun) -> None:
    runner = copilot.runner()
    await runner.complete(ChatRequest.of("hi", system="Be terse"))
    (recorded,) = copilot.invocations()
    assert recorded["argv"][0:2] == ["--output-format=json", "--no-auto-update"]
    assert runner._private is not None and os.listdir(runner._private) == []
    await runner.aclose()
    assert not Path(runner._private or "/nonexistent").exists()


# --- exits the output does not explain --------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["llmrun-noauth", "noauth-p-json", "offline-without-provider", "fake-gh-token-offline-net"]
)
def test_missing_login_is_an_authentication_error(name: str) -> None:
    stderr = (CAPTURES / f"{name}.stderr").read_text()
    error = CopilotRunner().error_for_exit(1, stderr)
    assert type(error) is llmrun.AuthenticationError
    assert error.hint
    assert not str(error).startswith("Error:")


def test_the_hint_is_what_copilot_prints() -> None:
    what, advice = stderr_error((CAPTURES / "llmrun-noauth.stderr").read_text())
    assert what == "No authentication information found."
    assert advice == (
        "Start 'copilot' and run the '/login' command; "
        "Set the COPILOT_GITHUB_TOKEN, GH_TOKEN, or GITHUB_TOKEN environment variable; "
        "Run 'gh auth login' to authenticate with the GitHub CLI"
    )
    error = CopilotRunner().error_for_exit(1, (CAPTURES / "llmrun-noauth.stderr").read_text())
    assert error.hint == advice


def test_other_exit_errors() -> None:
    runner = CopilotRunner()
    missing = runner.error_for_exit(1, (CAPTURES / "llmrun-resume-missing.stderr").read_text())
    assert type(missing) is llmrun.SessionNotFound and "0cb916db" in str(missing)
    old = runner.error_for_exit(1, "error: unknown option '--usage-output-file'")
    assert isinstance(old, llmrun.ProcessFailed) and old.hint and "npm install" in old.hint
    assert type(runner.error_for_exit(1, "boom")) is llmrun.ProcessFailed


async def test_missing_login_through_the_fake(copilot: FakeRun) -> None:
    copilot.scenario("llmrun-noauth")
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await copilot.runner().complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 1 and "gh auth login" in (caught.value.hint or "")


async def test_bounded_retries_through_the_fake(copilot: FakeRun) -> None:
    copilot.scenario("llmrun-500")
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        await copilot.runner().complete(ChatRequest.of("hi", options={"max_retries": 1}))
    assert "(stopped after 1 retries)" in str(caught.value)


# --- health -----------------------------------------------------------------------------------


async def test_health_reads_the_two_line_version(copilot: FakeRun) -> None:
    report = await copilot.runner().health()
    assert report.status == "ok", report
    assert report.version == "1.0.102"
    assert report.authenticated is None and "may still be logged in" in report.message


@pytest.mark.parametrize(
    ("env", "status", "authenticated", "words"),
    [
        ({"COPILOT_PROVIDER_BASE_URL": "http://127.0.0.1:9/v1"}, "ok", True, "127.0.0.1:9"),
        ({"GH_TOKEN": "github_pat_x"}, "ok", True, "GH_TOKEN is set"),
        ({"GITHUB_TOKEN": "ghp_classic"}, "unauthenticated", False, "classic personal access token"),
        ({"COPILOT_OFFLINE": "true"}, "unauthenticated", False, "COPILOT_PROVIDER_BASE_URL"),
    ],
)
async def test_health_reports_what_is_configured(
    copilot: FakeRun, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], status: str, authenticated: bool, words: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    report = await copilot.runner().health()
    assert (report.status, report.authenticated) == (status, authenticated), report
    assert words in report.message
    if status == "unauthenticated":
        assert report.hint and "/login" in report.hint


async def test_runner_env_setting_counts_for_health(copilot: FakeRun) -> None:
    report = await copilot.runner(env={"COPILOT_GITHUB_TOKEN": "github_pat_y"}).health()
    assert report.authenticated is True and "COPILOT_GITHUB_TOKEN" in report.message


async def test_probe_shows_a_missing_login(copilot: FakeRun) -> None:
    copilot.scenario("llmrun-noauth")
    report = await copilot.runner().health(probe=True)
    assert report.status == "unauthenticated" and "No authentication information found" in report.message


# --- images ---------------------------------------------------------------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_images_are_attachments_of_private_files() -> None:
    import base64

    from llmrun import process

    images = [
        llmrun.ImagePart(data=PNG_DATA, media_type="image/png"),
        llmrun.ImagePart(url=f"data:image/webp;base64,{PNG_DATA}"),
    ]
    inv = CopilotRunner().build_invocation(ChatRequest(messages=[Message.user("What?", images=images)]), "copilot")
    try:
        paths = [arg.partition("=")[2] for arg in inv.argv if arg.startswith("--attachment=")]
        assert [os.path.splitext(p)[1] for p in paths] == [".png", ".webp"]
        for path in paths:
            assert path in inv.temp_files
            assert Path(path).read_bytes() == base64.b64decode(PNG_DATA)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert inv.stdin == b"What?"
    finally:
        for temp in inv.temp_files:
            process.remove_path(temp)
