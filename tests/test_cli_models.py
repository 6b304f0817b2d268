"""Which model a run names: only the one the user asked for, else the tool's own choice.

A model reaches the tool's command line only from the request (`-m`), `LLMRUN_<NAME>_MODEL`
or `default_model` in llmrun's config; otherwise the tool's own settings decide (codex's
config.toml, ANTHROPIC_MODEL, gemini's settings, ...), and `runners`, `models` and
`config show` say "the tool's default".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner as CommandRunner

from llmrun import ChatRequest
from llmrun.cli.app import app
from llmrun.registry import get_runner, get_runner_class, runner_names
from llmrun.runners.base import CliRunner
from llmrun.runners.claude_code import ClaudeCodeRunner
from llmrun.runners.codex import CodexRunner, thread_model
from llmrun.runners.gemini import GeminiRunner
from llmrun.sessions import SessionSettings

from .cli_support import claude_fake, only_installed, private_state
from .conftest import FAKE_BIN, FAKE_TOOLS, FIXTURES, FakeRun

cli = CommandRunner()

ASKED = "probe-model-x"
# `ollama run` cannot start without a model: its runner keeps one of its own.
NEEDS_A_MODEL = {"ollama"}
# Tools whose own model settings llmrun could pass on by mistake.
MODEL_VARIABLES = ("ANTHROPIC_MODEL", "GEMINI_MODEL", "OPENAI_MODEL", "COPILOT_MODEL", "GOOSE_MODEL")


@pytest.fixture(autouse=True)
def tool_homes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty homes for every tool, so no developer's settings name a model."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CODEX_HOME", str(home / ".codex"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home / ".claude"))
    monkeypatch.setenv("GEMINI_CLI_HOME", str(home))
    for name in MODEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    private_state(monkeypatch, tmp_path)
    return home


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def codex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    record = tmp_path / "record"
    record.mkdir()
    return FakeRun(next(t for t in FAKE_TOOLS if t.runner == "codex"), monkeypatch, record)


def command_of(name: str, request: ChatRequest) -> str:
    """The run's argv and environment, as one text to search."""
    runner = get_runner(name)
    assert isinstance(runner, CliRunner)
    invocation = runner.build_invocation(request, f"/usr/bin/{runner.binary}")
    env = {**invocation.env, **invocation.env_defaults}
    return "\n".join([*invocation.argv, *(f"{key}={value}" for key, value in env.items())])


def model_flags(command: str) -> list[str]:
    return [line for line in command.splitlines() if line in ("--model", "-m") or line.startswith("--model=")]


# --- the command line -----------------------------------------------------------------------


def test_only_a_tool_that_needs_a_model_has_one_of_its_own() -> None:
    assert {name for name in runner_names() if get_runner_class(name).default_model} == NEEDS_A_MODEL


@pytest.mark.parametrize("name", [name for name in runner_names() if name not in NEEDS_A_MODEL])
def test_no_model_is_named_unless_one_is_asked_for(name: str) -> None:
    command = command_of(name, ChatRequest.of("hi"))
    assert model_flags(command) == []
    builtin = {model for entry in get_runner_class(name).builtin_models for model in (entry[0], *entry[1])}
    assert not builtin & set(command.replace("=", "\n").splitlines())


@pytest.mark.parametrize("name", [name for name in runner_names() if name not in NEEDS_A_MODEL | {"continue"}])
def test_the_configured_model_is_named(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # (cn picks its model from its own config file by name: tests/test_continue.py.)
    monkeypatch.setenv(f"LLMRUN_{name.upper()}_MODEL", ASKED)
    assert ASKED in command_of(name, ChatRequest.of("hi"))
    monkeypatch.delenv(f"LLMRUN_{name.upper()}_MODEL")
    assert ASKED in command_of(name, ChatRequest.of("hi", model=ASKED))


def test_a_tool_that_needs_a_model_keeps_one() -> None:
    assert "gemma4" in command_of("ollama", ChatRequest.of("hi")).splitlines()


def test_the_config_files_model_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.codex]\ndefault_model = "gpt-5.5"\n[runners.claude_code]\ndefault_model = "haiku"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    codex = command_of("codex", ChatRequest.of("hi")).splitlines()
    assert codex[codex.index("-m") + 1] == "gpt-5.5"
    claude = command_of("claude_code", ChatRequest.of("hi")).splitlines()
    assert claude[claude.index("--model") + 1] == "haiku"
    # The request's own model wins over the configured one.
    claude = command_of("claude_code", ChatRequest.of("hi", model="opus")).splitlines()
    assert claude[claude.index("--model") + 1] == "opus"


