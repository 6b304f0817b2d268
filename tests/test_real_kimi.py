"""End to end: llmrun's KimiRunner driving the real `kimi` against tests/mock_openai_chat.py.

The tests run the installed Kimi CLI (CI: `scripts/install-python-tools`, which installs
`kimi-cli==1.51.0` in a virtualenv of its own) in a throwaway HOME whose
`~/.kimi/config.toml` names the mock on 127.0.0.1 as an `openai_legacy` provider with a
fake key and telemetry off. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_kimi.py'

They are skipped when `kimi` is not installed, when it is the 1.52 tombstone, and outside
such a namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.kimi import KimiRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, MockOpenAIChat
from realcli import _INHERITED, _isolated_home, assert_no_processes_in, become, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 180.0  # kimi starts in a few seconds, but the machine may be busy
INSTALL = "pip install kimi-cli==1.51.0 (Python >= 3.12; CI: scripts/install-python-tools)"
MARKER = "mock-tool-ran"


@pytest.fixture(scope="module", autouse=True)
def kimi_binary() -> str:
    """Skips the module, with the install command, unless a working kimi can run offline."""
    import shutil

    path = shutil.which("kimi")
    if path is None:
        pytest.skip(f"kimi is not installed (install it with: {INSTALL})")
    said = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120).stdout
    if "no longer maintained" in said:
        pytest.skip(f"kimi is the 1.52 tombstone release (install the working one with: {INSTALL})")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    return path


def kimi_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Child environment for the real `kimi`: a throwaway HOME whose config names the mock."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(_isolated_home(tmp_path))
    kimi_dir = Path(env["HOME"]) / ".kimi"
    kimi_dir.mkdir()
    (kimi_dir / "config.toml").write_text(
        'default_model = "mock"\n'
        "telemetry = false\n\n"
        "[providers.mock]\n"
        'type = "openai_legacy"\n'
        f'base_url = "{base_url}"\n'
        'api_key = "sk-test"\n\n'
        "[models.mock]\n"
        'provider = "mock"\n'
        'model = "mock-model"\n'
        "max_context_size = 128000\n"
    )
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, kimi_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> KimiRunner:
    made = llmrun.get_runner("kimi")
    assert isinstance(made, KimiRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    fields.setdefault("stall_timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def offered_tools(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools") or []}


async def test_answer_comes_back_and_the_session_resumes(runner: KimiRunner, api: MockOpenAIChat, workdir: str) -> None:
    first = await runner.complete(request("My name is Ann", workdir, system="Answer tersely."))
    assert first.content == DEFAULT_TEXT
    assert first.finish_reason == "stop" and first.session_id
    assert first.usage is not None and first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    body = api.chat_requests[-1]["json"]
    assert offered_tools(body) == set()  # locked down: kimi's tools are not even offered
    assert "Answer tersely." in body["messages"][0]["content"]  # the system prompt reached the model
    second = await runner.complete(request("What is my name?", workdir, session_id=first.session_id))
    assert second.content == DEFAULT_TEXT and second.session_id == first.session_id
    texts = json.dumps(api.chat_requests[-1]["json"]["messages"])
    assert "My name is Ann" in texts and "What is my name?" in texts  # kimi's own session
    await assert_no_processes_in(workdir)


async def test_shell_tool_does_not_run_by_default(runner: KimiRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "tool_use"
    api.tool_name = "Shell"
    api.tool_arguments = {"command": f"echo {MARKER} > marker.txt"}
    response = await runner.complete(request("run a command", workdir))
    assert not (Path(workdir) / "marker.txt").exists()
    assert MARKER not in response.content
    assert offered_tools(api.chat_requests[0]["json"]) == set()
    await assert_no_processes_in(workdir)


async def test_allow_tools_lets_kimis_shell_run(runner: KimiRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "tool_use"
    api.tool_name = "Shell"
    api.tool_arguments = {"command": f"echo {MARKER} > marker.txt"}
    response = await runner.complete(request("run a command", workdir, allow_tools=True))
    assert (Path(workdir) / "marker.txt").read_text().strip() == MARKER  # print mode approves it unasked
    assert "Shell" in offered_tools(api.chat_requests[0]["json"])
    assert any(c.kind == "tool_use" and c.name == "Shell" for c in response.agent_events)
    await assert_no_processes_in(workdir)


async def test_chat_command_types_a_401(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_401"
    result = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "kimi", "say hello"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=dict(env, PYTHONPATH=str(ROOT)),  # this checkout's llmrun, wherever the run is
        timeout=RUN_LIMIT + 60,
    )
    assert result.returncode == llmrun.AuthenticationError.exit_code, result.stderr
    assert "AuthenticationError: Error code: 401" in result.stderr
    await assert_no_processes_in(workdir)
