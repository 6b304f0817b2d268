"""End to end: llmrun's VibeRunner driving the real `vibe` against tests/mock_openai_chat.py.

The tests run the installed Mistral Vibe (CI: `scripts/install-python-tools`, which
installs `mistral-vibe` in a virtualenv of its own) in a throwaway HOME whose
`~/.vibe/config.toml` names the mock on 127.0.0.1 as a `generic` provider (key in
MOCK_API_KEY, fake) with two model aliases, telemetry and update checks off. Run them
inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_vibe.py'

They are skipped when `vibe` is not installed, and outside such a namespace.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.vibe import VibeRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, MockOpenAIChat
from realcli import assert_no_processes_in, become, loopback_only, vibe_env

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 180.0  # vibe starts in a few seconds (a Rust CLI and a Python app server), but the machine may be busy
INSTALL = "pip install mistral-vibe (Python >= 3.12; CI: scripts/install-python-tools)"
MARKER = "created-by-mock.txt"


@pytest.fixture(scope="module", autouse=True)
def vibe_binary() -> str:
    """Skips the module, with the install command, unless vibe can run here offline."""
    path = shutil.which("vibe")
    if path is None:
        pytest.skip(f"vibe is not installed (install it with: {INSTALL})")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    return path


@pytest.fixture
def api():
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, vibe_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> VibeRunner:
    made = llmrun.get_runner("vibe")
    assert isinstance(made, VibeRunner)
    return made


def request(prompt: str, workdir: str, **fields: Any) -> ChatRequest:
    fields.setdefault("timeout", RUN_LIMIT)
    fields.setdefault("stall_timeout", RUN_LIMIT)
    return ChatRequest.of(prompt, cwd=workdir, **fields)


def user_texts(api: MockOpenAIChat) -> list[str]:
    body = api.chat_requests[-1]["json"]
    return [m["content"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], str)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- answers ------------------------------------------------------------------------------------


async def test_answer_streams_back_and_a_second_turn_resumes_the_session(
    runner: VibeRunner, api: MockOpenAIChat, env: dict[str, str], workdir: str
) -> None:
    config = Path(env["HOME"]) / ".vibe" / "config.toml"
    before = digest(config)
    prompt = "-Say hello, ünïcödé ✓"

    chunks = [chunk async for chunk in runner.stream(request(prompt, workdir, model="large"))]

    assert "".join(c.delta for c in chunks) == DEFAULT_TEXT
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.session_id
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.cost_usd == 0.0
    assert api.chat_requests[-1]["json"]["model"] == "mock-model-large"  # the alias asked for, per run
    assert user_texts(api)[-1].endswith(prompt)  # whole, over stdin
    assert digest(config) == before, "vibe's config was changed"

    again = await runner.complete(request("And again", workdir, session_id=final.session_id))

    assert again.content == DEFAULT_TEXT and again.session_id == final.session_id
    texts = user_texts(api)
    assert texts[-1].endswith("And again") and any(t.endswith(prompt) for t in texts[:-1])
    await assert_no_processes_in(workdir)


async def test_shell_tool_does_not_run_by_default(runner: VibeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "tool_use"
    api.tool_arguments = {"command": f"touch {MARKER}"}

    response = await runner.complete(request("Create a file", workdir))

    assert not (Path(workdir) / MARKER).exists(), "the shell tool ran"
    assert [e.kind for e in response.agent_events] == ["tool_use", "permission_denied"]
    assert response.content.endswith("Tool finished: " + DEFAULT_TEXT)
    await assert_no_processes_in(workdir)


# --- failures -----------------------------------------------------------------------------------


def test_chat_command_against_a_401_says_so(env: dict[str, str], api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "vibe", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=RUN_LIMIT + 60,
    )

    assert done.returncode == llmrun.AuthenticationError.exit_code, done.stderr
    assert "Invalid API key" in done.stderr
    assert len(api.chat_requests) == 1  # not retried


async def test_retries_of_a_429_are_bounded(runner: VibeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "http_429"

    with pytest.raises(llmrun.RateLimitError) as caught:
        await runner.complete(request("Say hi", workdir, options={"retry_seconds": 3}))

    assert caught.value.process_exit_code == 2
    assert "429" in str(caught.value)
    await assert_no_processes_in(workdir)


async def test_a_hung_run_is_stopped_with_its_app_server(runner: VibeRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "hang"

    with pytest.raises(llmrun.RunnerTimeout):
        await runner.complete(request("Say hi", workdir, timeout=90.0))  # far above its start-up

    assert api.chat_requests, "vibe never reached the mock"
    await assert_no_processes_in(workdir, within=15.0)


# --- a warm session (vibe-acp) ------------------------------------------------------------------


async def test_warm_session_keeps_one_conversation_and_refuses_the_shell(
    runner: VibeRunner, api: MockOpenAIChat, workdir: str
) -> None:
    async with runner.session(cwd=workdir, timeout=RUN_LIMIT) as session:
        first = [chunk async for chunk in session.stream("My name is Ann")]
        second = await session.complete("What is my name?")
        api.scenario = "tool_use"
        api.tool_arguments = {"command": f"touch {MARKER}"}
        third = await session.complete("Create a file")

    assert "".join(c.delta for c in first) == DEFAULT_TEXT
    assert len([c for c in first if c.delta]) > 1, "no token deltas over ACP"
    assert first[-1].session_id and second.session_id == first[-1].session_id
    assert second.content == DEFAULT_TEXT and second.usage is not None and second.usage.output_tokens == 7
    answered = [r["json"] for r in api.chat_requests if r["json"].get("tools")]  # not the title requests
    assert any("My name is Ann" in str(m.get("content")) for m in answered[1]["messages"])  # one conversation
    assert not (Path(workdir) / MARKER).exists(), "the shell tool ran"
    # Refused by vibe's own policy (no permission is asked): the call fails.
    assert [(e.kind, e.is_error) for e in third.agent_events] == [("tool_use", False), ("tool_result", True)]
    await assert_no_processes_in(workdir)
