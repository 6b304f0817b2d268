"""End to end: llmrun's KiloRunner driving the real `kilo` against tests/mock_openai_chat.py.

Every test runs the installed Kilo Code CLI (CI installs it with
`npm install -g @kilocode/cli@7.7.7`) in a throwaway HOME (`kilo_env` below), with the mock
OpenAI Chat Completions API on 127.0.0.1 as provider `mock` in KILO_CONFIG_CONTENT and a
fake key. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_kilo.py'

They are skipped when `kilo` is absent or the network is not loopback-only. Kilo starts
slowly (10-45 s on a busy machine), so each run gets minutes, and no test measures time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.kilo import KiloRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, MockOpenAIChat
from realcli import assert_no_processes_in, become, kilo_env, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "npm install -g @kilocode/cli@7.7.7"  # 7.8.1's Linux package is missing from npm
RUN_LIMIT = 240.0  # far above kilo's start-up on a loaded machine; a hang still fails
MARKER = "mock-tool-ran"
SHELL_CALL = {"command": f"echo {MARKER} > marker.txt; echo {MARKER}", "description": "Leave a marker"}
WRITE_TOOLS = {"bash", "edit", "write", "task", "webfetch", "background_process", "schedule_wakeup"}


@pytest.fixture(scope="module", autouse=True)
def kilo_binary() -> str:
    path = shutil.which("kilo")
    if path is None:
        pytest.skip(f"kilo is not installed (CI installs it with: {INSTALL})")
    if not loopback_only():
        pytest.skip("real tools run only in a loopback-only network namespace (unshare -n)")
    return path


@pytest.fixture
def api() -> Any:
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, kilo_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> KiloRunner:
    made = llmrun.get_runner("kilo")
    assert isinstance(made, KiloRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def user_texts(body: dict[str, Any]) -> list[str]:
    """The user messages' first text part (kilo adds its `<environment_details>` as a second)."""
    texts = []
    for message in body["messages"]:
        if message.get("role") == "user":
            content = message["content"]
            texts.append(content if isinstance(content, str) else content[0]["text"])
    return texts


def offered_tools(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools") or []}


# --- one-shot runs -------------------------------------------------------------------------------


async def test_an_answer_streams_back_with_usage_and_session(
    runner: KiloRunner, api: MockOpenAIChat, workdir: str
) -> None:
    prompt = '-a prompt with a leading dash and "quotes"'
    chunks = [chunk async for chunk in runner.stream(request(prompt, workdir))]

    assert "".join(c.delta for c in chunks) == DEFAULT_TEXT
    final = chunks[-1]
    assert final.is_final and final.finish_reason == "stop"
    assert final.usage and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.session_id and final.session_id.startswith("ses_")
    assert len(api.chat_requests) == 1
    assert user_texts(api.chat_requests[0]["json"]) == [prompt]  # whole, from stdin, unquoted
    await assert_no_processes_in(workdir)


async def test_sampling_parameters_reach_the_api(
    runner: KiloRunner, api: MockOpenAIChat, workdir: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = json.loads(env["KILO_CONFIG_CONTENT"])
    config["provider"]["mock"]["models"]["mock-model"]["temperature"] = True  # kilo sends none otherwise
    monkeypatch.setenv("KILO_CONFIG_CONTENT", json.dumps(config))

    response = await runner.complete(request("Say hello", workdir, temperature=0.3, max_tokens=77, top_p=0.5, seed=7))

    assert response.content == DEFAULT_TEXT
    body = api.chat_requests[-1]["json"]
    assert (body.get("temperature"), body.get("max_tokens"), body.get("top_p")) == (0.3, 77, 0.5)
    assert "seed" not in body
    assert response.warnings == ["ignored parameter seed: Kilo Code has no way to set it"]
    await assert_no_processes_in(workdir)


async def test_the_shell_tool_does_not_run_by_default(
    runner: KiloRunner, api: MockOpenAIChat, workdir: str, env: dict[str, str]
) -> None:
    # A user's kilo.json that allows everything, for kilo's default agent too.
    config = Path(env["XDG_CONFIG_HOME"]) / "kilo" / "kilo.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    rules = {"*": "allow", "bash": "allow", "edit": "allow"}
    # With "$schema" in it: kilo itself adds that line to a config file that lacks it.
    user = {"$schema": "https://app.kilo.ai/config.json", "permission": rules, "agent": {"code": {"permission": rules}}}
    config.write_text(json.dumps(user, indent=2))
    before = config.read_bytes()
    api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL

    response = await runner.complete(request("Leave a marker", workdir))

    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    use, result = response.agent_events
    assert (use.name, result.kind, result.is_error) == ("bash", "tool_result", True)
    offered = offered_tools(api.chat_requests[0]["json"])
    assert "read" in offered and not WRITE_TOOLS & offered, offered
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")
    assert config.read_bytes() == before  # the user's settings are never edited
    await assert_no_processes_in(workdir)


async def test_retries_of_a_500_are_bounded(runner: KiloRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_500"
    with pytest.raises(llmrun.ServiceUnavailable) as caught:
        await runner.complete(request("hi", workdir))

    assert "The server had an error" in str(caught.value) and caught.value.process_exit_code == 1
    assert len(api.chat_requests) == 3  # KILO_SESSION_RETRY_LIMIT=2: the first try and two retries
    await assert_no_processes_in(workdir)


def test_chat_command_says_what_a_401_means(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "kilo", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=RUN_LIMIT + 60,
    )

    assert done.returncode == llmrun.AuthenticationError.exit_code, done.stderr
    assert "Incorrect API key" in done.stderr and "kilo auth login" in done.stderr
    assert done.stdout == ""
    assert len(api.chat_requests) == 1


# --- a warm session over ACP ---------------------------------------------------------------------


async def test_a_warm_session_remembers_and_refuses_the_shell(
    runner: KiloRunner, api: MockOpenAIChat, workdir: str
) -> None:
    async with runner.session(cwd=workdir, timeout=RUN_LIMIT) as session:
        first = await session.complete("My name is Ann")
        assert first.content == DEFAULT_TEXT
        pids = set(session.pids())
        api.scenario, api.tool_name, api.tool_arguments = "tool_use", "bash", SHELL_CALL
        second = await session.complete("Leave a marker")
        assert second.session_id == first.session_id == session.id
        assert set(session.pids()) == pids  # the same kilo process answered both turns
    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    last = json.dumps(api.chat_requests[-1]["json"])
    assert "My name is Ann" in last  # kilo kept the history
    assert not WRITE_TOOLS & offered_tools(api.chat_requests[-1]["json"])
    await assert_no_processes_in(workdir)
