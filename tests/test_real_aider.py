"""End to end: llmrun's AiderRunner driving the real `aider` against tests/mock_openai_chat.py.

The tests run the installed aider (CI: `scripts/install-python-tools`, which installs
`aider-chat` in a virtualenv of its own, Python < 3.13) in a throwaway HOME, with the mock
on 127.0.0.1 as its OpenAI base URL and a fake key. Run them inside a loopback-only
network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_aider.py'

They are skipped when `aider` is not installed, and outside such a namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.aider import AiderRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, SLOW_WORDS, MockOpenAIChat
from realcli import _INHERITED, _isolated_home, assert_no_processes_in, become, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 180.0  # aider starts in 5-15 s, but the machine may be busy
INSTALL = "pipx install aider-chat (Python < 3.13; CI: scripts/install-python-tools)"
MODEL = "openai/mock-model"


@pytest.fixture(scope="module", autouse=True)
def aider_binary() -> str:
    path = shutil.which("aider")
    if path is None:
        pytest.skip(f"aider is not installed (install it with: {INSTALL})")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    return path


def aider_env(tmp_path: Path, base_url: str | None) -> dict[str, str]:
    """Child environment for the real `aider`: a throwaway HOME, the mock as OpenAI's API."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    if base_url is not None:
        env.update({"OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "sk-test"})
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, aider_env(tmp_path, api.base_url))


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    fields.setdefault("stall_timeout", RUN_LIMIT)
    fields.setdefault("model", MODEL)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


async def test_answer_streams_back_with_usage(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "slow"
    runner = AiderRunner()
    async with aclosing(runner.stream(request("Count slowly to six", workdir, system="Answer tersely."))) as stream:
        chunks = [chunk async for chunk in stream]
    deltas = [c.delta for c in chunks if c.delta]
    assert "".join(deltas) == "".join(SLOW_WORDS)
    assert len(deltas) > 1  # token by token, not the whole answer at the end
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.session_id
    assert last.usage is not None and last.usage.input_tokens > 0 and last.usage.output_tokens > 0
    body = api.chat_requests[-1]["json"]
    assert "tools" not in body
    user = body["messages"][-1]["content"]
    assert "Answer tersely." in user and "Count slowly to six" in user
    assert os.listdir(workdir) == []  # no history files, no repository, no edits
    await assert_no_processes_in(workdir)


async def test_aiders_own_configured_model_is_kept(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    # No model asked for: the one of aider's own config file runs, and the response names it.
    Path(env["HOME"], ".aider.conf.yml").write_text(f"model: {MODEL}\n")
    response = await AiderRunner().complete(request("Say hello", workdir, model=None))

    assert response.content == DEFAULT_TEXT
    assert api.chat_requests[-1]["json"]["model"] == MODEL.removeprefix("openai/")
    assert response.model == MODEL
    await assert_no_processes_in(workdir)


async def test_sampling_parameters_reach_the_api(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    asked = {"temperature": 0.3, "max_tokens": 77, "top_p": 0.5, "seed": 7}
    req = request("Say hello", workdir, frequency_penalty=0.25, presence_penalty=-0.5, strict_params=True, **asked)
    response = await AiderRunner().complete(req)

    assert response.content == DEFAULT_TEXT and response.warnings == []
    body = api.chat_requests[-1]["json"]
    assert {name: body.get(name) for name in asked} == asked  # over aider's own temperature of 0
    assert (body.get("frequency_penalty"), body.get("presence_penalty")) == (0.25, -0.5)
    assert os.listdir(workdir) == []
    await assert_no_processes_in(workdir)


async def test_aider_runs_no_command_by_default(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    # An aider command in the prompt, and a shell block in the reply: neither may run.
    api.text = "Run this:\n\n```bash\ntouch from-reply\n```\n"
    response = await AiderRunner().complete(request("/run touch from-prompt", workdir))
    assert "touch from-reply" in response.content
    assert os.listdir(workdir) == []
    assert "/run touch from-prompt" in api.chat_requests[-1]["json"]["messages"][-1]["content"]
    await assert_no_processes_in(workdir)


async def test_chat_command_types_a_401(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_401"
    result = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "aider", "-m", MODEL, "say hello"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=dict(env, PYTHONPATH=str(ROOT)),  # this checkout's llmrun, wherever the run is
        timeout=RUN_LIMIT + 60,
    )
    assert result.returncode == llmrun.AuthenticationError.exit_code, result.stderr
    assert "Incorrect API key provided" in result.stderr
    await assert_no_processes_in(workdir)


async def test_no_key_fails_at_once_instead_of_waiting_for_a_browser_login(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workdir: str
) -> None:
    become(monkeypatch, tmp_path, aider_env(tmp_path, None))
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await AiderRunner().complete(request("say hello", workdir, model=None))
    assert "no model or API key" in str(caught.value)
    await assert_no_processes_in(workdir)


async def test_allow_tools_lets_aider_edit_a_file(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    (Path(workdir) / "hello.txt").write_text("old\n")
    api.text = "hello.txt\n```\nnew content from mock\n```\n"
    response = await AiderRunner().complete(
        request(
            "rewrite hello.txt",
            workdir,
            allow_tools=True,
            options={"edit_format": "whole", "extra_args": ["--file=hello.txt"]},
        )
    )
    assert (Path(workdir) / "hello.txt").read_text() == "new content from mock\n"
    assert DEFAULT_TEXT not in response.content and "new content from mock" in response.content
    await assert_no_processes_in(workdir)
