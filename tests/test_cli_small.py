"""The command's small courtesies: suggestions, clear refusals, tables that fit, honest errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmrun.cli.app import app
from llmrun.cli.chat import ChatOptions
from llmrun.cli.interactive import Conversation
from llmrun.errors import AuthenticationError, ModelNotFound, OutputParseError, ProcessFailed, UnsupportedFeature
from llmrun.process import Limits
from llmrun.registry import BUILTIN, get_runner_class
from llmrun.runners.claude_code import ClaudeCodeRunner
from llmrun.sessions import Session
from llmrun.types import ChatRequest, HealthReport, Message

from .cli_support import claude_fake, only_installed, private_state
from .conftest import FAKE_TOOLS, FakeRun, is_alive
from .test_cli_interactive import WarmRunner

cli = CliRunner()


@pytest.fixture(autouse=True)
def state_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing remembered from other tests
    return private_state(monkeypatch, tmp_path)


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def codex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    record = tmp_path / "record"
    record.mkdir()
    run = FakeRun(next(t for t in FAKE_TOOLS if t.runner == "codex"), monkeypatch, record)
    yield run
    for pid in run.pids():
        if is_alive(pid):
            os.kill(pid, 9)


# --- did you mean ---------------------------------------------------------------------------


def test_a_mistyped_runner_name_gets_a_suggestion() -> None:
    result = cli.invoke(app, ["chat", "-r", "cladue", "hi"])
    assert result.exit_code == 2
    assert "unknown runner 'cladue'" in result.stderr
    assert "llmrun: hint: did you mean 'claude'?" in result.stderr


def test_a_suggestion_names_each_runner_once() -> None:
    result = cli.invoke(app, ["models", "-r", "gemni"])
    assert result.exit_code == 2
    assert "did you mean 'gemini'?" in result.stderr  # not also 'gemini_cli' and 'gemini-cli'


def test_a_name_like_no_runner_gets_no_suggestion() -> None:
    result = cli.invoke(app, ["chat", "-r", "zzzz", "hi"])
    assert result.exit_code == 2
    assert "did you mean" not in result.stderr


def test_a_model_the_tool_refuses_gets_a_suggestion(codex: FakeRun) -> None:
    codex.scenario("runner-model-not-found")
    result = cli.invoke(app, ["chat", "-r", "codex", "-m", "gpt-6.1-soll", "hi"])
    assert result.exit_code == 7, result.output
    assert "llmrun: hint: did you mean 'gpt-6.1-sol' or " in result.stderr  # the closest first


def test_an_unlisted_model_is_still_sent_to_the_tool(claude: FakeRun) -> None:
    # The runner's list is not the tool's: a model it does not list is the tool's to judge.
    result = cli.invoke(app, ["chat", "-r", "claude", "-m", "my-own-model", "hi"])
    assert result.exit_code == 0, result.output
    (invocation,) = claude.invocations()
    assert invocation["argv"][invocation["argv"].index("--model") + 1] == "my-own-model"


# --- runner options -------------------------------------------------------------------------

RUNNER_SOURCES = sorted((Path(__file__).resolve().parent.parent / "llmrun" / "runners").glob("*.py"))
OPTION_READ = re.compile(r"""(?<!\w)options(?:\.get\(|\[)["'](\w+)["']|["'](\w+)["'] in (?:request\.)?options\b""")


@pytest.mark.parametrize("name", list(BUILTIN))
def test_each_runner_declares_the_options_it_reads(name: str) -> None:
    runner_class = get_runner_class(name)
    read: set[str] = set()
    for klass in runner_class.__mro__:
        source = getattr(sys.modules[klass.__module__], "__file__", None)
        if source and Path(source).resolve() in RUNNER_SOURCES:
            read |= {a or b for a, b in OPTION_READ.findall(Path(source).read_text())}
    assert "extra_args" in runner_class.option_names
    assert read <= runner_class.option_names, f"read but not declared: {read - runner_class.option_names}"


def test_every_built_in_runner_declares_its_options() -> None:
    assert [name for name in BUILTIN if not get_runner_class(name).option_names] == []


def test_an_unknown_option_is_refused_with_the_known_ones(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-o", "max_turn", "3", "hi"])
    assert result.exit_code == 14, result.output
    assert "Claude Code has no option 'max_turn'; its options: effort, extra_args," in result.stderr
    assert "llmrun: hint: did you mean 'max_turns'?" in result.stderr
    assert claude.invocations() == []  # refused before the tool ran


def test_a_known_option_reaches_the_tool(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-o", "max_turns", "3", "hi"])
    assert result.exit_code == 0, result.output
    (invocation,) = claude.invocations()
    assert invocation["argv"][invocation["argv"].index("--max-turns") + 1] == "3"


def test_a_runner_that_declares_no_options_is_not_checked() -> None:
    class Undeclared(ClaudeCodeRunner):
        option_names = frozenset()

    request = ChatRequest(messages=[Message.user("hi")], options={"anything": 1})
    Undeclared().check_request(request)  # no refusal
    with pytest.raises(UnsupportedFeature, match="no option 'anything'"):
        ClaudeCodeRunner().check_request(request)


def test_a_session_refuses_an_unknown_option_too() -> None:
    with pytest.raises(UnsupportedFeature, match="Claude Code has no option 'max_turn'"):
        ClaudeCodeRunner().session(options={"max_turn": 3})
    ClaudeCodeRunner().session(options={"max_turns": 3})  # known: no refusal


# --- the config file ------------------------------------------------------------------------


def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    monkeypatch.delenv("LLMRUN_RUNNER", raising=False)
    return config


def test_an_unknown_default_runner_names_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(monkeypatch, tmp_path, 'runner = "cladue"\n')
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 2, result.output
    assert f"llmrun: ConfigError: {config}: runner = 'cladue': unknown runner; known runners: claude_code," in (
        result.stderr
    )
    assert "llmrun: hint: did you mean 'claude'?" in result.stderr


@pytest.mark.parametrize(
    "default",
    ["claude", "Claude-Code", "claude_code", "fast", "claude_code,gemini"],
)
def test_a_default_runner_may_be_an_alias_or_a_route(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, default: str
) -> None:
    from llmrun.cli.selection import check_config

    write_config(monkeypatch, tmp_path, f'runner = "{default}"\n[routes.fast]\ntry = ["claude_code/haiku"]\n')
    check_config()  # no error


def test_the_environment_overrides_an_unknown_default_runner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, claude: FakeRun
) -> None:
    write_config(monkeypatch, tmp_path, 'runner = "cladue"\n')
    monkeypatch.setenv("LLMRUN_RUNNER", "claude")
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello from mock\n"


# --- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen", "copilot"])
def test_models_of_a_runner_that_cannot_list_them_says_why(name: str) -> None:
    result = cli.invoke(app, ["models", "-r", name])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{name}: ")
    assert "has no command that lists its models" in result.stdout
    assert "Model" not in result.stdout  # no empty table


class Hundreds(ClaudeCodeRunner):
    """A runner whose tool lists 300 models, the last of them the configured one."""

    name = "hundreds"
    builtin_models = ()

    async def discover_models(self, binary: str) -> list[str]:
        return [f"model-{n:03}" for n in range(300)]


@pytest.fixture
def hundreds(monkeypatch: pytest.MonkeyPatch, claude: FakeRun) -> None:
    from llmrun import registry

    monkeypatch.setitem(registry.BUILTIN, "hundreds", f"{__name__}:Hundreds")
    monkeypatch.setenv("LLMRUN_HUNDREDS_BIN", str(claude.tool.binary))
    monkeypatch.setenv("LLMRUN_HUNDREDS_MODEL", "model-299")


def model_rows(table: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith("hundreds ")]


def test_models_collapses_a_runner_that_lists_hundreds(hundreds: None) -> None:
    result = cli.invoke(app, ["models", "-r", "hundreds"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    rows = model_rows(result.stdout)
    assert len(rows) == 21  # 20 models, then the line that says how many more
    assert "model-000" in rows[0] and "model-299" in rows[19]  # the default is among those shown
    assert "280 more; --all shows them" in rows[20]


def test_models_all_shows_every_model(hundreds: None) -> None:
    result = cli.invoke(app, ["models", "-r", "hundreds", "--all"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert len(model_rows(result.stdout)) == 300
    assert "more; --all" not in result.stdout


def test_models_json_is_never_collapsed(hundreds: None) -> None:
    result = cli.invoke(app, ["models", "-r", "hundreds", "--json"])
    assert len(json.loads(result.stdout)) == 300


# --- runners --------------------------------------------------------------------------------


def test_the_runners_table_fits_100_columns(monkeypatch: pytest.MonkeyPatch, claude: FakeRun) -> None:
    from rich.cells import cell_len

    from llmrun.registry import runner_names

    only_installed(monkeypatch, "claude_code")
    result = cli.invoke(app, ["runners"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 100
    starts = [next(i for i, line in enumerate(lines) if line.startswith(f"{name} ")) for name in runner_names()]
    assert starts == sorted(starts)  # every runner has its row, in order
    claude_row = lines[starts[0] : starts[1]]
    assert len(claude_row) <= 4  # room enough for what it can do
    column = lines[0].index("Can do")
    can_do = " ".join(line[column:] for line in claude_row).split()
    assert can_do[:5] == ["tokens,", "thinking,", "tools,", "sessions,", "usage,"]  # whole words, none cut
    # Notes wrap with their continuation indented, never back at the first column.
    notes = lines[lines.index("To fix:") + 1 :]
    assert notes and all(line.startswith("  ") for line in notes)


# --- codex's login --------------------------------------------------------------------------

PROVIDER_CONFIG = """
profile = "work"
[profiles.work]
model_provider = "gateway"
[model_providers.gateway]
name = "Our gateway"
base_url = "http://127.0.0.1:9/v1"
env_key = "GATEWAY_KEY"
"""


@pytest.fixture
def codex_not_logged_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, codex: FakeRun) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", json.dumps([[["login", "status"], "login-status"]]))
    for name in ("CODEX_API_KEY", "OPENAI_API_KEY", "GATEWAY_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


def codex_health(*args: str) -> dict[str, object]:
    result = cli.invoke(app, ["health", "-r", "codex", "--json", *args])
    (report,) = json.loads(result.stdout)
    return dict(report)


def test_codex_is_logged_in_with_the_key_of_its_configured_provider(
    monkeypatch: pytest.MonkeyPatch, codex_not_logged_in: Path
) -> None:
    (codex_not_logged_in / "config.toml").write_text(PROVIDER_CONFIG)
    monkeypatch.setenv("GATEWAY_KEY", "sk-test")
    report = codex_health()
    assert report["authenticated"] is True and report["status"] == "ok"
    assert report["message"] == "GATEWAY_KEY is set, the key of codex's model provider 'gateway'"


def test_codex_with_its_provider_key_unset_is_not_logged_in(codex_not_logged_in: Path) -> None:
    (codex_not_logged_in / "config.toml").write_text(PROVIDER_CONFIG)
    assert codex_health()["authenticated"] is False


def test_codex_without_a_provider_of_its_own_still_needs_a_login(
    monkeypatch: pytest.MonkeyPatch, codex_not_logged_in: Path
) -> None:
    (codex_not_logged_in / "config.toml").write_text('[model_providers.gateway]\nenv_key = "GATEWAY_KEY"\n')
    monkeypatch.setenv("GATEWAY_KEY", "sk-test")  # a provider that is defined but not chosen
    assert codex_health()["authenticated"] is False


# --- signals in errors ----------------------------------------------------------------------


class Lingering(ClaudeCodeRunner):
    """Claude Code with a short grace for a tool that closes its output but does not exit."""

    def limits_for(self, request: ChatRequest) -> Limits:
        return dataclasses.replace(super().limits_for(request), exit_grace=0.2)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tool"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_a_tool_llmrun_stopped_is_said_to_be_stopped_by_llmrun(tmp_path: Path) -> None:
    runner = Lingering(binary=script(tmp_path, "exec >&-; exec sleep 30"))
    with pytest.raises(ProcessFailed) as failed:
        await runner.complete(ChatRequest(messages=[Message.user("hi")]))
    assert failed.value.process_exit_code == -signal.SIGTERM  # the code stays for programs
    assert str(failed.value) == (
        "Claude Code did not finish: llmrun stopped it (SIGTERM) 0.2 s after it closed its output without exiting"
    )


async def test_a_tool_killed_from_outside_is_not_blamed_on_llmrun(tmp_path: Path) -> None:
    runner = Lingering(binary=script(tmp_path, "echo 'out of memory' >&2; kill -KILL $$"))
    with pytest.raises(ProcessFailed) as failed:
        await runner.complete(ChatRequest(messages=[Message.user("hi")]))
    assert str(failed.value) == "Claude Code did not finish: it was killed by SIGKILL, not by llmrun: out of memory"
    assert "-9" not in str(failed.value)


def test_no_error_shows_a_negative_exit_code() -> None:
    error = OutputParseError("the tool's output was cut short", exit_code=-15)
    assert str(error) == "the tool's output was cut short (it was killed by SIGTERM, not by llmrun)"
    error.stopped = ""
    assert str(error) == "the tool's output was cut short (llmrun stopped it (SIGTERM))"
    assert str(OutputParseError("bad output", exit_code=1)) == "bad output (exit code 1)"


# --- sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["bad id", "-x", ""])
def test_a_malformed_session_id_is_a_session_not_found(claude: FakeRun, session_id: str) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", f"--session={session_id}", "hi"])
    assert result.exit_code == 9, result.output
    assert result.stderr.startswith("llmrun: SessionNotFound: session id ")
    assert "llmrun: hint: the session_id of an answer" in result.stderr
    assert claude.invocations() == []


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("markup", ["rich", None], ids=["terminal", "piped"])
def test_config_help_shows_whole_lines(monkeypatch: pytest.MonkeyPatch, markup: str | None) -> None:
    monkeypatch.setattr(app, "rich_markup_mode", markup)  # what `llmrun` sets for piped help
    result = cli.invoke(app, ["config", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    described = result.stdout.replace("COMMAND [ARGS]...", "")  # the usage line's own dots
    assert "..." not in described and "…" not in described
    assert "Print the config file's path." in result.stdout
    assert "The settings in effect per runner, as TOML (or --json)." in result.stdout


# --- the interactive mode -------------------------------------------------------------------


class LoggedOut(WarmRunner):
    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(
            runner=self.name, status="unauthenticated", message="Not logged in", hint="run `warm login`"
        )


def test_the_interactive_mode_checks_login_before_the_first_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_input(prompt: str = "") -> str:
        raise AssertionError("asked for a prompt")

    monkeypatch.setattr("builtins.input", no_input)
    runner = LoggedOut()
    err = StringIO()
    with pytest.raises(AuthenticationError) as refused:
        Conversation(runner, ChatOptions(), out=StringIO(), err=err).loop()
    assert str(refused.value) == "Warm Tool is not logged in: Not logged in"
    assert refused.value.hint == "run `warm login`" and refused.value.exit_code == 4
    (session,) = runner.sessions
    assert session.events == ["aclose"]  # the tool never started
    assert "Chatting with" not in err.getvalue()


def test_the_interactive_mode_starts_for_a_ready_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    def ctrl_d(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("builtins.input", ctrl_d)
    err = StringIO()
    assert Conversation(WarmRunner(), ChatOptions(), out=StringIO(), err=err).loop() == 0
    assert "Chatting with Warm Tool" in err.getvalue()


class UnknownModels(WarmRunner):
    """A warm runner whose tool knows no model of the name asked for."""

    builtin_models = (("big-model", ("big",)),)

    def session(self, **settings: Any) -> Session:
        session = super().session(**settings)
        session.fail_start = ModelNotFound(f"no model named {settings['model']!r}")  # type: ignore[attr-defined]
        return session


def test_the_interactive_mode_suggests_a_model_too(monkeypatch: pytest.MonkeyPatch) -> None:
    typed = ["hi"]

    def read(prompt: str = "") -> str:
        if not typed:
            raise EOFError
        return typed.pop(0)

    monkeypatch.setattr("builtins.input", read)
    err = StringIO()
    Conversation(UnknownModels(), ChatOptions(model="bgi-model"), out=StringIO(), err=err).loop()
    assert "llmrun: ModelNotFound: no model named 'bgi-model'" in err.getvalue()
    assert "llmrun: hint: did you mean 'big-model'?" in err.getvalue()
