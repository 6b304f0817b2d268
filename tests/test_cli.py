"""The `llmrun` command, driven the way users drive it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmrun.cli import render
from llmrun.cli.app import ChatCommand, app

from .cli_support import SESSION, chat_interrupted, claude_fake, only_installed, private_state
from .conftest import FakeRun, prompt_in, still_alive

cli = CliRunner()


@pytest.fixture(autouse=True)
def state_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_state(monkeypatch, tmp_path)


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


# --- chat: output ---------------------------------------------------------------------------


def test_chat_streams_plain_text(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "Say hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello from mock\n"


def test_piped_output_is_the_answer_only(claude: FakeRun) -> None:
    # Thinking, spinner and colours are for terminals; a pipe gets the answer text alone.
    claude.scenario("thinking-partial")
    result = cli.invoke(app, ["chat", "-r", "claude", "hi"])
    assert result.exit_code == 0
    assert result.stdout == "Hello after thinking\n"
    assert result.stderr == ""


def test_chat_json_is_one_chat_response(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude_code", "-m", "sonnet", "-s", "Be terse", "--json", "Say hi"])
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["content"] == "Hello from mock" and body["runner"] == "claude_code"
    assert set(body["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "total_tokens",
    }
    (invocation,) = claude.invocations()
    assert invocation["argv"][invocation["argv"].index("--system-prompt") + 1] == "Be terse"


def test_chat_jsonl_from_stdin(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude_code", "--jsonl", "-"], input="long prompt\n")
    assert result.exit_code == 0
    chunks = [json.loads(line) for line in result.stdout.splitlines()]
    assert "".join(c.get("delta", "") for c in chunks) == "Hello from mock"
    assert chunks[-1]["finish_reason"] == "stop" and chunks[-1]["usage"]["output_tokens"] == 7
    assert prompt_in(claude.invocations()[0]["stdin"]) == "long prompt\n"


def test_prompt_argument_and_piped_context(claude: FakeRun) -> None:
    cli.invoke(app, ["chat", "-r", "claude", "Summarise:"], input="the context\n")
    assert prompt_in(claude.invocations()[0]["stdin"]) == "Summarise:\n\nthe context\n"


def test_empty_piped_prompt_starts_no_tool(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude"], input="")
    assert result.exit_code == 2 and "InvalidRequest: the request has no message to send" in result.stderr
    assert claude.invocations() == []


def test_no_stream_prints_the_whole_answer(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "--no-stream", "--markdown", "hi"])
    assert result.exit_code == 0 and result.stdout == "Hello from mock\n"


def test_usage_line_on_stderr(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-u", "hi"])
    assert result.exit_code == 0
    assert result.stdout == "Hello from mock\n"
    (line,) = result.stderr.splitlines()
    assert line.startswith("tokens: 12 in, 7 out · $0.0002 · ")
    assert "first token" in line and line.endswith("claude-opus-4-8 via claude_code")


# --- chat: what is asked --------------------------------------------------------------------


def test_options_are_key_value_pairs_with_json_values(claude: FakeRun) -> None:
    args = ["chat", "-r", "claude", "-o", "max_turns", "3", "--option", "effort", "high"]
    args += ["-o", "extra_args", '["--bare"]', "-s", "-o", "hi"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    argv = claude.invocations()[0]["argv"]
    assert argv[argv.index("--max-turns") + 1] == "3"
    assert argv[argv.index("--effort") + 1] == "high"
    assert argv[-1] == "--bare"  # a JSON list, not the text '["--bare"]'
    assert argv[argv.index("--system-prompt") + 1] == "-o"  # the value of -s, not an --option


def test_option_values_parse_as_json_or_stay_text() -> None:
    from llmrun.cli.chat import parse_options

    assert parse_options([("a", "3"), ("b", "true"), ("c", "high"), ("d", '{"x": 1}')]) == {
        "a": 3,
        "b": True,
        "c": "high",
        "d": {"x": 1},
    }


def test_option_needs_two_values(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "hi", "--option", "effort"])
    assert result.exit_code == 2 and "KEY VALUE" in result.output + result.stderr
    assert claude.invocations() == []


def test_pack_pairs_leaves_everything_after_double_dash() -> None:
    command = ChatCommand(name="chat", callback=None, params=[])
    assert command.pack_pairs(["-o", "a", "b", "--", "-o", "x"]) == ["--option", '["a", "b"]', "--", "-o", "x"]


def test_session_cwd_tools_and_timeout_reach_the_tool(claude: FakeRun, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ["chat", "-r", "claude", "--session", "abc-123", "--cwd", str(work), "--allow-tools", "--timeout", "30"]
    result = cli.invoke(app, [*args, "hi"])
    assert result.exit_code == 0, result.output
    (invocation,) = claude.invocations()
    argv = invocation["argv"]
    assert "--resume=abc-123" in argv
    assert "--tools" not in argv  # --allow-tools leaves claude's tools on
    assert os.path.realpath(invocation["cwd"]) == os.path.realpath(work)


def test_bad_cwd_and_timeout_are_usage_errors(claude: FakeRun, tmp_path: Path) -> None:
    assert cli.invoke(app, ["chat", "-r", "claude", "--cwd", str(tmp_path / "nope"), "hi"]).exit_code == 2
    assert cli.invoke(app, ["chat", "-r", "claude", "--timeout", "0", "hi"]).exit_code == 2
    assert claude.invocations() == []


def test_continue_resumes_the_last_session(claude: FakeRun, state_file: Path) -> None:
    first = cli.invoke(app, ["chat", "-r", "claude", "-m", "opus", "first"])
    assert first.exit_code == 0
    assert json.loads(state_file.read_text())["sessions"]["claude_code"]["session_id"] == SESSION
    # No --runner: --continue picks the runner of the last conversation, and its model.
    second = cli.invoke(app, ["chat", "-c", "second"])
    assert second.exit_code == 0, second.output
    first_argv, second_argv = (inv["argv"] for inv in claude.invocations())
    assert not any(arg.startswith("--resume") for arg in first_argv)
    assert f"--resume={SESSION}" in second_argv
    assert second_argv[second_argv.index("--model") + 1] == "opus"


def test_continue_without_a_conversation(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "--continue", "more"])
    assert result.exit_code == 9
    assert "no earlier conversation with claude_code" in result.stderr
    assert claude.invocations() == []


def test_continue_and_session_together_is_a_usage_error(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "-c", "--session", "x", "hi"])
    assert result.exit_code == 2


def test_a_failed_answer_is_not_remembered(claude: FakeRun, state_file: Path) -> None:
    claude.scenario("mock-401-stream")
    assert cli.invoke(app, ["chat", "-r", "claude", "hi"]).exit_code == 4
    assert not state_file.exists()


# --- chat: which runner ---------------------------------------------------------------------


def test_runner_from_environment_then_config(claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('runner = "nope-from-file"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 2 and "'nope-from-file'" in result.stderr
    monkeypatch.setenv("LLMRUN_RUNNER", "claude")
    assert cli.invoke(app, ["chat", "hi"]).stdout == "Hello from mock\n"


def test_default_runner_is_the_first_ready_one(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "claude_code")
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello from mock\n"


def test_default_runner_skips_a_logged_out_one(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import registry
    from llmrun.runners.claude_code import ClaudeCodeRunner

    class Second(ClaudeCodeRunner):
        name = "second"

        async def check_auth(self, binary: str) -> tuple[bool | None, str]:
            return True, "logged in"

    monkeypatch.setattr(sys.modules[__name__], "Second", Second, raising=False)
    monkeypatch.setitem(registry.BUILTIN, "second", f"{__name__}:Second")
    only_installed(monkeypatch, "claude_code", "second")
    monkeypatch.setenv("LLMRUN_SECOND_BIN", str(claude.tool.binary))
    claude.monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", '[[["auth","status"],"auth-status"]]')  # claude logged out
    result = cli.invoke(app, ["chat", "--json", "hi"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["runner"] == "second"


def test_no_ready_runner_says_what_is_installed_and_how_to_fix(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_installed(monkeypatch, "claude_code")
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", '[[["auth","status"],"auth-status"]]')
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 4
    first, *hints = result.stderr.splitlines()
    assert first.startswith("llmrun: AuthenticationError: no runner is ready to use (logged out: claude_code")
    assert "not installed: codex" in first
    assert any("claude_code: run `claude auth login`" in hint for hint in hints)
    assert hints[-1].startswith("llmrun: hint: or name a runner with --runner")
    only_installed(monkeypatch)
    result = cli.invoke(app, ["chat", "hi"])
    assert result.exit_code == 3
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr


# --- errors ---------------------------------------------------------------------------------


def test_chat_failure_is_one_line_and_json_error(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    result = cli.invoke(app, ["chat", "-r", "claude", "--json", "hi"])
    assert result.exit_code == 4
    assert json.loads(result.stdout)["error"]["type"] == "AuthenticationError"
    assert result.stderr.splitlines()[0].startswith("llmrun: AuthenticationError: Invalid API key")
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback_and_tool_stderr(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    claude.fault("stderr=something the tool said")
    result = cli.invoke(app, ["--debug", "chat", "-r", "claude", "hi"])
    assert result.exit_code == 4
    assert "Traceback" in result.stderr and "something the tool said" in result.stderr
    plain = cli.invoke(app, ["chat", "-r", "claude", "hi"])
    assert "something the tool said" not in plain.stderr


def test_unexpected_errors_are_one_line_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.cli import views

    def broken(**_: Any) -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "runner_rows", broken)
    result = cli.invoke(app, ["runners"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "llmrun: RuntimeError: boom"
    assert "Traceback" not in result.stderr and "--debug" in result.stderr
    result = cli.invoke(app, ["--debug", "runners"])
    assert isinstance(result.exception, RuntimeError)


def test_unknown_runner_exit_code() -> None:
    result = cli.invoke(app, ["chat", "-r", "nope", "hi"])
    assert result.exit_code == 2 and "unknown runner 'nope'" in result.stderr


def test_version() -> None:
    import llmrun

    result = cli.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"llmrun {llmrun.__version__}\n"


# --- runners, models ------------------------------------------------------------------------


def test_runners_json_lists_every_runner(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.registry import runner_names

    only_installed(monkeypatch, "claude_code")
    result = cli.invoke(app, ["runners", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == runner_names()
    claude_row = rows["claude_code"]
    assert claude_row["installed"] is True and claude_row["version"] == "2.1.197"
    assert claude_row["authenticated"] is True and claude_row["binary"] == str(claude.tool.binary)
    assert claude_row["default_model"] is None and "claude" in claude_row["aliases"]  # claude's own choice
    assert claude_row["capabilities"]["token_streaming"] is True
    assert claude_row["parameters"]["stop"].startswith("llmrun ends the answer")  # llmrun's own, for all
    assert "seed" not in claude_row["parameters"]
    for name, row in rows.items():
        assert set(row) >= {"display_name", "installed", "binary", "version", "authenticated", "capabilities"}
        if name != "claude_code":
            assert row["installed"] is False and row["binary"] is None and row["hint"]


def test_runners_table(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "claude_code")
    result = cli.invoke(app, ["runners"])
    assert result.exit_code == 0
    claude_line = next(line for line in result.stdout.splitlines() if line.startswith("claude_code"))
    assert "Claude Code" in claude_line and "2.1.197" in claude_line and "tokens, thinking" in claude_line
    assert "To fix:" in result.stdout and "codex: install it with" in result.stdout


def test_runners_say_what_llmrun_cannot_lock_down(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun import registry
    from llmrun.runners.claude_code import ClaudeCodeRunner

    class Unconfined(ClaudeCodeRunner):
        name = "unconfined"
        cannot_lock_down = "its shell tool runs commands it calls low risk"

    monkeypatch.setattr(sys.modules[__name__], "Unconfined", Unconfined, raising=False)
    monkeypatch.setitem(registry.BUILTIN, "unconfined", f"{__name__}:Unconfined")
    only_installed(monkeypatch, "claude_code")
    rows = {row["name"]: row for row in json.loads(cli.invoke(app, ["runners", "--json"]).stdout)}
    assert rows["unconfined"]["cannot_lock_down"] == Unconfined.cannot_lock_down
    assert rows["claude_code"]["cannot_lock_down"] == ""
    table = cli.invoke(app, ["runners"]).stdout
    assert "Not locked down by llmrun:" in table and f"unconfined: {Unconfined.cannot_lock_down}" in table


def test_nineteen_tools_are_built_in() -> None:
    from llmrun.registry import BUILTIN, get_runner_class

    assert len(BUILTIN) == 19
    assert len({get_runner_class(name).binary for name in BUILTIN}) == 19  # nineteen different tools


def test_models_marks_builtin_and_discovered(monkeypatch: pytest.MonkeyPatch, claude: FakeRun) -> None:
    from llmrun import registry
    from llmrun.runners.claude_code import ClaudeCodeRunner

    class Listing(ClaudeCodeRunner):
        name = "listing"

        async def discover_models(self, binary: str) -> list[str]:
            return ["claude-sonnet-5", "claude-next"]

    monkeypatch.setattr(sys.modules[__name__], "Listing", Listing, raising=False)
    monkeypatch.setitem(registry.BUILTIN, "listing", f"{__name__}:Listing")
    monkeypatch.setenv("LLMRUN_LISTING_BIN", str(claude.tool.binary))
    monkeypatch.setenv("LLMRUN_LISTING_MODEL", "sonnet")  # the configured model is the default one
    result = cli.invoke(app, ["models", "-r", "listing", "--json"])
    assert result.exit_code == 0, result.stderr
    models = {m["id"]: m for m in json.loads(result.stdout)}
    assert models["claude-sonnet-5"]["source"] == "builtin" and models["claude-sonnet-5"]["is_default"]
    assert models["claude-next"]["source"] == "discovered"
    table = cli.invoke(app, ["models", "-r", "listing"]).stdout
    assert "discovered" in table and "built in" in table


def test_models_of_every_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.registry import runner_names

    only_installed(monkeypatch)
    result = cli.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    assert {m["runner"] for m in json.loads(result.stdout)} <= set(runner_names())
    assert any(m["id"] == "claude-sonnet-5" for m in json.loads(result.stdout))


# --- health ---------------------------------------------------------------------------------


def test_health_json_and_exit_codes(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli.invoke(app, ["health", "--runner", "claude_code", "--json"])
    assert result.exit_code == 0
    (report,) = json.loads(result.stdout)
    assert report["status"] == "ok" and report["version"] == "2.1.197"
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_BIN", "/nonexistent/claude")
    result = cli.invoke(app, ["health", "--runner", "claude", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0]["status"] == "not_installed"


def test_health_checks_installed_runners_by_default(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "claude_code")
    result = cli.invoke(app, ["health", "--json"])
    assert result.exit_code == 0
    assert [r["runner"] for r in json.loads(result.stdout)] == ["claude_code"]
    table = cli.invoke(app, ["health"])
    assert table.exit_code == 0 and "claude_code" in table.stdout and "ok" in table.stdout


def test_health_with_nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch)
    result = cli.invoke(app, ["health", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout) == []
    assert "no runner is installed" in result.stderr
    result = cli.invoke(app, ["health", "--format", "github"])
    assert result.exit_code == 1 and result.stdout.startswith("::error title=llmrun health::no runner is installed")


def test_health_selection_repeats_and_aliases(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_CODEX_BIN", "/nonexistent/codex")
    result = cli.invoke(app, ["health", "-r", "claude", "-r", "claude_code", "-r", "codex", "--json"])
    assert result.exit_code == 1  # codex is not installed
    assert [(r["runner"], r["status"]) for r in json.loads(result.stdout)] == [
        ("claude_code", "ok"),
        ("codex", "not_installed"),
    ]
    assert cli.invoke(app, ["health", "-r", "nope"]).exit_code == 2


def test_health_github_annotations(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRUN_FAKE_COMMANDS", '[[["auth","status"],"auth-status"]]')
    result = cli.invoke(app, ["health", "-r", "claude", "--format", "github"])
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith("::error title=llmrun health%3A claude_code::claude_code 2.1.197: unauthenticated: ")
    assert "Fix: run `claude auth login`" in line
    monkeypatch.delenv("LLMRUN_FAKE_COMMANDS")
    result = cli.invoke(app, ["health", "-r", "claude", "--format", "github"])
    assert result.exit_code == 0 and result.stdout.startswith("claude_code: ok 2.1.197")


def test_github_annotation_escapes_newlines_and_colons() -> None:
    from llmrun.cli.views import github_error

    assert github_error("a: b, c", "50% done\nnext") == "::error title=a%3A b%2C c::50%25 done%0Anext"


# --- config ---------------------------------------------------------------------------------


def test_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cli.invoke(app, ["config", "path"]).stdout == f"{tmp_path / 'no-config.toml'}\n"
    monkeypatch.delenv("LLMRUN_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli.invoke(app, ["config", "path"]).stdout == f"{tmp_path / 'xdg' / 'llmrun' / 'config.toml'}\n"


def test_config_show_merges_file_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    from llmrun.registry import runner_names

    config = tmp_path / "config.toml"
    config.write_text(
        'runner = "claude"\n[runners.claude_code]\ndefault_model = "haiku"\ntimeout = 60\n'
        'extra_args = ["--effort", "low"]\nenv = { CLAUDE_CODE_MAX_RETRIES = "1", "A.B" = "x" }\n'
    )
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_MODEL", "opus")
    result = cli.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["runner"] == "claude" and list(shown["runners"]) == runner_names()
    claude = shown["runners"]["claude_code"]
    assert claude["default_model"] == "opus" and claude["timeout"] == 60.0 and claude["binary"] == "claude"
    assert claude["extra_args"] == ["--effort", "low"] and claude["env"]["A.B"] == "x"
    assert "# env LLMRUN_CLAUDE_CODE_MODEL" in result.stdout
    as_json = json.loads(cli.invoke(app, ["config", "show", "--json"]).stdout)
    assert as_json["sources"]["claude_code"]["timeout"] == "file"
    assert as_json["sources"]["claude_code"]["binary"] == "default"
    assert as_json["runners"]["claude_code"]["stall_timeout"] == 300.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('runer = "claude"\n', "unknown key 'runer'; expected one of log, routes, runner, runners, server"),
        ("runner = 3\n", "runner: expected a runner name"),
        ('[runners.claude_code]\ntimeout = "soon"\n', "timeout: expected a number of seconds"),
        ("[runners.claude_code]\nbinry = 1\n", "unknown key 'binry'"),
        ('[runners.claude]\nbinary = "x"\n', "unknown runner 'claude'"),
        ("runners = 1\n", "runners: expected a table"),
        ("not toml = = 1\n", "cannot read the config file"),
    ],
)
def test_invalid_config_names_file_key_and_expectation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = cli.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"llmrun: ConfigError: {config}") and expected in line, line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["runners"], ["models"], ["health"], ["chat", "-r", "claude", "hi"]])
def test_a_table_named_by_an_alias_stops_every_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[runners.claude]\ndefault_model = "opus"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = cli.invoke(app, command)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"llmrun: ConfigError: {config}: [runners.claude]: unknown runner 'claude'; expected one of "
        + ", ".join(__import__("llmrun.registry").registry.runner_names()),
        "llmrun: hint: name the table [runners.claude_code]",
    ]
    assert cli.invoke(app, ["config", "path"]).exit_code == 0  # still tells where the file is


def test_invalid_config_stops_chat_too(claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[runners.claude_code]\nstall_timeout = -1\n")
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = cli.invoke(app, ["chat", "-r", "claude", "--json", "hi"])
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["type"] == "ConfigError"
    assert claude.invocations() == []


# --- rendering ------------------------------------------------------------------------------


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_markdown_settles_finished_blocks_only() -> None:
    from llmrun.cli.render import settled_length

    assert settled_length("# Title\n\nSome") == len("# Title\n\n")
    assert settled_length("```\ncode\n\nmore") == 0  # inside a fence
    assert settled_length("1. item\n\n   continued") == 0  # may continue the list item
    assert settled_length("para\n\n") == 0  # what follows is unknown yet


def test_markdown_stream_renders_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.cli.render import ChatPrinter

    monkeypatch.setenv("NO_COLOR", "1")
    out, err = Terminal(), Terminal()
    printer = ChatPrinter(out, err, label="x", markdown=True)
    for piece in ("# Big ", "title\n\nSome **bold", "** text and `code`\n\n- one\n- two\n"):
        printer.text(piece)
    printer.finish()
    text = out.getvalue()
    assert "Big title" in text and "# Big" not in text and "**" not in text and "•" in text
    # NO_COLOR keeps bold and underline but no colour (SGR 30-49 and 90-107).
    codes = {int(n) for seq in re.findall(r"\x1b\[([0-9;]*)m", text) for n in seq.split(";") if n}
    assert 1 in codes and not {c for c in codes if 30 <= c <= 49 or 90 <= c <= 107}


def test_thinking_is_dimmed_on_a_terminal_and_can_be_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.cli.render import ChatPrinter
    from llmrun.types import ChatChunk

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for hide in (False, True):
        out, err = Terminal(), Terminal()
        printer = ChatPrinter(out, err, label="x", show_thinking=not hide)
        printer.chunk(ChatChunk(thinking="hmm"))
        printer.chunk(ChatChunk(delta="Hi"))
        printer.finish()
        assert out.getvalue() == "Hi\n"
        assert err.getvalue() == ("" if hide else f"{render.DIM}hmm{render.RESET}\n\n")
    render.flags.no_color = True
    try:
        err = Terminal()
        printer = ChatPrinter(Terminal(), err, label="x")
        printer.chunk(ChatChunk(thinking="hmm"))
        printer.finish()
        assert err.getvalue() == "thinking: hmm\n\n"
    finally:
        render.flags.no_color = False


# --- the installed command, in its own process ----------------------------------------------


def test_installed_entry_point_streams(claude: FakeRun) -> None:
    # The console script as installed, in its own process, with stdin piped.
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "claude_code", "--jsonl", "-"],
        input="hello",
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["finish_reason"] == "stop"


def imported_modules(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llmrun", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_help_loads_neither_pydantic_nor_rich_nor_runners() -> None:
    modules = imported_modules("--help")
    assert "typer" in modules  # the measurement works
    heavy = {m for m in modules if m.split(".")[0] in ("pydantic", "rich") or m.startswith("llmrun.runners")}
    assert not heavy and "llmrun.types" not in modules


def test_runners_json_loads_no_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch)
    modules = imported_modules("runners", "--json")
    assert "llmrun.runners.base" in modules  # runners are loaded (by import_module, which -X importtime omits)
    assert not {m for m in modules if m.split(".")[0] == "rich"}


def test_ctrl_c_cancels_and_kills_the_tool(claude: FakeRun) -> None:
    returncode, err, (invocation,) = chat_interrupted(claude, "-r", "claude", "hi")
    assert returncode == 130, err
    assert err.strip().splitlines()[-1] == "llmrun: Cancelled: cancelled (Ctrl-C)"
    assert still_alive([invocation["pid"]]) == []


def test_a_reader_that_goes_away_ends_the_run_quietly(claude: FakeRun) -> None:
    claude.delay(0.2)
    child = subprocess.Popen(
        [sys.executable, "-m", "llmrun", "chat", "-r", "claude", "--jsonl", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        assert json.loads(child.stdout.readline())  # one chunk, then the reader leaves
        child.stdout.close()
        assert child.wait(timeout=30) == 141
        assert child.stderr.read() == b""
    finally:
        child.kill()
    assert still_alive(claude.pids()) == []


# --- checks in parallel ---------------------------------------------------------------------


def test_health_checks_run_at_the_same_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from llmrun.cli import selection
    from llmrun.types import HealthReport

    names = ["a", "b", "c"]
    started: set[str] = set()

    async def check(name: str, *, probe: bool = False) -> HealthReport:
        started.add(name)
        # Each check waits for all to have started: run one after another, they would time out.
        for _ in range(200):
            if started == set(names):
                return HealthReport(runner=name, status="ok")
            await asyncio.sleep(0.01)
        return HealthReport(runner=name, status="error", message="checks ran one at a time")

    monkeypatch.setattr(selection, "check", check)
    reports = asyncio.run(selection.check_all(names))
    assert [(r.runner, r.status) for r in reports] == [(n, "ok") for n in names]


def test_detection_waits_only_for_runners_before_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from llmrun import registry
    from llmrun.cli import selection
    from llmrun.types import HealthReport

    cancelled: list[str] = []
    statuses = {"first": ("unauthenticated", False), "second": ("ok", True), "third": ("ok", None)}

    async def check(name: str, *, probe: bool = False) -> HealthReport:
        if name == "slow":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
        status, authenticated = statuses.get(name, ("ok", True))
        return HealthReport(runner=name, status=status, authenticated=authenticated)  # type: ignore[arg-type]

    monkeypatch.setattr(selection, "check", check)
    monkeypatch.setattr(registry, "runner_names", lambda: ["first", "second", "slow"])
    assert asyncio.run(selection.detect_runner()) == "second"
    assert cancelled == ["slow"]
    # A runner that cannot tell whether it is logged in yields to a later one that is.
    monkeypatch.setattr(registry, "runner_names", lambda: ["first", "third", "second"])
    assert asyncio.run(selection.detect_runner()) == "second"
    monkeypatch.setattr(registry, "runner_names", lambda: ["first", "third"])
    assert asyncio.run(selection.detect_runner()) == "third"


# --- chat: sampling parameters and schemas ----------------------------------------------------


def test_stop_ends_the_answer_and_an_ignored_parameter_is_said_on_stderr(claude: FakeRun) -> None:
    claude.scenario("mock-stream-json-partial")
    result = cli.invoke(app, ["chat", "-r", "claude", "--stop", " mock", "--seed", "4", "hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello from\n"
    assert "ignored parameter seed: Claude Code has no way to set it" in result.stderr


def test_strict_params_refuse_what_the_runner_cannot_honour(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "--strict-params", "--seed", "4", "hi"])
    assert result.exit_code == 14, result.output  # UnsupportedFeature
    assert "Claude Code cannot honour seed" in result.stderr
    assert claude.invocations() == []


def test_schema_inline_or_from_a_file(claude: FakeRun, tmp_path: Path) -> None:
    claude.scenario("mock-json-schema-stream")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    for given in (json.dumps(schema), str(path)):
        result = cli.invoke(app, ["chat", "-r", "claude", "--schema", given, "a name"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"name": "mock-name"}
    argv = claude.invocations()[-1]["argv"]
    assert json.loads(argv[argv.index("--json-schema") + 1]) == schema


def test_a_schema_that_is_neither_json_nor_a_file_is_a_usage_error(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "--schema", "no-such-file.json", "hi"])
    assert result.exit_code == 2 and "--schema" in result.output and claude.invocations() == []
