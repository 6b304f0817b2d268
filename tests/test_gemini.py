"""Gemini CLI specifics: its command line, its stream-json dialect, its errors and health."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.registry import canonical_name, get_runner_class
from llmrun.runners import gemini
from llmrun.runners.gemini import (
    LOGIN_HINT,
    STDIN_LIMIT,
    GeminiParser,
    GeminiRunner,
    api_error_text,
    tool_message,
)

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun

CAPTURES = FIXTURES / "gemini"
GEMINI_TOOL = next(tool for tool in FAKE_TOOLS if tool.runner == "gemini")


@pytest.fixture
def fake_gemini(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(GEMINI_TOOL, monkeypatch, record)


@pytest.fixture
def runner() -> GeminiRunner:
    return GeminiRunner()


def parse(name: str) -> tuple[list[llmrun.ChatChunk], GeminiParser]:
    parser = GeminiParser()
    chunks = [c for line in (CAPTURES / f"{name}.stdout").read_text().splitlines() for c in parser.feed(line)]
    return chunks + parser.close(), parser


def captured(name: str) -> tuple[int, str]:
    rc = int((CAPTURES / f"{name}.rc").read_text().split()[0].removeprefix("rc="))
    return rc, (CAPTURES / f"{name}.stderr").read_text()


# --- the command line -------------------------------------------------------------------


def test_command_line_defaults(runner: GeminiRunner) -> None:
    invocation = runner.build_invocation(ChatRequest.of("-hello"), "gemini")
    assert invocation.argv == [
        "gemini",
        "-p",
        "",
        "--output-format",
        "stream-json",
        "--skip-trust",  # no --model: none asked for, so gemini's own choice applies
        "--approval-mode=default",  # headless default mode registers read-only tools only
    ]
    assert invocation.stdin == b"-hello"  # over stdin, so a leading dash is never an option
    tmpdir = invocation.env["TMPDIR"]
    assert os.path.isdir(tmpdir) and stat.S_IMODE(os.stat(os.path.dirname(tmpdir)).st_mode) == 0o700
    assert "GEMINI_SYSTEM_MD" not in invocation.env


def test_model_tools_trust_and_extra_args_follow_the_request(runner: GeminiRunner) -> None:
    argv = runner.build_invocation(
        ChatRequest.of("hi", model="gemini-2.5-pro", allow_tools=True, options={"extra_args": ["--debug"]}), "gemini"
    ).argv
    assert "--model=gemini-2.5-pro" in argv and "--approval-mode=yolo" in argv
    assert argv[-1] == "--debug"
    argv = runner.build_invocation(
        ChatRequest.of("hi", allow_tools=True, options={"approval_mode": "auto_edit", "skip_trust": False}), "gemini"
    ).argv
    assert "--approval-mode=auto_edit" in argv and "--skip-trust" not in argv


@pytest.mark.parametrize(
    ("options", "allow_tools"), [({"approval_mode": "yolo"}, False), ({"approval_mode": "everything"}, True)]
)
def test_approval_modes_cannot_widen_tools_without_allow_tools(
    runner: GeminiRunner, options: dict[str, str], allow_tools: bool
) -> None:
    with pytest.raises(llmrun.UnsupportedFeature):
        runner.build_invocation(ChatRequest.of("hi", allow_tools=allow_tools, options=options), "gemini")


def test_history_is_flattened_and_a_session_gets_only_the_new_turn(runner: GeminiRunner) -> None:
    history = [Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")]
    prompt = runner.build_invocation(ChatRequest(messages=history), "gemini").stdin.decode()  # type: ignore[union-attr]
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")
    invocation = runner.build_invocation(ChatRequest(messages=history, session_id="abc-1"), "gemini")
    assert "--resume=abc-1" in invocation.argv
    assert invocation.stdin == b"Times 3?"


def test_system_prompt_goes_through_a_private_file(runner: GeminiRunner) -> None:
    request = ChatRequest(messages=[Message.system("Be terse"), Message.user("hi")], system="Use English")
    invocation = runner.build_invocation(request, "gemini")
    path = invocation.env["GEMINI_SYSTEM_MD"]
    assert Path(path).read_text() == "Be terse\n\nUse English"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path in invocation.temp_files
    assert "Be terse" not in " ".join(invocation.argv)


async def test_system_prompt_file_is_removed_after_the_run(fake_gemini: FakeRun) -> None:
    runner = fake_gemini.runner()
    assert isinstance(runner, GeminiRunner)
    await runner.complete(ChatRequest.of("hi", system="Be terse"))
    assert runner._private is not None
    assert [p.name for p in Path(runner._private).iterdir() if p.suffix == ".md"] == []


def test_a_prompt_gemini_would_truncate_is_refused(runner: GeminiRunner) -> None:
    with pytest.raises(llmrun.UnsupportedFeature, match="8388608 bytes"):
        runner.build_invocation(ChatRequest.of("x" * (STDIN_LIMIT + 1)), "gemini")
    runner.build_invocation(ChatRequest.of("x" * STDIN_LIMIT), "gemini")


def test_retries_are_bounded_through_system_defaults_only_where_gemini_reads_them(
    runner: GeminiRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secure = tmp_path / "secure"
    secure.mkdir()
    monkeypatch.setattr(gemini.os, "geteuid", lambda: 0)
    monkeypatch.setattr(gemini, "_root_only_base", lambda: str(secure))
    monkeypatch.setenv("GEMINI_CLI_SYSTEM_DEFAULTS_PATH", str(tmp_path / "absent.json"))
    env = runner.build_invocation(ChatRequest.of("hi"), "gemini").env
    defaults = env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"]
    assert defaults.startswith(str(secure))
    assert json.loads(Path(defaults).read_text()) == {"general": {"maxAttempts": 1}}
    assert stat.S_IMODE(os.stat(defaults).st_mode) == 0o600
    # Where no directory qualifies (any non-root user), nothing is pointed at.
    monkeypatch.setattr(gemini.os, "geteuid", lambda: 1000)
    assert "GEMINI_CLI_SYSTEM_DEFAULTS_PATH" not in GeminiRunner().build_invocation(ChatRequest.of("hi"), "gemini").env


def test_administrator_defaults_are_kept_or_left_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    admin = tmp_path / "system-defaults.json"
    monkeypatch.setenv("GEMINI_CLI_SYSTEM_DEFAULTS_PATH", str(admin))
    monkeypatch.setattr(gemini, "_root_only", lambda path: True)
    admin.write_text('{\n  // comment, as gemini allows\n  "ui": {"theme": "a//b"}, "general": {"vimMode": true}\n}')
    assert gemini._bounded_system_defaults() == {
        "ui": {"theme": "a//b"},
        "general": {"vimMode": True, "maxAttempts": 1},
    }
    admin.write_text('{"general": {"maxAttempts": 4}}')
    assert gemini._bounded_system_defaults() is None  # the administrator's bound stays
    admin.write_text("{not json")
    assert gemini._bounded_system_defaults() is None  # unreadable: better not to shadow it
    monkeypatch.setattr(gemini, "_root_only", lambda path: False)
    assert gemini._bounded_system_defaults() == {"general": {"maxAttempts": 1}}  # gemini would skip it


def test_sampling_parameters_go_in_a_system_settings_file_of_the_run(
    runner: GeminiRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secure = tmp_path / "secure"
    secure.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(gemini, "_root_only_base", lambda: str(secure))
    monkeypatch.setattr(gemini, "_root_only", lambda path: True)
    monkeypatch.setattr(GeminiRunner, "honoured_parameters", gemini.HONOURED_AS_ROOT)  # as when llmrun runs as root
    machine = tmp_path / "settings.json"
    machine.write_text('{"ui": {"theme": "x"} // gemini allows comments\n}')
    monkeypatch.setenv("GEMINI_CLI_SYSTEM_SETTINGS_PATH", str(machine))
    monkeypatch.setenv("GEMINI_CLI_HOME", str(tmp_path / "home"))
    users = {"match": {"model": "gemini-2.5-pro"}, "modelConfig": {"generateContentConfig": {"topK": 5}}}
    (tmp_path / "home" / ".gemini").mkdir(parents=True)
    (tmp_path / "home" / ".gemini" / "settings.json").write_text(
        json.dumps({"modelConfigs": {"customOverrides": [users]}})
    )
    assert "GEMINI_CLI_SYSTEM_SETTINGS_PATH" not in runner.build_invocation(ChatRequest.of("hi"), "gemini").env

    request = ChatRequest.of("hi", temperature=0.3, max_tokens=77, top_p=0.5, seed=7, frequency_penalty=0.2)
    invocation = runner.build_invocation(request, "gemini")
    path = invocation.env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"]
    assert path.startswith(str(secure)) and path in invocation.temp_files
    assert invocation.env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"].startswith(str(secure))  # not looked for beside it
    settings = json.loads(Path(path).read_text())
    assert settings["ui"] == {"theme": "x"}  # the machine's own system settings still hold
    config = {"temperature": 0.3, "topP": 0.5, "maxOutputTokens": 77, "seed": 7, "frequencyPenalty": 0.2}
    ours = {"match": {"isChatModel": True}, "modelConfig": {"generateContentConfig": config}}
    assert settings["modelConfigs"]["customOverrides"] == [users, ours]
    machine.write_text("{not json")  # gemini would fail on it: better refused than dropped
    with pytest.raises(llmrun.UnsupportedFeature, match="cannot be read"):
        runner.build_invocation(request, "gemini")


async def test_sampling_parameters_gemini_would_not_read_are_named_or_refused(
    fake_gemini: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GeminiRunner, "honoured_parameters", {})  # as when llmrun does not run as root
    response = await fake_gemini.runner().complete(ChatRequest.of("hi", temperature=0.3, max_tokens=500))
    assert response.warnings == ["ignored parameter temperature: Gemini CLI has no way to set it"]
    (invocation,) = fake_gemini.invocations()
    assert "GEMINI_CLI_SYSTEM_SETTINGS_PATH" not in invocation["env"]
    with pytest.raises(llmrun.UnsupportedFeature, match="temperature"):
        await fake_gemini.runner().complete(ChatRequest.of("hi", temperature=0.3, strict_params=True))


def test_root_only_is_gemini_s_check(tmp_path: Path) -> None:
    assert not gemini._root_only(str(tmp_path))  # below /tmp, writable by all
    assert gemini._root_only("/") == (os.stat("/").st_uid == 0 and not os.stat("/").st_mode & 0o022)


async def test_error_reports_are_swept_after_each_run(fake_gemini: FakeRun) -> None:
    runner = fake_gemini.runner()
    assert isinstance(runner, GeminiRunner)
    report = Path(runner._private_dir()) / "tmp" / "gemini-client-error-Turn.run-x.json"
    report.write_text("{}")
    keep = report.with_name("other.txt")
    keep.write_text("")
    fake_gemini.scenario("stream-json-500")
    with pytest.raises(llmrun.ServiceUnavailable):
        await runner.complete(ChatRequest.of("hi"))
    assert not report.exists() and keep.exists()
    private = runner._private
    await runner.aclose()
    assert private is not None and not os.path.exists(private)


# --- reading the captured output ---------------------------------------------------------


def test_text_streams_as_deltas_with_usage_model_and_session() -> None:
    chunks, parser = parse("stream-json-text")
    assert [c.delta for c in chunks if c.delta] == ["Hello ", "from ", "mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and parser.finished and parser.error is None
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7, total_tokens=19)
    assert final.model == "gemini-2.5-flash"
    init = json.loads((CAPTURES / "stream-json-text.stdout").read_text().splitlines()[0])
    assert final.session_id == init["session_id"]


@pytest.mark.parametrize(
    ("capture", "limit", "reason"),
    [
        ("stream-json-text", None, "stop"),
        ("stream-json-text", 8, "stop"),
        ("stream-json-text", 7, "length"),  # the answer is 7 tokens
        ("mock-tooluse-stream-yolo", 7, "stop"),  # the stats add up every request of a run with tools
    ],
)
def test_an_answer_that_used_the_whole_limit_was_cut(capture: str, limit: int | None, reason: str) -> None:
    parser = GeminiParser(max_tokens=limit)
    chunks = [c for line in (CAPTURES / f"{capture}.stdout").read_text().splitlines() for c in parser.feed(line)]
    assert chunks[-1].finish_reason == reason


def test_routed_model_is_the_one_that_answered() -> None:
    chunks, _ = parse("mock-stream-json")  # run without -m: a router call, then the main model
    assert chunks[-1].model == "gemini-3.8-flash"
    assert chunks[-1].usage is not None and chunks[-1].usage.input_tokens == 24  # both calls count


def test_cached_and_thought_tokens() -> None:
    chunks, _ = parse("stream-json-cached")
    assert chunks[-1].usage == llmrun.Usage(input_tokens=7, output_tokens=7, cache_read_tokens=5, total_tokens=19)
    chunks, _ = parse("stream-json-thinking")
    assert "".join(c.delta for c in chunks) == "Hello from mock"  # the thought text is not there
    usage = chunks[-1].usage
    assert usage is not None and usage.reasoning_tokens == 3 and usage.total_tokens == 22


def test_tool_call_unexecuted_by_default_is_an_agent_event() -> None:
    chunks, _ = parse("stream-json-tooluse-default")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    use, result = [c.agent_event for c in chunks if c.agent_event]
    assert (use.kind, use.name, use.input) == (
        "tool_use",
        "run_shell_command",
        {"command": "echo mock-tool-ran", "description": "Print a marker"},
    )
    assert result.kind == "tool_result" and result.id == use.id and result.is_error
    assert 'Tool "run_shell_command" not found' in str(result.output)


def test_tool_run_in_yolo_mode() -> None:
    chunks, _ = parse("stream-json-tooluse-yolo")
    result = next(c.agent_event for c in chunks if c.agent_event and c.agent_event.kind == "tool_result")
    assert result.output == "mock-tool-ran" and not result.is_error


@pytest.mark.parametrize(
    ("capture", "error", "message"),
    [
        ("stream-json-401", llmrun.AuthenticationError, "API key not valid. Please pass a valid API key."),
        ("stream-json-429", llmrun.RateLimitError, "Resource has been exhausted (e.g. check quota)."),
        ("mock-429-stream-maxattempts1", llmrun.RateLimitError, "Number of request tokens has exceeded"),
        ("stream-json-500", llmrun.ServiceUnavailable, "An internal error has occurred."),
        ("stream-json-503", llmrun.ServiceUnavailable, "The model is overloaded. Please try again later."),
        ("stream-json-404-model", llmrun.ModelNotFound, "models/no-such-model is not found"),
        ("stream-json-400-context", llmrun.ContextLengthExceeded, "The input token count (1200000) exceeds"),
    ],
)
def test_failed_results_become_typed_errors_with_clean_messages(capture: str, error: type, message: str) -> None:
    chunks, parser = parse(capture)
    assert type(parser.error) is error
    text = str(parser.error)
    assert text.startswith(message)
    assert "[API Error" not in text and '{"error"' not in text and "Please wait" not in text
    assert not any(c.is_final or c.delta for c in chunks)


def test_json_errors_name_their_status() -> None:
    assert api_error_text('[API Error: {"error":{"code":401,"message":"bad key","status":"UNAUTHENTICATED"}}]') == (
        "bad key (401 UNAUTHENTICATED)",
        401,
    )
    nested = '{"error":{"code":500,"message":"{\\"error\\":{\\"message\\":\\"deep\\"}}","status":"INTERNAL"}}'
    assert api_error_text(nested) == ("deep (500 INTERNAL)", 500)
    trailing = 'Attempt 2 failed: {"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}. Max attempts'
    assert api_error_text(trailing) == ("Attempt 2 failed: busy (503 UNAVAILABLE)", 503)
    assert api_error_text("[API Error: quota (Status: RESOURCE_EXHAUSTED)]") == (
        "quota (Status: RESOURCE_EXHAUSTED)",
        429,
    )


def test_error_events_are_notices_and_explain_a_failed_result() -> None:
    parser = GeminiParser()
    (warning,) = parser.feed('{"type":"error","severity":"warning","message":"Loop detected, stopping execution"}')
    assert warning.agent_event is not None and warning.agent_event.kind == "notice"
    assert not warning.agent_event.is_error
    parser.feed('{"type":"error","severity":"error","message":"Model stream ended with an invalid chunk."}')
    assert parser.feed('{"type":"result","status":"error","stats":{}}') == []
    assert type(parser.error) is llmrun.RunnerError and "invalid chunk" in str(parser.error)


def test_unknown_events_and_garbage_are_skipped() -> None:
    parser = GeminiParser()
    for line in ["noise", "[1]", "{bad", '{"type":"brand_new"}', '{"type":"message","role":"user","content":"x"}']:
        assert parser.feed(line) == []
    assert not parser.finished


def test_a_run_stopped_by_sigterm_is_not_an_answer() -> None:
    chunks, parser = parse("stream-json-sigterm")  # gemini exits 0 on SIGTERM
    assert [c.delta for c in chunks if c.delta] == ["one "]
    assert not parser.finished and parser.error is None


async def test_exit_zero_without_result_is_not_success(fake_gemini: FakeRun) -> None:
    fake_gemini.scenario("stream-json-sigterm")
    with pytest.raises(llmrun.OutputParseError):
        await fake_gemini.runner().complete(ChatRequest.of("hi"))


# --- exits without a result --------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "error", "words"),
    [
        ("noauth-stream", llmrun.AuthenticationError, "Please set an Auth method"),
        ("stream-json-noauth", llmrun.AuthenticationError, "you must specify the GEMINI_API_KEY"),
        ("mock-baseurl-without-selectedType", llmrun.AuthenticationError, "Invalid auth method selected."),
        ("mock-untrusted-dir", llmrun.RunnerError, "not running in a trusted directory"),
        ("resume-missing", llmrun.SessionNotFound, "Error resuming session: No previous sessions found"),
        ("empty-prompt", llmrun.RunnerError, "No input provided via stdin."),
        ("mock-401-json", llmrun.AuthenticationError, "invalid x-api-key (401 UNAUTHENTICATED)"),
        ("mock-500-json-maxattempts1", llmrun.ServiceUnavailable, "Internal server error (500 INTERNAL)"),
    ],
)
def test_exit_codes_become_typed_errors(runner: GeminiRunner, capture: str, error: type, words: str) -> None:
    returncode, stderr = captured(capture)
    exc = runner.error_for_exit(returncode, stderr)
    assert type(exc) is error, exc
    assert words in exc.message
    assert "\x1b" not in exc.message and " at " not in exc.message and "[STARTUP]" not in exc.message


def test_auth_and_trust_errors_say_what_to_do(runner: GeminiRunner) -> None:
    assert runner.error_for_exit(*captured("noauth-stream")).hint == LOGIN_HINT
    hint = runner.error_for_exit(*captured("mock-untrusted-dir")).hint
    assert hint and "--skip-trust" in hint and "GEMINI_CLI_TRUST_WORKSPACE" in hint


def test_http_status_in_the_exit_code(runner: GeminiRunner) -> None:
    assert type(runner.error_for_exit(173, "")) is llmrun.RateLimitError
    assert type(runner.error_for_exit(247, "boom")) is llmrun.ServiceUnavailable
    assert type(runner.error_for_exit(148, "")) is llmrun.ModelNotFound
    assert type(runner.error_for_exit(130, "")) is llmrun.Cancelled
    unknown = runner.error_for_exit(3, "segfault in the tool")
    assert type(unknown) is llmrun.ProcessFailed and "segfault in the tool" in str(unknown)
    old = runner.error_for_exit(1, "Unknown arguments: skip-trust, skipTrust")
    assert type(old) is llmrun.ProcessFailed and old.hint and "npm install -g @google/gemini-cli" in old.hint


def test_an_untyped_result_error_is_typed_by_the_exit_code(runner: GeminiRunner) -> None:
    plain = llmrun.RunnerError("something odd").with_process(runner="gemini", exit_code=247, stderr="tail")
    typed = runner._retyped(plain)
    assert type(typed) is llmrun.ServiceUnavailable
    assert (typed.process_exit_code, typed.stderr, str(typed.message)) == (247, "tail", "something odd (HTTP 503)")
    other = llmrun.RunnerError("odd").with_process(runner="gemini", exit_code=1, stderr="")
    assert runner._retyped(other) is other


def test_stderr_message_without_trace() -> None:
    _, stderr = captured("stream-json-500")
    assert tool_message(stderr) == "An internal error has occurred. Please retry or report it. (500 INTERNAL)"


# --- the contract's fake, driven through the runner ---------------------------------------


async def test_typed_errors_through_the_fake_carry_exit_code_and_status(fake_gemini: FakeRun) -> None:
    fake_gemini.scenario("stream-json-429")
    with pytest.raises(llmrun.RateLimitError) as caught:
        await fake_gemini.runner().complete(ChatRequest.of("hi"))
    assert caught.value.process_exit_code == 173
    assert "(HTTP 429)" in str(caught.value)
    assert "RetryableQuotaError" in caught.value.stderr  # the whole tail stays available


async def test_the_fake_is_invoked_as_the_real_tool_would_be(fake_gemini: FakeRun) -> None:
    response = await fake_gemini.runner().complete(ChatRequest.of("-a prompt", model="pro"))
    assert response.content == "Hello from mock"
    (invocation,) = fake_gemini.invocations()
    assert invocation["stdin"] == "-a prompt"
    assert invocation["argv"][:3] == ["-p", "", "--output-format"] and "--model=pro" in invocation["argv"]


# --- health -----------------------------------------------------------------------------


@pytest.fixture
def no_gemini_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials anywhere gemini looks; returns the (empty) home."""
    for name in (*gemini.AUTH_ENV, *gemini.AUTH_SWITCHES):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GEMINI_CLI_SYSTEM_SETTINGS_PATH", str(tmp_path / "no-system.json"))
    monkeypatch.delenv("GEMINI_CLI_HOME", raising=False)
    monkeypatch.delenv("GEMINI_CLI_SYSTEM_DEFAULTS_PATH", raising=False)
    monkeypatch.chdir(work)
    return home


