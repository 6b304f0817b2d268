"""The Continue CLI runner (`cn`): command line, lockdown, parser and errors, without the real tool."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmrun
from llmrun import ChatRequest, Message, parameters
from llmrun.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from llmrun.process import Invocation
from llmrun.runners.continue_cli import (
    SESSION_VARIABLE,
    STDIN_LIMIT,
    ContinueParser,
    ContinueRunner,
    classify,
    error_message,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cn"
CONFIG = """\
name: mine
version: 0.0.1
schema: v1
models:
  - name: fast
    provider: openai
    model: mock-model
    apiKey: sk-test
    roles: [chat, edit]
  - name: big
    provider: openai
    model: mock-model-large
    apiKey: sk-test
  - name: embedder
    provider: openai
    model: mock-embed
    roles: [embed]
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """cn's own directory, with a config of three models."""
    path = tmp_path / "continue-home"
    (path / "sessions").mkdir(parents=True)
    (path / "config.yaml").write_text(CONFIG)
    monkeypatch.setenv("CONTINUE_GLOBAL_DIR", str(path))
    return path


@pytest.fixture
def runner(home: Path) -> ContinueRunner:
    made = llmrun.get_runner("cn")
    assert isinstance(made, ContinueRunner)
    return made


@pytest.fixture
def invocations() -> Iterator[list[Invocation]]:
    """Invocations a test built; their private files are removed afterwards."""
    built: list[Invocation] = []
    yield built
    for invocation in built:
        invocation.remove_files()


def build(runner: ContinueRunner, request: ChatRequest, built: list[Invocation]) -> Invocation:
    runner.new_parser(request)  # picks the run's session id, as stream() does
    invocation = runner.build_invocation(request, "cn")
    built.append(invocation)
    return invocation


def option(argv: list[str], name: str) -> str:
    (value,) = [arg.partition("=")[2] for arg in argv if arg.startswith(name + "=")]
    return value


# --- command line and lockdown ---------------------------------------------------------------


def test_aliases_reach_the_runner() -> None:
    for alias in ("cn", "continue-cli", "continue_cli", "continue"):
        assert llmrun.get_runner_class(alias) is ContinueRunner


def test_default_run_takes_every_tool_away_and_sends_the_prompt_on_stdin(
    runner: ContinueRunner, invocations: list[Invocation]
) -> None:
    invocation = build(runner, ChatRequest.of("-x: say hello"), invocations)
    assert invocation.argv[:3] == ["cn", "-p", "--exclude=*"]
    assert "--auto" not in invocation.argv and "--readonly" not in invocation.argv
    assert invocation.stdin == b"-x: say hello"
    assert not any("say hello" in arg for arg in invocation.argv)
    assert invocation.env["CONTINUE_CLI_ENABLE_TELEMETRY"] == "0"
    assert invocation.env["CONTINUE_METRICS_ENABLED"] == "0"
    # Switches that would make cn ignore a piped prompt are not inherited.
    assert {"NODE_ENV", "CONTINUE_CLI_TEST", "FORCE_NO_TTY", SESSION_VARIABLE} <= set(invocation.env_remove)


def test_allowed_tools_are_all_tools(runner: ContinueRunner, invocations: list[Invocation]) -> None:
    invocation = build(runner, ChatRequest.of("hi", allow_tools=True), invocations)
    assert "--auto" in invocation.argv
    assert "--exclude=*" not in invocation.argv


def test_each_run_gets_its_own_session_id_which_the_parser_reports(
    runner: ContinueRunner, invocations: list[Invocation]
) -> None:
    ids = []
    for _ in range(2):
        parser = runner.new_parser(ChatRequest.of("hi"))
        invocation = runner.build_invocation(ChatRequest.of("hi"), "cn")
        invocations.append(invocation)
        assert isinstance(parser, ContinueParser)
        assert invocation.env[SESSION_VARIABLE] == parser.session_id
        ids.append(parser.session_id)
    assert len(set(ids)) == 2