def test_warm_sessions_take_the_configured_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("opencode", "kiro", "goose", "codex"):
        monkeypatch.setenv(f"LLMRUN_{name.upper()}_BIN", str(FAKE_BIN / get_runner_class(name).binary))
    no_model = {
        "opencode": get_runner("opencode").warm_connection(SessionSettings(), None).model,  # type: ignore[attr-defined]
        "codex": get_runner("codex").warm_connection(SessionSettings(), None).thread.get("model"),  # type: ignore[attr-defined]
    }
    assert no_model == {"opencode": None, "codex": None}
    for name in ("opencode", "kiro", "goose", "codex"):
        monkeypatch.setenv(f"LLMRUN_{name.upper()}_MODEL", ASKED)
    assert get_runner("opencode").warm_connection(SessionSettings(), None).model == ASKED  # type: ignore[attr-defined]
    assert f"--model={ASKED}" in get_runner("kiro").warm_connection(SessionSettings(), None).invocation.argv
    assert get_runner("goose").warm_connection(SessionSettings(), None).invocation.env["GOOSE_MODEL"] == ASKED
    assert get_runner("codex").warm_connection(SessionSettings(), None).thread["model"] == ASKED  # type: ignore[attr-defined]


# --- what the tool chose --------------------------------------------------------------------


