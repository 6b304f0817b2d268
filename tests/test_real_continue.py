"""End to end: llmrun's ContinueRunner driving the real Continue CLI (`cn`) against tests/mock_openai_chat.py.

The tests run the installed `cn` (CI: `npm install -g @continuedev/cli@1.5.47`) in a throwaway
HOME whose `~/.continue/config.yaml` names the mock on 127.0.0.1 as two `openai` models with
a fake key. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_continue.py'

They are skipped when `cn` is not installed, and outside such a namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.errors import AuthenticationError
from llmrun.runners.continue_cli import STDIN_LIMIT, ContinueRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, MockOpenAIChat
from realcli import _INHERITED, _isolated_home, assert_no_processes_in, become, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 180.0  # cn starts in seconds, but the machine may be busy
INSTALL = "npm install -g @continuedev/cli@1.5.47"


@pytest.fixture(scope="module", autouse=True)
def cn_binary() -> str:
    """Skips the module, with the install command, unless cn can run offline here."""
    path = shutil.which("cn")
    if path is None:
        pytest.skip(f"cn is not installed (CI installs it with: {INSTALL})")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    return path


def continue_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Child environment for the real `cn`: a throwaway HOME whose config names the mock."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    home = Path(env["HOME"]) / ".continue"
    home.mkdir()
    models = "".join(
        f"  - name: {name}\n    provider: openai\n    model: {model}\n"
        f"    apiBase: {base_url}\n    apiKey: sk-test\n    roles: [chat]\n"
        for name, model in (("mock", "mock-model"), ("mock-large", "mock-model-large"))
    )
    (home / "config.yaml").write_text(f"name: mock-assistant\nversion: 0.0.1\nschema: v1\nmodels:\n{models}")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, continue_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> ContinueRunner:
    made = llmrun.get_runner("continue")
    assert isinstance(made, ContinueRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    fields.setdefault("stall_timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], str)]


async def test_answer_comes_back_from_the_chosen_model_and_a_fork_continues(
    runner: ContinueRunner, api: MockOpenAIChat, env: dict[str, str], workdir: str
) -> None:
    first = await runner.complete(request("My name is Ann", workdir, model="mock-large", system="Answer tersely."))

    assert first.content == DEFAULT_TEXT and first.finish_reason == "stop"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    body = api.chat_requests[-1]["json"]
    assert body["model"] == "mock-model-large"
    assert not body.get("tools")  # every tool taken away
    assert "Answer tersely." in body["messages"][0]["content"]
    assert user_texts(body) == ["My name is Ann"]
    assert first.session_id
    saved = Path(env["HOME"]) / ".continue" / "sessions" / f"{first.session_id}.json"
    assert saved.is_file()

    history = [Message.user("My name is Ann"), Message.assistant(first.content), Message.user("What is my name?")]
    second = await runner.complete(ChatRequest(messages=history, session_id=first.session_id, cwd=workdir))
    assert second.content == DEFAULT_TEXT
    assert user_texts(api.chat_requests[-1]["json"]) == ["My name is Ann", "What is my name?"]
    await assert_no_processes_in(workdir)


async def test_sampling_parameters_reach_the_api(runner: ContinueRunner, api: MockOpenAIChat, workdir: str) -> None:
    asked = {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7}
    response = await runner.complete(
        request("Say hello", workdir, frequency_penalty=0.25, presence_penalty=-0.5, strict_params=True, **asked)
    )

    assert response.content == DEFAULT_TEXT and response.warnings == []
    body = api.chat_requests[-1]["json"]
    assert {name: body.get(name) for name in asked} == asked
    assert (body.get("frequency_penalty"), body.get("presence_penalty")) == (0.25, -0.5)
    await assert_no_processes_in(workdir)


async def test_a_prompt_larger_than_a_pipe_arrives_whole(
    runner: ContinueRunner, api: MockOpenAIChat, workdir: str
) -> None:
    prompt = "-first line\n" + "long " * (2 * STDIN_LIMIT // 5) + "\nlast line"
    response = await runner.complete(request(prompt, workdir))

    assert response.content == DEFAULT_TEXT
    assert user_texts(api.chat_requests[-1]["json"])[-1].strip() == prompt
    await assert_no_processes_in(workdir)


async def test_the_shell_tool_does_not_run_by_default(
    runner: ContinueRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "tool_use"
    api.tool_name = "Bash"
    api.tool_arguments = {"command": "touch created-by-mock.txt"}
    try:
        await runner.complete(request("create a file", workdir))
    except llmrun.OutputParseError:
        pass  # cn may end the turn silently on a call of a tool it does not have

    assert not (Path(workdir) / "created-by-mock.txt").exists()
    assert not api.chat_requests[0]["json"].get("tools")
    await assert_no_processes_in(workdir)


def test_command_against_a_401_exits_with_the_auth_error_code(
    env: dict[str, str], api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "cn", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=RUN_LIMIT + 60,
    )

    assert done.returncode == AuthenticationError.exit_code, done.stderr
    assert "401" in done.stderr and "Incorrect API key" in done.stderr
    assert json.dumps(api.chat_requests[-1]["json"]["messages"][-1]["content"]) == '"Say hi"'
