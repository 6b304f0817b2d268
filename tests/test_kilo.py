"""KiloRunner: what Kilo changes from opencode, checked on command lines and on transcripts
captured from the real kilo 7.7.7 (fixtures/kilo/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.registry import canonical_name, get_runner
from llmrun.runners import opencode
from llmrun.runners.kilo import LOGIN_HINT, READ_ONLY, RUN_ENV_DEFAULTS, KiloRunner
from llmrun.runners.opencode import AGENT, READ_ONLY_PERMISSION, OpencodeParser, OpencodeRunner

from .conftest import FAKE_TOOLS, FIXTURES, FakeRun

CAPTURES = FIXTURES / "kilo"
USER_CONFIG = {"provider": {"mock": {"options": {"baseURL": "http://127.0.0.1:9/v1"}}}, "model": "mock/mock-model"}
SESSION = "ses_db156f24effeQ0tlHnq5LTkbTN"


@pytest.fixture
def kilo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    (tool,) = [t for t in FAKE_TOOLS if t.runner == "kilo"]
    return FakeRun(tool, monkeypatch, record)


@pytest.fixture(autouse=True)
def no_inline_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KILO_CONFIG_CONTENT", "OPENCODE_CONFIG_CONTENT", "KILO_SESSION_RETRY_LIMIT"):
        monkeypatch.delenv(name, raising=False)


def build(request: ChatRequest, runner: KiloRunner | None = None) -> llmrun.process.Invocation:
    return (runner or KiloRunner()).build_invocation(request, "kilo")


def config_of(inv: llmrun.process.Invocation) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(inv.env["KILO_CONFIG_CONTENT"])
    return data


def parse(name: str) -> tuple[list[llmrun.ChatChunk], OpencodeParser]:
    runner = KiloRunner()
    parser = runner.new_parser(ChatRequest.of("hi"))
    assert isinstance(parser, OpencodeParser)
    chunks = []
    for line in (CAPTURES / f"{name}.stdout").read_text().splitlines():
        chunks += parser.feed(line)
        if parser.finished:
            break  # as the runner does
    return chunks + parser.close(), parser


# --- registry and command line ----------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert canonical_name("kilocode") == canonical_name("kilo-code") == canonical_name("kilo_code") == "kilo"
    runner = get_runner("kilo-code")
    assert isinstance(runner, KiloRunner) and runner.binary == "kilo"
    assert runner.capabilities.prompt_via_stdin and runner.capabilities.warm
    assert KiloRunner.aliases == ("kilocode", "kilo-code", "kilo_code")


def test_sampling_goes_in_kilos_config_and_environment() -> None:
    inv = build(ChatRequest.of("hi", temperature=0.3, top_p=0.5, max_tokens=77))
    agent = json.loads(inv.env["KILO_CONFIG_CONTENT"])["agent"][AGENT]
    assert (agent["temperature"], agent["top_p"]) == (0.3, 0.5)
    assert inv.env["KILO_EXPERIMENTAL_OUTPUT_TOKEN_MAX"] == "77"
    assert "OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX" not in inv.env
    assert "KILO_EXPERIMENTAL_OUTPUT_TOKEN_MAX" in KiloRunner.honoured_parameters["max_tokens"]
    assert set(KiloRunner.honoured_parameters) == {"temperature", "top_p", "max_tokens"}


async def test_a_parameter_kilo_cannot_take_comes_back_as_a_warning(kilo: FakeRun) -> None:
    response = await kilo.runner().complete(ChatRequest.of("hi", seed=7, temperature=0.3))
    assert response.warnings == ["ignored parameter seed: Kilo Code has no way to set it"]


def test_command_line_defaults() -> None:
    inv = build(ChatRequest.of("-hello, a prompt with a leading dash"))
    flags = ["--format=json", "--thinking", "--title=", "--print-logs", "--log-level=WARN", f"--agent={AGENT}"]
    assert inv.argv == ["kilo", "run", *flags]
    # The whole message on stdin: kilo would wrap a message argument in double quotes.
    assert inv.stdin == b"-hello, a prompt with a leading dash"
    assert config_of(inv) == {"agent": {AGENT: {"mode": "primary", "permission": READ_ONLY}}}
    assert "OPENCODE_CONFIG_CONTENT" not in inv.env  # kilo does not read it


def test_a_running_kilo_daemon_is_never_used_and_telemetry_is_off() -> None:
    for request in (ChatRequest.of("hi"), ChatRequest.of("hi", allow_tools=True)):
        inv = build(request)
        assert inv.env["KILO_NO_DAEMON"] == "1"  # forced: the daemon has its own config
        assert inv.env_defaults == RUN_ENV_DEFAULTS  # the user's own settings win
    assert RUN_ENV_DEFAULTS["KILO_TELEMETRY_LEVEL"] == "off" and RUN_ENV_DEFAULTS["KILO_DISABLE_AUTOUPDATE"] == "1"
    assert RUN_ENV_DEFAULTS["KILO_SESSION_RETRY_LIMIT"] == "2"  # kilo retries 429/5xx without end otherwise
    assert not any(name.startswith("OPENCODE_") for name in build(ChatRequest.of("hi")).env_defaults)


def test_read_only_rules_cover_kilos_own_tools() -> None:
    rules = list(READ_ONLY.items())
    assert rules[0] == ("*", "deny")
    allowed = {key for key, value in rules if value == "allow"}
    assert allowed == {key for key, value in READ_ONLY_PERMISSION.items() if value == "allow"}
    for key in ("bash", "edit", "write", "task", "background_process", "schedule_wakeup", "board_post"):
        assert READ_ONLY[key] == "deny"
    assert KiloRunner.read_only_modes == (AGENT,)  # kilo's `plan` agent keeps bash, edit and write
    assert OpencodeRunner.read_only_modes == (AGENT, "plan")


def test_system_prompt_goes_to_kilos_default_agent_when_tools_are_allowed() -> None:
    inv = build(ChatRequest.of("hi", allow_tools=True, system="Be terse"))
    assert "--agent=code" in inv.argv
    assert set(config_of(inv)["agent"]["code"]) == {"prompt"}
    Path(inv.temp_files[0]).unlink()
    plain = build(ChatRequest.of("hi", allow_tools=True))
    assert not any(a.startswith("--agent") for a in plain.argv) and set(plain.env) == {"KILO_NO_DAEMON"}


def test_the_users_inline_config_is_kept_under_llmruns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", '{"not": "read"}')
    own = {**USER_CONFIG, "agent": {AGENT: {"permission": {"*": "allow"}}}}
    monkeypatch.setenv("KILO_CONFIG_CONTENT", json.dumps(own))
    config = config_of(build(ChatRequest.of("hi")))
    assert config["provider"] == USER_CONFIG["provider"] and "not" not in config
    assert list(config["agent"][AGENT]["permission"].items()) == list(READ_ONLY.items())


def test_inline_config_llmrun_cannot_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILO_CONFIG_CONTENT", "{// a comment\n}")
    with pytest.raises(llmrun.UnsupportedFeature) as caught:
        build(ChatRequest.of("hi"))
    assert caught.value.runner == "kilo" and "KILO_CONFIG_CONTENT" in str(caught.value)
    assert caught.value.hint and "kilo.json" in caught.value.hint


def test_resume_sends_only_the_new_turn() -> None:
    request = ChatRequest(
        messages=[Message.user("first"), Message.assistant("answer"), Message.user("second")], session_id=SESSION
    )
    inv = build(request)
    assert f"--session={SESSION}" in inv.argv and inv.stdin == b"second"


# --- the captured output ---------------------------------------------------------------------


def test_thinking_text_and_usage_of_a_run() -> None:
    chunks, parser = parse("llmrun-thinking")
    assert [c.thinking for c in chunks if c.thinking] == ["Let me think. Done thinking."]
    assert [c.delta for c in chunks if c.delta] == ["Hello from mock"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.session_id and final.session_id.startswith("ses_")
    assert final.usage == llmrun.Usage(input_tokens=12, output_tokens=7, total_tokens=19)
    assert final.cost_usd == 0.0 and parser.error is None


def test_the_resumed_run_keeps_the_session() -> None:
    chunks, _ = parse("llmrun-resume")
    assert chunks[-1].session_id == SESSION and "".join(c.delta for c in chunks) == "Hello from mock"


def test_tool_call_outside_the_read_only_rules_is_not_run() -> None:
    chunks, _ = parse("llmrun-tooluse")
    use, done = [c.agent_event for c in chunks if c.agent_event is not None]
    assert (use.kind, use.name) == ("tool_use", "bash") and done.is_error and "unavailable tool" in done.output
    allowed, _ = parse("llmrun-tooluse-allowed")
    use, done = [c.agent_event for c in allowed if c.agent_event is not None]
    assert not done.is_error and done.output == "mock-tool-ran\n"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("llmrun-401", llmrun.AuthenticationError, "Incorrect API key"),
        ("mock-401-json", llmrun.AuthenticationError, "invalid x-api-key"),
        ("llmrun-429", llmrun.RateLimitError, "Rate limit reached"),
        ("llmrun-500", llmrun.ServiceUnavailable, "The server had an error"),
    ],
)
async def test_api_errors_are_typed_in_kilos_words(kilo: FakeRun, name: str, error: type, words: str) -> None:
    kilo.scenario(name)
    with pytest.raises(llmrun.RunnerError) as caught:
        await kilo.runner().complete(ChatRequest.of("hi"))
    assert type(caught.value) is error and words in str(caught.value)
    if error is llmrun.AuthenticationError:
        assert caught.value.hint == LOGIN_HINT and "opencode" not in LOGIN_HINT


async def test_unknown_model_is_model_not_found(kilo: FakeRun) -> None:
    kilo.scenario("llmrun-model-not-found")
    with pytest.raises(llmrun.ModelNotFound) as caught:
        await kilo.runner().complete(ChatRequest.of("hi", model="mock/no-such-model"))
    assert "Did you mean: mock-model" in str(caught.value)
    assert caught.value.hint and "`kilo models`" in caught.value.hint


async def test_unknown_session_is_session_not_found(kilo: FakeRun) -> None:
    kilo.scenario("llmrun-resume-missing")
    with pytest.raises(llmrun.SessionNotFound):
        await kilo.runner().complete(
            ChatRequest(messages=[Message.user("a"), Message.assistant("b"), Message.user("c")], session_id=SESSION)
        )


async def test_no_provider_says_kilos_gateway_is_unreachable(kilo: FakeRun) -> None:
    kilo.scenario("llmrun-noprovider")
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        await kilo.runner().complete(ChatRequest.of("hi"))
    assert "Cannot connect to API" in str(caught.value) and "Kilo's own gateway" in str(caught.value)
    assert caught.value.hint == LOGIN_HINT


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("llmrun-noprovider", "still retrying kilo/"),
        ("llmrun-500", "still retrying mock/mock-model after: AI_APICallError: The server had an error"),
        ("llmrun-stall", "kilo said nothing meanwhile"),
    ],
)
async def test_a_stall_says_what_kilo_retried(kilo: FakeRun, scenario: str, words: str) -> None:
    kilo.scenario(scenario)
    kilo.fault("hang_after=0")  # its log on stderr, then silence, as kilo retrying without a limit
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await kilo.runner().complete(ChatRequest.of("hi", stall_timeout=1))
    assert "stall" in str(caught.value) and words in str(caught.value)
    assert caught.value.hint == LOGIN_HINT


def test_exit_errors() -> None:
    runner = KiloRunner()
    old = runner.error_for_exit(1, "Unknown argument: thinking")
    assert isinstance(old, llmrun.ProcessFailed) and "this kilo" in str(old) and "@kilocode/cli" in (old.hint or "")
    crash = runner.error_for_exit(1, "\x1b[91mboom\x1b[0m")
    assert type(crash) is llmrun.ProcessFailed and "Kilo Code exited with code 1: boom" in str(crash)


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.stdout")), ids=lambda p: p.stem)
def test_every_capture_parses_without_raising(path: Path) -> None:
    parser = OpencodeParser()
    for line in path.read_text().splitlines():
        parser.feed(line)
    parser.close()


# --- health and models -------------------------------------------------------------------------


async def test_health_without_credentials(kilo: FakeRun) -> None:
    report = await kilo.runner().health()
    assert report.status == "ok" and report.version == "7.7.7"
    assert report.authenticated is None and "kilo falls back to its own gateway" in report.message


async def test_health_with_a_provider_in_the_inline_config(kilo: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILO_CONFIG_CONTENT", json.dumps(USER_CONFIG))
    report = await kilo.runner().health()
    assert report.authenticated is True and "KILO_CONFIG_CONTENT" in report.message


def test_an_older_kilo_is_outdated() -> None:
    assert KiloRunner.min_version == "7.7.7"


async def test_available_models_come_from_kilo(kilo: FakeRun) -> None:
    models = [m.id for m in await kilo.runner().available_models()]
    # Kilo's gateway models, and the provider of the inline config it was captured with.
    assert models[0] == "kilo/~anthropic/claude-fable-latest" and "mock/mock-model" in models
    assert len(models) == 384 and all(m.startswith(("kilo/", "mock/")) for m in models)


def test_opencode_keeps_its_own_names() -> None:
    # The names KiloRunner changes are class attributes of OpencodeRunner, left as they were.
    assert (OpencodeRunner.config_variable, OpencodeRunner.default_agent) == ("OPENCODE_CONFIG_CONTENT", "build")
    assert opencode.LOGIN_HINT != LOGIN_HINT


# --- warm sessions over `kilo acp` (fixtures/kilo/acp-*.jsonl) ----------------------------------


async def test_a_warm_401_is_typed_and_the_session_goes_on(kilo: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_SESSION", "acp-error-401")
    async with kilo.runner().session() as session:
        with pytest.raises(llmrun.AuthenticationError) as caught:
            await session.complete("hello")
        assert "Incorrect API key" in str(caught.value) and caught.value.runner == "kilo"
        assert len(kilo.invocations()) == 1 and session.pids()


async def test_a_warm_session_starts_kilo_acp_in_llmruns_read_only_mode(kilo: FakeRun) -> None:
    async with kilo.runner().session() as session:
        response = await session.complete("My name is Ann")
        assert response.content == "Hello from mock"
    (invocation,) = kilo.invocations()
    assert invocation["argv"] == ["acp"]
    sent = [json.loads(line) for line in (kilo.record / f"received-{invocation['pid']}.jsonl").read_text().splitlines()]
    modes = [m["params"] for m in sent if m.get("method") in ("session/set_mode", "session/set_config_option")]
    assert modes and all(AGENT in (p.get("modeId"), p.get("value")) for p in modes), modes