def test_a_prompt_larger_than_a_pipe_goes_in_a_private_file(
    runner: ContinueRunner, invocations: list[Invocation]
) -> None:
    prompt = "-long " * (STDIN_LIMIT // 5)
    invocation = build(runner, ChatRequest.of(prompt), invocations)
    assert invocation.stdin is None
    path = option(invocation.argv, "--prompt")
    assert Path(path).read_text() == prompt
    assert path in invocation.temp_files
    assert invocation.argv[-1] == " "  # cn insists on a prompt argument beside --prompt
    assert oct(Path(path).stat().st_mode & 0o777) == "0o600"


def test_system_prompt_goes_in_a_rule_file(runner: ContinueRunner, invocations: list[Invocation]) -> None:
    request = ChatRequest(messages=[Message.system("owner/package"), Message.user("hi")])
    invocation = build(runner, request, invocations)
    # A file, not the text: cn would take "owner/package" for a hub slug.
    assert Path(option(invocation.argv, "--rule")).read_text() == "owner/package"
    assert invocation.stdin == b"hi"


def test_a_model_is_picked_from_a_private_copy_of_the_config(
    runner: ContinueRunner, home: Path, invocations: list[Invocation]
) -> None:
    invocation = build(runner, ChatRequest.of("hi", model="big"), invocations)
    copy = option(invocation.argv, "--config")
    assert copy in invocation.temp_files and not copy.startswith(str(home))
    config = json.loads(Path(copy).read_text())
    # The chosen chat model only, so that cn's remembered choice cannot override it.
    assert [m["name"] for m in config["models"]] == ["big", "embedder"]
    assert config["name"] == "mine"
    assert (home / "config.yaml").read_text() == CONFIG  # the user's config is not touched


def test_a_model_may_be_named_by_its_model_id(runner: ContinueRunner, invocations: list[Invocation]) -> None:
    invocation = build(runner, ChatRequest.of("hi", model="mock-model"), invocations)
    config = json.loads(Path(option(invocation.argv, "--config")).read_text())
    assert [m["name"] for m in config["models"]] == ["fast", "embedder"]


def test_an_unknown_model_says_which_there_are(runner: ContinueRunner, invocations: list[Invocation]) -> None:
    with pytest.raises(ModelNotFound) as caught:
        build(runner, ChatRequest.of("hi", model="embedder"), invocations)  # not a chat model
    assert "fast, big" in str(caught.value)


def test_a_config_of_the_request_is_passed_as_it_is(
    runner: ContinueRunner, tmp_path: Path, invocations: list[Invocation]
) -> None:
    invocation = build(runner, ChatRequest.of("hi", options={"config": "/srv/cn/team.yaml"}), invocations)
    assert option(invocation.argv, "--config") == "/srv/cn/team.yaml"
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("name: big", "name: huge"))
    invocation = build(runner, ChatRequest.of("hi", model="huge", options={"config": str(other)}), invocations)
    config = json.loads(Path(option(invocation.argv, "--config")).read_text())
    assert config["models"][0]["name"] == "huge"


def test_sampling_parameters_go_on_every_chat_model_of_a_private_copy(
    runner: ContinueRunner, home: Path, invocations: list[Invocation]
) -> None:
    (home / "config.yaml").write_text(
        CONFIG.replace(
            "    roles: [chat, edit]\n",
            "    roles: [chat, edit]\n    defaultCompletionOptions: {contextLength: 8000, temperature: 1}\n"
            "    requestOptions: {headers: {X-Team: a}, extraBodyProperties: {user: ann}}\n",
        )
        + "  - uses: someone/hub-model\n"
    )
    request = ChatRequest.of("hi", temperature=0.3, max_tokens=77, top_p=0.5, seed=7, presence_penalty=-0.5)
    invocation = build(runner, request, invocations)
    fast, big, embedder, hub = json.loads(Path(option(invocation.argv, "--config")).read_text())["models"]

    wanted = {"temperature": 0.3, "maxTokens": 77, "topP": 0.5, "presencePenalty": -0.5}
    assert fast["defaultCompletionOptions"] == {"contextLength": 8000, **wanted}
    assert fast["requestOptions"] == {"headers": {"X-Team": "a"}, "extraBodyProperties": {"user": "ann", "seed": 7}}
    assert big["defaultCompletionOptions"] == wanted and big["requestOptions"]["extraBodyProperties"] == {"seed": 7}
    assert "defaultCompletionOptions" not in embedder  # not a chat model
    assert hub["uses"] == "someone/hub-model" and hub["override"]["defaultCompletionOptions"] == wanted
    # Every parameter has its place: nothing is reported as ignored.
    assert parameters.warnings_for(runner, request.model_copy(update={"frequency_penalty": 1.0})) == []


def test_sampling_parameters_with_no_config_to_copy_are_refused(
    runner: ContinueRunner, home: Path, invocations: list[Invocation]
) -> None:
    (home / "config.yaml").unlink()
    with pytest.raises(UnsupportedFeature, match="to set the sampling parameters"):
        build(runner, ChatRequest.of("hi", temperature=0.3), invocations)
    assert "--config" not in " ".join(build(runner, ChatRequest.of("hi"), invocations).argv)


