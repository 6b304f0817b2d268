"""The `llmrun` command, driven the way users drive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llmrun.cli.app import app

from .conftest import FakeRun

cli = CliRunner()


@pytest.fixture
def claude(fake: FakeRun) -> FakeRun:
    if fake.tool.runner != "claude_code":
        pytest.skip("the command tests use the claude fake")
    return fake


def test_chat_streams_plain_text(claude: FakeRun) -> None:
    result = cli.invoke(app, ["chat", "-r", "claude", "Say hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello from mock\n"


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
    assert claude.invocations()[0]["stdin"] == "long prompt\n"


def test_prompt_argument_and_piped_context(claude: FakeRun) -> None:
    cli.invoke(app, ["chat", "-r", "claude", "Summarise:"], input="the context\n")
    assert claude.invocations()[0]["stdin"] == "Summarise:\n\nthe context\n"


def test_chat_failure_is_one_line_and_json_error(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    result = cli.invoke(app, ["chat", "-r", "claude", "--json", "hi"])
    assert result.exit_code == 4
    assert json.loads(result.stdout)["error"]["type"] == "AuthenticationError"
    assert result.stderr.splitlines()[0].startswith("llmrun: AuthenticationError: Invalid API key")


def test_unknown_runner_exit_code() -> None:
    result = cli.invoke(app, ["chat", "-r", "nope", "hi"])
    assert result.exit_code == 2 and "unknown runner 'nope'" in result.stderr


def test_health_json_and_exit_codes(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli.invoke(app, ["health", "--runner", "claude_code", "--json"])
    assert result.exit_code == 0
    (report,) = json.loads(result.stdout)
    assert report["status"] == "ok" and report["version"] == "2.1.197"
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_BIN", "/nonexistent/claude")
    result = cli.invoke(app, ["health", "--runner", "claude", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0]["status"] == "not_installed"


def test_installed_entry_point_streams(claude: FakeRun) -> None:
    # The console script as installed, in its own process, with stdin piped.
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "claude_code", "--jsonl", "-"],
        input="hello",
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["finish_reason"] == "stop"
