"""OpenCode specifics: its command line, the run's configuration, its JSON events, health, models."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message, parameters
from llmrun.registry import canonical_name, get_runner, runner_names
from llmrun.runners.opencode import (
    AGENT,
    READ_ONLY_PERMISSION,
    OpencodeParser,
    OpencodeRunner,
    classify,
    last_stream_error,
    logged_failure,
)

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun

CAPTURES = FIXTURES / "opencode"
USER_CONFIG = {"provider": {"mock": {"options": {"baseURL": "http://127.0.0.1:9/v1"}}}, "model": "mock/mock-model"}


@pytest.fixture
def opencode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    (tool,) = [t for t in FAKE_TOOLS if t.runner == "opencode"]
    return FakeRun(tool, monkeypatch, record)


@pytest.fixture(autouse=True)
def no_inline_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCODE_CONFIG_CONTENT", raising=False)


def build(request: ChatRequest, runner: OpencodeRunner | None = None) -> llmrun.process.Invocation:
    return (runner or OpencodeRunner()).build_invocation(request, "opencode")


def config_of(inv: llmrun.process.Invocation) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(inv.env["OPENCODE_CONFIG_CONTENT"])
    return data


def parse(name: str) -> tuple[list[llmrun.ChatChunk], OpencodeParser]:
    return parse_lines((CAPTURES / f"{name}.stdout").read_text().splitlines())


def parse_lines(lines: list[str]) -> tuple[list[llmrun.ChatChunk], OpencodeParser]:
    parser = OpencodeParser()
    chunks = []
    for line in lines:
        chunks += parser.feed(line)
        if parser.finished:
            break  # as the runner does: nothing after the parser is done
    return chunks + parser.close(), parser


def event(kind: str, **part: Any) -> str:
    return json.dumps({"type": kind, "timestamp": 1, "sessionID": "ses_1", "part": part})


def step_finish(reason: str, **tokens: Any) -> str:
    return event("step_finish", type="step-finish", reason=reason, tokens=tokens, cost=0.5)


# --- registry -----------------------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert "opencode" in runner_names()
    assert canonical_name("opencode-ai") == canonical_name("open-code") == canonical_name("OpenCode") == "opencode"
    runner = get_runner("opencode-ai")
    assert isinstance(runner, OpencodeRunner)
    assert runner.default_model is None  # opencode's configured model
    caps = runner.capabilities
    assert caps.prompt_via_stdin and not caps.token_streaming and caps.cost and caps.model_discovery


# --- the command line and the run's configuration ------------------------------------------


def test_command_line_defaults() -> None:
    inv = build(ChatRequest.of("-hello, a prompt with a leading dash"))
    assert inv.argv == [
        "opencode",
        "run",
        "--format=json",
        "--thinking",
        "--title=",
        "--print-logs",
        "--log-level=WARN",
        f"--agent={AGENT}",
    ]
    assert inv.stdin == b"-hello, a prompt with a leading dash"  # the whole message, never in argv
    assert inv.env_defaults == {"OPENCODE_DISABLE_AUTOUPDATE": "1"}
    assert config_of(inv) == {"agent": {AGENT: {"mode": "primary", "permission": READ_ONLY_PERMISSION}}}
    assert inv.temp_files == []


def test_read_only_rules_deny_first_and_name_the_dangerous_tools() -> None:
    rules = list(READ_ONLY_PERMISSION.items())
    assert rules[0] == ("*", "deny")  # the last matching rule wins: allows come after the catch-all
    allowed = {key for key, value in rules if value == "allow"}
    assert allowed == {"read", "glob", "grep", "list", "skill", "todowrite", "todoread"}
    for key in ("bash", "edit", "webfetch", "task", "external_directory"):
        assert READ_ONLY_PERMISSION[key] == "deny"


def test_the_users_inline_config_is_kept_under_llmruns(monkeypatch: pytest.MonkeyPatch) -> None:
    own = {
        **USER_CONFIG,
        "agent": {AGENT: {"permission": {"*": "allow", "bash": "allow"}, "temperature": 0.1}, "build": {"x": 1}},
    }
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps(own))
    config = config_of(build(ChatRequest.of("hi")))
    assert config["provider"] == USER_CONFIG["provider"] and config["model"] == "mock/mock-model"
    assert config["agent"]["build"] == {"x": 1}
    ours = config["agent"][AGENT]
    assert ours["temperature"] == 0.1
    # Replaced, not merged: a rule of the user's after the deny would win.
    assert list(ours["permission"].items()) == list(READ_ONLY_PERMISSION.items())


def test_the_runners_env_setting_is_the_users_inline_config() -> None:
    runner = OpencodeRunner(env={"OPENCODE_CONFIG_CONTENT": json.dumps(USER_CONFIG)})
    assert config_of(build(ChatRequest.of("hi"), runner))["provider"] == USER_CONFIG["provider"]


def test_inline_config_llmrun_cannot_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", '{"model": "a/b", // a comment\n}')
    with pytest.raises(llmrun.UnsupportedFeature) as caught:
        build(ChatRequest.of("hi"))
    assert caught.value.runner == "opencode" and "OPENCODE_CONFIG_CONTENT" in str(caught.value)
    # With tools allowed and no system prompt there is nothing to add, so it is left alone.
    inv = build(ChatRequest.of("hi", allow_tools=True))
    assert "OPENCODE_CONFIG_CONTENT" not in inv.env and not any(a.startswith("--agent") for a in inv.argv)


def test_model_session_and_options_follow_the_request() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")],
        model="mock/-odd",
        session_id="ses_odd",
        options={"variant": "high", "extra_args": ["--pure"]},
    )
    inv = build(request)
    assert "--model=mock/-odd" in inv.argv and "--session=ses_odd" in inv.argv and "--variant=high" in inv.argv
    assert inv.argv[-1] == "--pure"
    assert inv.stdin == b"second"  # only what the resumed session has not seen


def test_history_is_flattened_without_a_session() -> None:
    request = ChatRequest(messages=[Message.user("What is 2+2?"), Message.assistant("4"), Message.user("Times 3?")])
    prompt = (build(request).stdin or b"").decode()
    assert prompt.index("What is 2+2?") < prompt.index("4") < prompt.index("Times 3?")


def test_system_prompt_replaces_the_agents_prompt_from_a_private_file(temp_dir: Path) -> None:
    inv = build(ChatRequest(messages=[Message.system("-Be terse"), Message.user("hi")], system="{env:HOME} literally"))
    (path,) = inv.temp_files
    assert Path(path).parent.parent == temp_dir  # in llmrun's private directory there
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert Path(path).read_text() == "-Be terse\n\n{env:HOME} literally"
    assert config_of(inv)["agent"][AGENT]["prompt"] == "{file:" + path + "}"
    assert not any("terse" in arg for arg in inv.argv)
    Path(path).unlink()


def test_allowed_tools_use_opencodes_own_agent_and_rules() -> None:
    inv = build(ChatRequest.of("hi", allow_tools=True))
    assert inv.env == {} and not any(a.startswith("--agent") for a in inv.argv)
    with_system = build(ChatRequest.of("hi", allow_tools=True, system="Be terse"))
    assert "--agent=build" in with_system.argv
    assert set(config_of(with_system)["agent"]["build"]) == {"prompt"}  # no permission rules
    Path(with_system.temp_files[0]).unlink()
    chosen = build(ChatRequest.of("hi", allow_tools=True, options={"agent": "plan"}))
    assert "--agent=plan" in chosen.argv and chosen.env == {}


def test_sampling_goes_on_the_runs_agent_and_the_output_limit_in_the_environment() -> None:
    inv = build(ChatRequest.of("hi", temperature=0.3, top_p=0.5, max_tokens=77))
    assert config_of(inv)["agent"][AGENT]["temperature"] == 0.3
    assert config_of(inv)["agent"][AGENT]["top_p"] == 0.5
    assert inv.env["OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX"] == "77"
    # With tools allowed the run's agent is opencode's default one, named so that it gets them.
    allowed = build(ChatRequest.of("hi", allow_tools=True, temperature=0))
    assert "--agent=build" in allowed.argv
    assert config_of(allowed) == {"agent": {"build": {"temperature": 0}}}


def test_a_parameter_opencode_cannot_take_is_refused_under_strict_params() -> None:
    request = ChatRequest.of("hi", temperature=0.3, seed=7, presence_penalty=0.5, strict_params=True)
    with pytest.raises(llmrun.UnsupportedFeature, match="OpenCode cannot honour seed, presence_penalty"):
        parameters.warnings_for(OpencodeRunner(), request)


def test_an_agent_of_the_users_gets_the_read_only_rules() -> None:
    inv = build(ChatRequest.of("hi", options={"agent": "reviewer"}))
    assert "--agent=reviewer" in inv.argv
    assert config_of(inv) == {"agent": {"reviewer": {"permission": READ_ONLY_PERMISSION}}}


async def test_configured_extra_args_go_after_the_subcommand(opencode: FakeRun) -> None:
    await opencode.runner(extra_args=["--pure"]).complete(ChatRequest.of("hi"))
    (recorded,) = opencode.invocations()
    assert recorded["argv"][:3] == ["run", "--pure", "--format=json"]


async def test_temp_files_are_removed_after_the_run(opencode: FakeRun, temp_dir: Path) -> None:
    response = await opencode.runner().complete(ChatRequest.of("hi", system="Be terse"))
    assert response.content == "Hello from mock"
    (recorded,) = opencode.invocations()
    assert recorded["stdin"] == "hi" and "--agent=llmrun" in recorded["argv"]
    assert [p for p in temp_dir.rglob("*") if p.is_file()] == []


def test_unsupported_requests_are_refused_not_dropped() -> None:
    runner = OpencodeRunner()
    with pytest.raises(llmrun.UnsupportedFeature):
        runner.check_request(ChatRequest.of("hi", tools=[llmrun.ToolSpec(name="f")]))


# --- reading the captured output ---------------------------------------------------------


def test_thinking_text_and_usage_of_a_run() -> None:
    chunks, parser = parse("llmrun-thinking")
    assert [c.thinking for c in chunks if c.thinking] == ["Let me think. Done thinking."]
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]  # whole parts: opencode sends no deltas
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.session_id == "ses_e014a12f9ffeu5zC4Nh61fqKwd"
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7, total_tokens=19)
    assert final.cost_usd == 0.0
    assert parser.finished and parser.error is None


@pytest.mark.parametrize("name", ["llmrun-text", "llmrun-resume", "llmrun-model-flag", "mock-run-json"])
def test_other_runs_of_the_same_answer(name: str) -> None:
    chunks, parser = parse(name)
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert [c.is_final for c in chunks].count(True) == 1 and chunks[-1].session_id
    assert parser.finished and parser.error is None


def test_the_model_asked_for_is_reported() -> None:
    parser = OpencodeParser(model="mock/mock-model-large")
    chunks = [c for line in (CAPTURES / "llmrun-model-flag.stdout").read_text().splitlines() for c in parser.feed(line)]
    assert chunks[-1].model == "mock/mock-model-large"


def test_cached_tokens_are_counted_once() -> None:
    usage = parse("llmrun-usage-cached")[0][-1].usage
    assert usage == llmrun.Usage(input_tokens=12, output_tokens=7, cache_read_tokens=100, total_tokens=119)
    assert usage.to_openai()["prompt_tokens"] == 112  # what the API reported


def test_usage_and_cost_are_summed_over_steps() -> None:
    lines = [
        step_finish("tool-calls", input=10, output=2, reasoning=1, total=13, cache={"read": 3, "write": 4}),
        event("text", type="text", text="done"),
        step_finish("stop", input=5, output=1, reasoning=0, total=6, cache={"read": 0, "write": 0}),
    ]
    chunks, _ = parse_lines(lines)
    final = chunks[-1]
    assert final.usage == llmrun.Usage(
        input_tokens=15, output_tokens=3, reasoning_tokens=1, cache_read_tokens=3, cache_write_tokens=4, total_tokens=19
    )
    assert final.cost_usd == 1.0


@pytest.mark.parametrize(("reason", "finish"), [("length", "length"), ("content-filter", "content_filter")])
def test_finish_reasons(reason: str, finish: str) -> None:
    chunks, parser = parse_lines([event("text", text="cut"), step_finish(reason, input=1, output=1)])
    assert chunks[-1].finish_reason == finish and parser.finished


def test_a_step_that_calls_tools_is_not_the_end() -> None:
    chunks, parser = parse_lines([step_finish("tool-calls", input=1, output=1)])
    assert chunks == [] and not parser.finished


def test_tool_call_outside_the_read_only_rules_is_not_run() -> None:
    chunks, _ = parse("llmrun-tooluse")
    assert "".join(c.delta for c in chunks) == "I will run a command.\n\nTool finished: Hello from mock"
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.kind, use.name, use.input) == (
        "tool_use",
        "bash",
        {"command": "echo mock-tool-ran > marker.txt; echo mock-tool-ran"},
    )
    assert done.kind == "tool_result" and done.id == use.id and done.is_error
    assert "unavailable tool" in done.output
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 14  # both steps


def test_a_tool_opencode_does_not_offer_is_named_after_the_call() -> None:
    state = {"status": "completed", "input": {"tool": "bash", "error": "unavailable"}, "output": "invalid"}
    chunks, _ = parse_lines([event("tool_use", type="tool", tool="invalid", callID="c1", state=state)])
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.name, use.input, done.is_error) == ("bash", None, True)


def test_a_permission_rejection_is_reported_as_such() -> None:
    state = {
        "status": "error",
        "input": {"filePath": "/etc/passwd"},
        "error": "The user rejected permission to use this",
    }
    chunks, _ = parse_lines([event("tool_use", type="tool", tool="read", callID="c2", state=state)])
    use, denied = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.name, denied.kind, denied.name, denied.id) == ("read", "permission_denied", "read", "c2")


@pytest.mark.parametrize("name", ["llmrun-tooluse-allowed", "mock-run-json-tooluse"])
def test_allowed_tool_call_runs(name: str) -> None:
    chunks, _ = parse(name)
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert use.name == "bash" and done.kind == "tool_result" and not done.is_error
    assert done.output == "mock-tool-ran\n"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("llmrun-401", llmrun.AuthenticationError, "Incorrect API key"),
        ("mock-401-json", llmrun.AuthenticationError, "invalid x-api-key"),
        ("mock-429-json", llmrun.RateLimitError, "rate limit"),
    ],
)
def test_api_errors_are_typed_and_never_an_answer(name: str, error: type, words: str) -> None:
    chunks, parser = parse(name)
    assert type(parser.error) is error and words in str(parser.error)
    assert parser.finished and not any(c.delta or c.is_final for c in chunks)
    if error is llmrun.AuthenticationError:
        assert parser.error.hint and "opencode auth login" in parser.error.hint


@pytest.mark.parametrize(
    ("message", "status", "name", "error"),
    [
        ("Forbidden", 403, "APIError", llmrun.AuthenticationError),
        ("no key", None, "ProviderAuthError", llmrun.AuthenticationError),
        ("Bad gateway", 502, "APIError", llmrun.ServiceUnavailable),
        ("Cannot connect to API: Unable to connect", None, "APIError", llmrun.ServiceUnavailable),
        ("This model's maximum context length is 8192 tokens", 400, "APIError", llmrun.ContextLengthExceeded),
        ("The model `x` does not exist", 404, "APIError", llmrun.ModelNotFound),
        ("ProviderModelNotFoundError: Model not found: mock/x.", None, "", llmrun.ModelNotFound),
        ("Invalid value for temperature", 400, "APIError", llmrun.RunnerError),
    ],
)
def test_error_reports_map_to_types(message: str, status: int | None, name: str, error: type) -> None:
    assert type(classify(message, status, name)) is error


def test_an_unknown_error_names_the_log_line_that_explains_it() -> None:
    _, parser = parse("llmrun-model-not-found")
    assert type(parser.error) is llmrun.RunnerError and "(ref err_9a5f346e)" in str(parser.error)
    stderr = (CAPTURES / "llmrun-model-not-found.stderr").read_text()
    assert logged_failure(stderr, "err_9a5f346e") == (
        "ProviderModelNotFoundError: Model not found: mock/no-such-model. Did you mean: mock-model, mock-model-large?"
    )
    assert logged_failure(stderr, "err_other") is None


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.stdout")), ids=lambda p: p.stem)
def test_every_capture_parses_without_raising(path: Path) -> None:
    parser = OpencodeParser()
    for line in path.read_text().splitlines():
        parser.feed(line)
    parser.close()


# --- failures the output does not explain ---------------------------------------------------


async def test_unknown_model_through_the_fake(opencode: FakeRun) -> None:
    opencode.scenario("llmrun-model-not-found")
    with pytest.raises(llmrun.ModelNotFound) as caught:
        await opencode.runner().complete(ChatRequest.of("hi", model="mock/no-such-model"))
    assert "Did you mean: mock-model" in str(caught.value) and caught.value.process_exit_code == 1


def test_exit_errors() -> None:
    runner = OpencodeRunner()
    missing = runner.error_for_exit(1, (CAPTURES / "llmrun-resume-missing.stderr").read_text())
    assert type(missing) is llmrun.SessionNotFound and str(missing) == "Error: Session not found"
    old = runner.error_for_exit(1, "Unknown argument: thinking")
    assert isinstance(old, llmrun.ProcessFailed) and old.hint and "npm install" in old.hint
    assert type(runner.error_for_exit(1, "\x1b[91mboom\x1b[0m")) is llmrun.ProcessFailed


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("llmrun-noprovider", "opencode/big-pickle after: AI_APICallError: Cannot connect to API"),
        ("llmrun-500-partial", "mock/mock-model after: AI_APICallError: The server had an error"),
        ("llmrun-429-partial", "mock/mock-model after: AI_APICallError: Rate limit reached"),
    ],
)
def test_what_opencode_kept_retrying_is_read_from_its_log(name: str, words: str) -> None:
    failed = last_stream_error((CAPTURES / f"{name}.stderr").read_text())
    assert failed is not None and words in f"{failed[0]}/{failed[1]} after: {failed[2]}"


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("llmrun-noprovider", "its fallback when no provider is configured"),
        ("llmrun-500-partial", "still retrying mock/mock-model after: AI_APICallError: The server had an error"),
        ("llmrun-stall", "opencode said nothing meanwhile"),
    ],
)
async def test_a_stall_says_what_opencode_retried_and_what_to_configure(
    opencode: FakeRun, scenario: str, words: str
) -> None:
    opencode.scenario(scenario)
    opencode.fault("hang_after=0")  # its log on stderr, then silence, as opencode retrying for ever
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await opencode.runner().complete(ChatRequest.of("hi", stall_timeout=1))
    error = caught.value
    assert "stall" in str(error) and words in str(error)
    assert error.hint and "opencode auth login" in error.hint and "OPENCODE_CONFIG_CONTENT" in error.hint


# --- health and models ---------------------------------------------------------------------


async def test_health_without_credentials_is_unknown(opencode: FakeRun) -> None:
    report = await opencode.runner().health()
    assert report.status == "ok", report
    assert report.version == "1.18.33"
    assert report.authenticated is None and "hosted models" in report.message


async def test_health_with_a_key_in_the_environment(opencode: FakeRun) -> None:
    opencode.monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["auth", "list"], "auth-list-env"]]))
    report = await opencode.runner().health()
    assert report.authenticated is True and "1 provider key(s) in the environment" in report.message


async def test_health_with_a_provider_in_the_inline_config(opencode: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps(USER_CONFIG))
    report = await opencode.runner().health()
    assert report.authenticated is True and "OPENCODE_CONFIG_CONTENT" in report.message


async def test_available_models_come_from_opencode(opencode: FakeRun) -> None:
    runner = opencode.runner()
    models = await runner.available_models()
    assert [m.id for m in models][:2] == ["opencode/big-pickle", "opencode/ling-3.0-flash-fin-free"]
    assert all(m.source == "discovered" and m.runner == "opencode" for m in models)
    opencode.monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["models"], "models-with-provider"]]))
    assert "mock/mock-model" not in [m.id for m in await runner.available_models()]  # asked once per runner
    assert "mock/mock-model" in [m.id for m in await runner.available_models(refresh=True)]


# --- images ---------------------------------------------------------------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_images_are_attached_files_readable_only_in_their_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from llmrun import process

    monkeypatch.delenv("OPENCODE_CONFIG_CONTENT", raising=False)
    image = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    inv = OpencodeRunner().build_invocation(ChatRequest(messages=[Message.user("What?", images=[image])]), "opencode")
    try:
        (path,) = [arg.partition("=")[2] for arg in inv.argv if arg.startswith("--file=")]
        folder = os.path.dirname(path)
        assert folder in inv.temp_files and os.path.basename(path) == "image-1.png"
        config = json.loads(inv.env["OPENCODE_CONFIG_CONTENT"])
        (agent,) = config["agent"].values()
        assert agent["permission"]["external_directory"] == {"*": "deny", os.path.join(folder, "*"): "allow"}
        assert inv.stdin == b"What?"
    finally:
        for temp in inv.temp_files:
            process.remove_path(temp)


def test_with_its_own_tools_the_run_keeps_opencode_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import process

    monkeypatch.delenv("OPENCODE_CONFIG_CONTENT", raising=False)
    image = llmrun.ImagePart(data=PNG_DATA, media_type="image/png")
    request = ChatRequest(messages=[Message.user("What?", images=[image])], allow_tools=True)
    inv = OpencodeRunner().build_invocation(request, "opencode")
    try:
        assert sum(arg.startswith("--file=") for arg in inv.argv) == 1
        assert "OPENCODE_CONFIG_CONTENT" not in inv.env  # no permission of llmrun's
    finally:
        for temp in inv.temp_files:
            process.remove_path(temp)
