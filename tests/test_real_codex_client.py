"""The real Codex CLI as a client of the daemon's Responses API (`wire_api = "responses"`).

Codex is configured as a user would configure it: a model provider named `llmrun` in its
config.toml, pointing at the daemon on 127.0.0.1, with the daemon's key in an environment
variable. The daemon's backend is a scripted in-process runner, which answers in the tool
emulation's convention when codex should run its shell tool (`exec_command`), so that
codex runs the command, sends its output back and finishes with the backend's second
answer. Codex runs in a throwaway HOME and CODEX_HOME; the tests are skipped when it is
not installed (CI installs it with `npm install -g @openai/codex`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmrun.types import ChatRequest

from .realcli import codex_env, require_binary
from .server_support import LiveServer, ScriptedRunner, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_responses import CODEX_OFFLINE_ARGS

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(300)]

KEY = "sk-test-llmrun"
GREETING = "Hello from llmrun"
MARKER = "llmrun-tool-ran"
RUN_LIMIT = 240  # far above codex's start-up, for a loaded machine


@pytest.fixture(scope="module", autouse=True)
def codex_binary() -> str:
    return require_binary("codex")


def answer(request: ChatRequest) -> str:
    """Greets, or asks codex's shell tool to run a command and then reports what it printed."""
    last = request.conversation()[-1]
    if last.role == "tool":
        return f"The command printed: {last.text.strip().splitlines()[-1]}"
    if "run the command" in last.text:
        call = {"name": "exec_command", "arguments": {"cmd": f"echo {MARKER}"}}
        return f"I will run it.\n<tool_call>{json.dumps(call)}</tool_call>"
    return GREETING


def configure_codex(home: Path, url: str) -> dict[str, str]:
    """The environment of a codex whose config.toml names llmrun as a model provider."""
    env = codex_env(home)
    config = f"""
[model_providers.llmrun]
name = "llmrun"
base_url = "{url}/v1"
env_key = "LLMRUN_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
    (Path(env["CODEX_HOME"]) / "config.toml").write_text(config)
    env["LLMRUN_API_KEY"] = KEY
    return env


def run_codex(env: dict[str, str], workdir: Path, prompt: str) -> list[dict[str, Any]]:
    argv = [
        "codex",
        *CODEX_OFFLINE_ARGS,
        "-c",
        "model_provider=llmrun",
        "-c",
        "model=scripted/script",
        "exec",
        "--json",
        "--skip-git-repo-check",
        # Codex's sandbox (bubblewrap/landlock) cannot start in every container; the command
        # it runs here is a harmless echo in a throwaway directory.
        "--dangerously-bypass-approvals-and-sandbox",
        "-C",
        str(workdir),
        prompt,
    ]
    done = subprocess.run(
        argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_LIMIT
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e.get("type") == "item.completed" and e["item"].get("type") == kind]


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner(answer)


@pytest.fixture
def codex(tmp_path: Path, runner: ScriptedRunner):  # type: ignore[no-untyped-def]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with LiveServer(settings(tmp_path, api_key=KEY), runners={"scripted": runner}) as live:
        env = configure_codex(tmp_path / "codex", live.url)
        yield lambda prompt: run_codex(env, workdir, prompt)


def test_codex_completes_a_turn_through_llmrun(codex: Any, runner: ScriptedRunner) -> None:
    events = codex("Say hi")

    assert [m["text"] for m in items(events, "agent_message")] == [GREETING]
    assert any(e.get("type") == "turn.completed" for e in events)
    (sent,) = runner.requests
    assert sent.conversation()[-1].text == "Say hi"
    assert "Codex" in (sent.system_prompt() or "")  # codex's developer messages are the system prompt


def test_codex_runs_its_shell_tool_and_finishes(codex: Any, runner: ScriptedRunner) -> None:
    events = codex("Please run the command")

    (command,) = items(events, "command_execution")
    assert MARKER in command["aggregated_output"] and command["exit_code"] == 0
    messages = [m["text"] for m in items(events, "agent_message")]
    assert messages[-1] == f"The command printed: {MARKER}"
    first, second = runner.requests
    # The daemon got codex's tool output back, as the tool turn of the same conversation,
    # and continued the backend's session rather than replaying the history.
    assert [m.role for m in second.conversation()][-2:] == ["assistant", "tool"]
    assert MARKER in second.conversation()[-1].text
    assert second.session_id == "scripted-session-1"
