"""End to end: llmrun's GptmeRunner driving the real `gptme` offline.

gptme's direct generation (`gptme-util llm generate --output-format json`) talks to
OPENAI_BASE_URL with the Responses API and sends `stream` unset, so the mock here is
tests/mock_responses.py answering such a request with the whole response object, as the
real service does. Each test runs in a throwaway HOME with a fake key. Run them inside a
loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_gptme.py'

They are skipped when `gptme` is not installed (CI installs it with `pip install gptme`,
in a virtualenv of its own: scripts/install-python-tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest, Message
from llmrun.errors import AuthenticationError
from llmrun.runners.gptme import GptmeRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mock_responses
from mock_openai_chat import MockOpenAIChat
from mock_responses import DEFAULT_TEXT, MockResponses
from realcli import _isolated_home, assert_no_processes_in, become, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parent.parent


class _WholeResponseHandler(mock_responses._Handler):
    """Answers a request without `stream` with the whole response object (JSON)."""

    def _stream(self, answer: Any, scenario: str) -> None:
        body = self.mock.requests[-1]["json"] or {}
        if body.get("stream"):
            super()._stream(answer, scenario)
            return
        output = [item.done for item in answer.items]
        self._send_json(200, answer._response("completed", output, answer.usage))


class MockWholeResponses(MockResponses):
    def __init__(self, scenario: str = "text") -> None:
        mock_responses.LoopbackMock.__init__(
            self, _WholeResponseHandler, scenario=scenario, token_delay=0.0, text=DEFAULT_TEXT, thread_name="mock-whole"
        )
        self.url += "/v1"


def gptme_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """A throwaway HOME, a fake key, the mock as the OpenAI base URL, gptme on PATH."""
    binary = shutil.which("gptme")
    assert binary is not None
    path = os.pathsep.join([str(Path(binary).parent), "/usr/bin", "/bin"])
    return {
        **_isolated_home(tmp_path),
        "PATH": path,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": base_url,
        "GPTME_LLM_MAX_RETRIES": "1",
    }


@pytest.fixture
def api() -> Iterator[MockWholeResponses]:
    if shutil.which("gptme") is None:
        pytest.skip("gptme is not installed (CI installs it with: pip install gptme)")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    with MockWholeResponses() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockWholeResponses) -> dict[str, str]:
    return become(monkeypatch, tmp_path, gptme_env(tmp_path, api.url))


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    path = tmp_path / "work"
    path.mkdir()
    return str(path)


async def test_answer_usage_and_no_tools(env: dict[str, str], api: MockWholeResponses, workdir: str) -> None:
    request = ChatRequest(
        messages=[Message.system("You are terse."), Message.user("Say héllo 日本語")],
        model="openai/mock-model",
        cwd=workdir,
        timeout=200,
    )
    response = await GptmeRunner().complete(request)

    assert response.content == DEFAULT_TEXT
    assert response.usage.input_tokens == 12 and response.usage.output_tokens == 7
    assert response.session_id
    (sent,) = api.responses_requests
    body = sent["json"]
    assert body["input"] == [{"role": "user", "content": "Say héllo 日本語"}]
    assert body["instructions"] == "You are terse."
    assert "tools" not in body  # gptme's shell, files and Python are never offered
    await assert_no_processes_in(workdir)


async def test_temperature_and_max_tokens_reach_the_api_and_top_p_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockWholeResponses, workdir: str
) -> None:
    # gptme leaves temperature out for reasoning models, unknown ones (mock-model) included:
    # gpt-4o is a known model without reasoning, which gptme asks over Chat Completions
    # (`api` is here for its skips only).
    with MockOpenAIChat() as chat:
        become(monkeypatch, tmp_path, gptme_env(tmp_path, chat.base_url))
        request = ChatRequest.of(
            "Say hi", model="openai/gpt-4o", cwd=workdir, temperature=0.3, max_tokens=77, top_p=0.5, timeout=200
        )
        response = await GptmeRunner().complete(request)
        body = chat.chat_requests[-1]["json"]

    assert response.content == DEFAULT_TEXT
    assert (body["temperature"], body["max_tokens"]) == (0.3, 77)
    assert body.get("top_p") != 0.5  # gptme has no way to take it: its own default went
    assert response.warnings == ["ignored parameter top_p: gptme has no way to set it"]


async def test_shell_tool_does_not_run_when_the_model_asks(
    env: dict[str, str], api: MockWholeResponses, workdir: str
) -> None:
    api.scenario = "tool_use"  # the mock answers with a call of a shell tool
    runner = GptmeRunner()
    response = await runner.complete(ChatRequest.of("run a command", model="openai/mock-model", cwd=workdir))

    # gptme shows the call as text; nothing runs it and no result goes back to the model.
    assert response.content.startswith("I will run a command.")
    assert "Tool finished" not in response.content
    assert len(api.responses_requests) == 1
    assert "tools" not in api.responses_requests[0]["json"]
    await assert_no_processes_in(workdir)


async def test_401_is_authentication_error(env: dict[str, str], api: MockWholeResponses, workdir: str) -> None:
    api.scenario = "http_401"
    with pytest.raises(llmrun.AuthenticationError) as caught:
        await GptmeRunner().complete(ChatRequest.of("Say hi", model="openai/mock-model", cwd=workdir))
    assert "Incorrect API key" in str(caught.value) and caught.value.process_exit_code == 1
    await assert_no_processes_in(workdir)


def test_command_against_401_exits_with_the_auth_code(
    env: dict[str, str], api: MockWholeResponses, workdir: str
) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "gptme", "-m", "openai/mock-model", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=200,
    )
    assert done.returncode == AuthenticationError.exit_code, done.stderr
    assert "Incorrect API key" in done.stderr