def test_anthropic_model_reaches_claude_unchanged(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_MODEL", "my-own-model")
    result = cli.invoke(app, ["chat", "-r", "claude", "--json", "Say hi"])
    assert result.exit_code == 0, result.stderr
    (recorded,) = claude.invocations()
    assert "--model" not in recorded["argv"]
    assert recorded["env"]["ANTHROPIC_MODEL"] == "my-own-model"
    # The model reported is the one claude's output names (the replayed run's), none of llmrun's.
    assert json.loads(result.stdout)["model"] == "claude-opus-4-8"


async def test_codex_reports_the_model_of_its_session_file(
    codex: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    thread = json.loads((FIXTURES / "codex" / "runner-resume.stdout").read_text().splitlines()[0])["thread_id"]
    day = tmp_path / "codex-home" / "sessions" / "2026" / "12" / "07"
    day.mkdir(parents=True)
    lines = [{"type": "session_meta", "payload": {"id": thread}}]
    lines += [{"type": "turn_context", "payload": {"model": model}} for model in ("gpt-5.5", "my-own-model")]
    (day / f"rollout-2026-12-07T10-00-00-{thread}.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    codex.scenario("runner-resume")

    response = await codex.runner().complete(ChatRequest.of("hi"))
    assert response.session_id == thread
    assert response.model == "my-own-model"  # the last turn's, as codex recorded it
    (recorded,) = codex.invocations()
    assert "-m" not in recorded["argv"]
    assert thread_model(str(tmp_path / "codex-home"), "01a1fe8b-0000-0000-0000-000000000000") is None
    assert thread_model(str(tmp_path / "codex-home"), "../../etc/passwd") is None


def test_the_tools_own_settings_say_which_model_it_runs(tool_homes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CodexRunner().tool_default_model() is None
    (tool_homes / ".codex").mkdir()
    (tool_homes / ".codex" / "config.toml").write_text('model = "gpt-5.5"\n[profiles.fast]\nmodel = "gpt-6-luna"\n')
    assert CodexRunner().tool_default_model() == "gpt-5.5"
    profile = 'profile = "fast"\nmodel = "gpt-5.5"\n[profiles.fast]\nmodel = "gpt-6-luna"\n'
    (tool_homes / ".codex" / "config.toml").write_text(profile)
    assert CodexRunner().tool_default_model() == "gpt-6-luna"

    assert ClaudeCodeRunner().tool_default_model() is None
    (tool_homes / ".claude").mkdir()
    (tool_homes / ".claude" / "settings.json").write_text('{"model": "opus"}')
    assert ClaudeCodeRunner().tool_default_model() == "opus"
    monkeypatch.setenv("ANTHROPIC_MODEL", "my-own-model")
    assert ClaudeCodeRunner().tool_default_model() == "my-own-model"

    assert GeminiRunner().tool_default_model() is None  # gemini's "auto" routing
    (tool_homes / ".gemini").mkdir()
    (tool_homes / ".gemini" / "settings.json").write_text('{"model": {"name": "gemini-2.5-pro"}}')
    assert GeminiRunner().tool_default_model() == "gemini-2.5-pro"
    monkeypatch.setenv("GEMINI_MODEL", "auto")
    assert GeminiRunner().tool_default_model() is None


# --- what the command shows -----------------------------------------------------------------


def test_runners_show_the_tools_default(claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tool_homes: Path) -> None:
    only_installed(monkeypatch, "claude_code")
    (tool_homes / ".codex").mkdir()
    (tool_homes / ".codex" / "config.toml").write_text('model = "gpt-5.5"\n')
    monkeypatch.setenv("LLMRUN_GEMINI_MODEL", "flash")
    result = cli.invoke(app, ["runners", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["claude_code"]["default_model"] is None and rows["claude_code"]["tool_default_model"] is None
    assert rows["codex"]["default_model"] is None and rows["codex"]["tool_default_model"] == "gpt-5.5"
    assert rows["gemini"]["default_model"] == "flash" and rows["gemini"]["tool_default_model"] is None
    assert rows["ollama"]["default_model"] == "gemma4"

    table = cli.invoke(app, ["runners"], env={"COLUMNS": "200"}).stdout
    lines = table.splitlines()
    claude_line = next(line for line in lines if line.startswith("claude_code"))
    assert "tool's default" in claude_line
    gemini_line = next(line for line in lines if line.startswith("gemini"))
    assert "flash" in gemini_line and "tool's default" not in gemini_line
    codex_at = next(i for i, line in enumerate(lines) if line.startswith("codex"))
    assert "tool's default" in lines[codex_at] and "gpt-5.5" in "\n".join(lines[codex_at : codex_at + 3])


def test_models_say_the_tools_default(monkeypatch: pytest.MonkeyPatch, tool_homes: Path) -> None:
    only_installed(monkeypatch)
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-opus-4-8")
    result = cli.invoke(app, ["models", "-r", "claude", "--json"])
    assert result.exit_code == 0, result.stderr
    marked = [m["id"] for m in json.loads(result.stdout) if m["is_default"]]
    assert marked == ["claude-opus-4-8"]  # what claude's own variable names

    monkeypatch.delenv("ANTHROPIC_MODEL")
    result = cli.invoke(app, ["models", "-r", "claude", "-r", "ollama"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "claude_code: the tool's default" in result.stdout
    assert "ollama: the tool's default" not in result.stdout  # it has a model of its own
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_MODEL", "haiku")
    assert "the tool's default" not in cli.invoke(app, ["models", "-r", "claude"]).stdout


def test_config_show_says_the_tools_default() -> None:
    result = cli.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.stderr
    section = result.stdout.split("[runners.claude_code]")[1].split("[runners.")[0]
    assert "# default_model: not set (the tool's default applies)" in section
    ollama = result.stdout.split("[runners.ollama]")[1].split("[runners.")[0]
    assert 'default_model = "gemma4"' in ollama