async def test_auth_is_reported_configured_from_env_settings_or_env_file(
    runner: GeminiRunner, no_gemini_auth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticated, message = await runner.check_auth("gemini")
    assert authenticated is None and "--probe" in message
    (no_gemini_auth / ".env").write_text("# keys\nexport GEMINI_API_KEY='abc'\n")
    authenticated, message = await runner.check_auth("gemini")
    assert authenticated is True and "GEMINI_API_KEY in" in message and "not verified" in message
    (no_gemini_auth / ".env").unlink()
    settings = no_gemini_auth / ".gemini" / "settings.json"
    settings.write_text('{\n // signed in\n "security": {"auth": {"selectedType": "oauth-personal"}}}')
    assert (await runner.check_auth("gemini"))[0] is True
    settings.unlink()
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    assert (await runner.check_auth("gemini"))[1].startswith("GOOGLE_GENAI_USE_VERTEXAI=true")


async def test_health_of_the_fake(fake_gemini: FakeRun, no_gemini_auth: Path) -> None:
    report = await fake_gemini.runner().health()
    assert (report.status, report.version, report.authenticated) == ("ok", "0.61.0", None)
    fake_gemini.scenario("stream-json-401")
    report = await fake_gemini.runner().health(probe=True)
    assert report.status == "unauthenticated" and report.hint == LOGIN_HINT


async def test_health_outdated_and_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "gemini"
    old.write_text("#!/bin/sh\necho 0.50.2\n")
    old.chmod(0o755)
    report = await GeminiRunner(binary=str(old)).health()
    assert report.status == "outdated" and report.version == "0.50.2"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = await GeminiRunner().health()
    assert report.status == "not_installed" and report.hint and "npm install -g @google/gemini-cli" in report.hint


# --- lookup -----------------------------------------------------------------------------


def test_names_and_metadata() -> None:
    assert canonical_name("gemini-cli") == canonical_name("Gemini_CLI") == "gemini"
    assert get_runner_class("gemini") is GeminiRunner
    meta = GeminiRunner().metadata()
    assert meta.default_model is None and meta.capabilities.token_streaming and meta.capabilities.prompt_via_stdin
    assert any("flash" in m.aliases for m in meta.models)


# --- images ---------------------------------------------------------------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_images_are_at_references_to_a_directory_of_the_run(runner: GeminiRunner) -> None:
    import base64

    from llmrun import process

    images = [
        llmrun.ImagePart(data=PNG_DATA, media_type="image/png"),
        llmrun.ImagePart(data=PNG_DATA, media_type="image/jpeg"),
    ]
    inv = runner.build_invocation(ChatRequest(messages=[Message.user("Compare them", images=images)]), "gemini")
    try:
        (folder,) = [arg.partition("=")[2] for arg in inv.argv if arg.startswith("--include-directories=")]
        assert folder in inv.temp_files  # removed with the run
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        paths = [os.path.join(folder, "image-1.png"), os.path.join(folder, "image-2.jpg")]
        assert sorted(os.path.join(folder, name) for name in os.listdir(folder)) == paths  # nothing else to read
        for path in paths:
            assert Path(path).read_bytes() == base64.b64decode(PNG_DATA)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert inv.stdin is not None
        assert inv.stdin.decode() == f"Compare them\n\n@{paths[0]} @{paths[1]}"
    finally:
        for path in inv.temp_files:
            process.remove_path(path)


def test_a_request_without_images_names_no_directory(runner: GeminiRunner) -> None:
    inv = runner.build_invocation(ChatRequest.of("hi"), "gemini")
    assert not any(arg.startswith("--include-directories") for arg in inv.argv)
    assert inv.stdin == b"hi"


def test_an_image_url_is_refused_before_anything_is_written(runner: GeminiRunner) -> None:
    from llmrun import private

    before = set(os.listdir(private.directory()))
    images = [llmrun.ImagePart(data=PNG_DATA, media_type="image/png"), llmrun.ImagePart(url="https://e.invalid/a.png")]
    with pytest.raises(llmrun.UnsupportedFeature, match="as data"):
        runner.prepared_invocation(ChatRequest(messages=[Message.user("x", images=images)]))
    assert set(os.listdir(private.directory())) <= before
