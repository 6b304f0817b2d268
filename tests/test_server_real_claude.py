"""The real Claude Code CLI as a client of the daemon (ANTHROPIC_BASE_URL pointed at it).

Claude Code sends its own system blocks, interleaved system messages and ~25 tool
definitions. The daemon's backends here are offline: the claude fake behind the
`claude_code` runner, and a scripted in-process runner that answers with a tool call in
the emulation's convention, so that Claude Code must run the tool and continue.
Skipped when `claude` is not installed (CI installs it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrun.errors import AuthenticationError
from llmrun.types import ChatRequest

from .conftest import FakeRun, prompt_in
from .realcli import claude_env, require_binary
from .server_support import LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(90)]

MARKER = "mock-tool-ran"


@pytest.fixture(scope="module", autouse=True)
def claude_binary() -> str:
    return require_binary("claude")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def run_claude(tmp_path: Path, url: str, *args: str, default_retries: bool = False) -> subprocess.CompletedProcess[str]:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    env = claude_env(tmp_path / "claude-home", url)
    if default_retries:
        del env["CLAUDE_CODE_MAX_RETRIES"]  # as a user runs it: ten retries
    return subprocess.run(
        ["claude", "-p", *args],
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_claude_code_completes_a_plain_turn_through_the_daemon(fake: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path)) as live:
        done = run_claude(tmp_path, live.url, "--tools", "", "--model", "claude_code/haiku", "Say hi")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello from mock"
    (run,) = [inv for inv in fake.invocations() if "--output-format" in inv["argv"]]
    assert run["argv"][run["argv"].index("--model") + 1] == "haiku"
    assert prompt_in(run["stdin"]).rstrip().endswith("Say hi")


def test_claude_code_runs_a_tool_the_backend_asks_for(tmp_path: Path) -> None:
    pytest.importorskip("llmrun.tool_emulation", reason="tool emulation (llmrun/tool_emulation.py) is not there yet")
    call = {"name": "Bash", "arguments": {"command": f"echo {MARKER}", "description": "Print a marker"}}

    def answer(request: ChatRequest) -> str:
        last = request.conversation()[-1]
        if last.role == "tool":
            return f"Tool finished: {last.text.strip()}"
        return f"I will run a command.\n<tool_call>{json.dumps(call)}</tool_call>"

    runner = ScriptedRunner(answer)
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        done = run_claude(
            tmp_path,
            live.url,
            "--model",
            "scripted/script",
            "--allowedTools",
            "Bash",
            "--output-format",
            "json",
            "Run the marker command",
        )

    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert result["is_error"] is False, result
    assert result["result"].startswith("Tool finished:") and MARKER in result["result"], result
    first, second = runner.requests[0], runner.requests[-1]
    assert "Bash" in (first.system or "") and first.tools is None  # Claude Code's tools, offered in the prompt
    assert len(runner.requests) >= 2
    last = second.conversation()[-1]
    assert last.role == "tool" and MARKER in last.text  # the command really ran, its output came back


def test_claude_code_stops_at_once_on_a_logged_out_backend(tmp_path: Path) -> None:
    # Claude Code retries an error up to ten times unless the answer says x-should-retry: false.
    runner = ScriptedRunner(lambda request: AuthenticationError("scripted is not logged in", hint="log in"))
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        done = run_claude(
            tmp_path, live.url, "--tools", "", "--model", "scripted/script", "Say hi", default_retries=True
        )

    assert done.returncode != 0
    assert "not logged in" in done.stdout + done.stderr
    asked = [r for r in runner.requests if "Say hi" in r.conversation()[-1].text]
    assert len(asked) == 1, f"the daemon was asked {len(asked)} times"