async def test_discovered_models_are_the_configs_chat_models(runner: ContinueRunner) -> None:
    assert await runner.discover_models("cn") == ["fast", "big"]


def test_a_session_id_forks_that_session_with_the_new_turns_only(
    runner: ContinueRunner, home: Path, invocations: list[Invocation]
) -> None:
    session = "0b9c1f0e-1111-4222-8333-444455556666"
    (home / "sessions" / f"{session}.json").write_text("{}")
    request = ChatRequest(
        messages=[Message.user("My name is Ann"), Message.assistant("Hi Ann"), Message.user("My name?")],
        session_id=session,
    )
    parser = runner.new_parser(request)
    invocation = runner.build_invocation(request, "cn")
    invocations.append(invocation)
    assert f"--fork={session}" in invocation.argv
    assert invocation.stdin == b"My name?"
    assert isinstance(parser, ContinueParser) and parser.session_id is None  # cn names the fork


def test_forking_a_missing_session_is_session_not_found(runner: ContinueRunner) -> None:
    # cn itself would start afresh without a word.
    with pytest.raises(SessionNotFound):
        runner.check_request(ChatRequest.of("hi", session_id="0b9c1f0e-0000-4222-8333-444455556666"))


# --- parser ------------------------------------------------------------------------------------


def session_file(tmp_path: Path, name: str = "mock-print-text") -> Path:
    path = tmp_path / "session.json"
    path.write_text((FIXTURES / f"{name}.session.json").read_text())
    return path


def test_parser_passes_the_answer_without_cns_newline(tmp_path: Path) -> None:
    parser = ContinueParser(model=None, session_file=session_file(tmp_path), session_id="s1")
    chunks = parser.feed((FIXTURES / "mock-print-text.stdout").read_text())
    (final,) = parser.close()
    assert "".join(c.delta for c in chunks) == "Hello from mock"
    assert parser.finished and parser.error is None
    assert final.finish_reason == "stop" and final.session_id == "s1"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.cost_usd == pytest.approx(0.000026)


def test_parser_keeps_inner_newlines_and_drops_escapes_split_between_pieces(tmp_path: Path) -> None:
    parser = ContinueParser(model=None, session_file=session_file(tmp_path), session_id="s1")
    pieces = ["Hello\n", "\n\x1b]0;ti", "tle\x07wor\x1b[", "0mld\n"]
    text = "".join(c.delta for piece in pieces for c in parser.feed(piece))
    assert text == "Hello\n\nworld"


def test_without_the_saved_session_the_answer_is_not_complete(tmp_path: Path) -> None:
    parser = ContinueParser(model=None, session_file=tmp_path / "missing.json", session_id="s1")
    parser.feed("Hello from")
    parser.close()
    assert not parser.finished


def test_an_empty_answer_is_not_complete(tmp_path: Path) -> None:
    # cn prints nothing when the model calls a tool it took away, and exits 0.
    parser = ContinueParser(model=None, session_file=session_file(tmp_path), session_id="s1")
    parser.feed("\n")
    parser.close()
    assert not parser.finished


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "error"),
    [
        ("mock-401-text", AuthenticationError),
        ("mock-500-json", ServiceUnavailable),
        ("noauth-noconfig-print", AuthenticationError),
        ("llmrun-context", ContextLengthExceeded),
        ("llmrun-model-404", ModelNotFound),
    ],
)
def test_captured_errors_are_typed(transcript: str, error: type) -> None:
    message = error_message((FIXTURES / f"{transcript}.stderr").read_text())
    assert message
    assert type(classify(message)) is error


def test_a_429_is_a_rate_limit() -> None:
    assert isinstance(classify("429 Rate limit reached for requests"), RateLimitError)


def test_the_parser_reports_cns_error_line(tmp_path: Path) -> None:
    parser = ContinueParser(model=None, session_file=tmp_path / "none.json", session_id="s1")
    parser.stderr = (FIXTURES / "mock-401-text.stderr").read_text()
    parser.close()
    assert isinstance(parser.error, AuthenticationError)
    assert "invalid x-api-key" in str(parser.error)


def test_retry_for_ever_is_bounded_by_the_stall_timeout(runner: ContinueRunner) -> None:
    # cn retries a 429 silently for ever: only llmrun's stall timeout ends it.
    assert runner.stall_timeout == 240.0
    assert runner.limits_for(ChatRequest.of("hi")).stall_timeout == 240.0
