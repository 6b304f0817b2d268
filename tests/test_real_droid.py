"""End to end: llmrun's DroidRunner driving the real `droid` against tests/mock_openai_chat.py.

Every test runs the installed Factory Droid (CI installs it with `npm install -g droid@0.215.0`)
in a throwaway HOME whose `~/.factory/settings.json` defines the mock on 127.0.0.1 as a
custom model (`custom:mock-model`, key `sk-test`): no Factory account is needed. Run them
inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_droid.py'

They are skipped when `droid` is not installed, and outside such a namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.droid import DroidRunner

# Importable whatever pytest's import mode is, like tests/test_real_opencode.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, MockOpenAIChat
from realcli import assert_no_processes_in, become, droid_env, loopback_only, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "custom:mock-model"
RUN_LIMIT = 180.0  # far above droid's start-up, even on a loaded machine
MARKER = "created-by-mock.txt"
# Droid's shell tool, with the risk label its gate trusts: "low" runs in droid's default mode.
LOW_RISK_TOUCH = {
    "summary": "Create a marker file",
    "command": f"touch {MARKER}",
    "riskLevelReason": "Creates one empty file in the workspace.",
    "riskLevel": "low",
}


@pytest.fixture(scope="module", autouse=True)
def droid_binary() -> str:
    path = require_binary("droid")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace: unshare -n sh -c 'ip link set lo up && …'")
    return path


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, droid_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> DroidRunner:
    made = llmrun.get_runner("droid")
    assert isinstance(made, DroidRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    fields.setdefault("model", MODEL)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def user_texts(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "user"]


async def test_answer_comes_back_with_usage_and_a_session(
    runner: DroidRunner, api: MockOpenAIChat, workdir: str
) -> None:
    response = await runner.complete(request("Say hello", workdir))

    assert response.content == DEFAULT_TEXT and response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.session_id and response.model == "custom:Mock-0"
    (sent,) = api.chat_requests
    body = sent["json"]
    assert body["model"] == "mock-model" and body["stream"] is True
    assert not body.get("tools")  # the model was offered no tool at all
    assert any("Say hello" in text for text in user_texts(body))
    await assert_no_processes_in(workdir)


async def test_shell_tool_and_hooks_do_not_run_by_default(
    runner: DroidRunner, api: MockOpenAIChat, workdir: str, env: dict[str, str]
) -> None:
    # Even a command the model calls low risk, which droid's own default mode would run...
    settings_file = Path(env["HOME"]) / ".factory" / "settings.json"
    settings = json.loads(settings_file.read_text())
    # ...and the user's own hooks, which run commands at the start and end of a session.
    hook = [{"hooks": [{"type": "command", "command": f"touch {workdir}/hook-ran"}]}]
    settings["hooks"] = {"SessionStart": hook, "Stop": hook}
    settings_file.write_text(json.dumps(settings))
    api.scenario = "tool_use"
    api.tool_name = "Execute"
    api.tool_arguments = dict(LOW_RISK_TOUCH)

    response = await runner.complete(request("Create a file", workdir))

    assert not (Path(workdir) / MARKER).exists()
    assert not (Path(workdir) / "hook-ran").exists()
    assert json.loads(settings_file.read_text()) == settings  # the user's settings are left as they were
    kinds = [event.kind for event in response.agent_events]
    assert kinds == ["tool_use", "permission_denied"]
    assert all(not r["json"].get("tools") for r in api.chat_requests)
    await assert_no_processes_in(workdir)


async def test_a_named_session_continues_through_fork(runner: DroidRunner, api: MockOpenAIChat, workdir: str) -> None:
    first = await runner.complete(request("My name is Ann", workdir))
    history = [llmrun.Message.user("My name is Ann"), llmrun.Message.assistant(first.content)]
    follow_up = ChatRequest(
        messages=[*history, llmrun.Message.user("What is my name?")],
        session_id=first.session_id,
        model=MODEL,
        cwd=workdir,
        timeout=RUN_LIMIT,
    )
    second = await runner.complete(follow_up)

    assert second.content == DEFAULT_TEXT
    assert second.session_id and second.session_id != first.session_id  # a fork is a new session
    texts = user_texts(api.chat_requests[-1]["json"])
    assert any("My name is Ann" in text for text in texts)  # from droid's copy of the session
    assert sum("What is my name?" in text for text in texts) == 1
    await assert_no_processes_in(workdir)


async def test_warm_session_answers_two_turns_in_one_process_locked_down(
    runner: DroidRunner, api: MockOpenAIChat, workdir: str
) -> None:
    async with runner.session(model=MODEL, cwd=workdir, timeout=RUN_LIMIT) as session:
        first = await session.complete("My name is Ann")
        pids = session.pids()
        api.scenario = "tool_use"
        api.tool_name = "Execute"
        api.tool_arguments = dict(LOW_RISK_TOUCH)
        second = await session.complete("Create a file")
        assert session.pids() == pids and pids

    assert first.content == DEFAULT_TEXT and first.session_id == second.session_id == session.id
    assert not (Path(workdir) / MARKER).exists()
    assert [e.kind for e in second.agent_events][:2] == ["tool_use", "permission_denied"]
    texts = user_texts(api.chat_requests[-1]["json"])
    assert any("My name is Ann" in text for text in texts) and any("Create a file" in text for text in texts)
    assert {r["json"]["model"] for r in api.chat_requests} == {"mock-model"}
    await assert_no_processes_in(workdir)


def test_chat_command_401_is_an_authentication_error(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "droid", "-m", MODEL, "--timeout", str(RUN_LIMIT), "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=RUN_LIMIT + 30,
    )

    assert done.returncode == llmrun.AuthenticationError.exit_code, done.stderr
    assert "Incorrect API key" in done.stderr
    assert done.stdout == ""
