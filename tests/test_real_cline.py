"""End to end: llmrun's ClineRunner driving the real `cline` against tests/mock_openai_chat.py.

Every test runs the installed Cline CLI (CI installs it with `npm install -g cline`) in a
throwaway HOME where `cline auth -p openai-compatible` saved the mock on 127.0.0.1 as the
provider, with a fake key. Run them inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_real_cline.py'

They are skipped when `cline` is not installed, and outside such a namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun import ChatRequest
from llmrun.runners.cline import ACTING_TOOLS, ClineRunner

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai_chat import DEFAULT_TEXT, SLOW_WORDS, MockOpenAIChat
from realcli import assert_no_processes_in, become, cline_env, loopback_only

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "npm install -g cline"
RUN_LIMIT = 180.0  # far above cline's start-up, even on a busy machine
SLOW_DELAY = 0.15


@pytest.fixture(scope="module", autouse=True)
def cline_binary() -> str:
    found = subprocess.run(["sh", "-c", "command -v cline"], capture_output=True, text=True).stdout.strip()
    if not found:
        pytest.skip(f"cline is not installed (install it with: {INSTALL})")
    if not loopback_only():
        pytest.skip("run inside a loopback-only network namespace (unshare -n)")
    return found


@pytest.fixture
def api():  # type: ignore[no-untyped-def]
    with MockOpenAIChat() as mock:
        yield mock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api: MockOpenAIChat) -> dict[str, str]:
    return become(monkeypatch, tmp_path, cline_env(tmp_path, api.base_url))


@pytest.fixture
def runner(env: dict[str, str]) -> ClineRunner:
    made = llmrun.get_runner("cline")
    assert isinstance(made, ClineRunner)
    return made


def settings_dir(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".cline" / "data" / "settings"


def offered_tools(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools") or []}


def hub_daemons(workdir: str) -> dict[int, str]:
    """pid -> command line of the cline hub daemons started for `workdir` (they name it as --cwd)."""
    found = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            if "--cline-hub-daemon" in cmdline and workdir in cmdline:
                found[int(entry)] = cmdline
    return found


@pytest.fixture(autouse=True)
def no_daemon_outlives_the_test(workdir: str):  # type: ignore[no-untyped-def]
    """Should a run leave a hub daemon (a failing test), it goes with the test."""
    yield
    for pid in hub_daemons(workdir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- one-shot runs ------------------------------------------------------------------------


async def test_answer_streams_and_the_users_settings_stay(
    runner: ClineRunner, api: MockOpenAIChat, env: dict[str, str], workdir: str
) -> None:
    api.scenario, api.token_delay = "slow", SLOW_DELAY
    providers = settings_dir(env) / "providers.json"
    saved = providers.read_bytes()
    deltas: list[str] = []
    chunks = []
    # "hello" alone would be a sub-command in cline's argv; here it goes on stdin.
    req = ChatRequest.of("hello", model="mock-model-large", cwd=workdir, timeout=RUN_LIMIT)
    async with contextlib.aclosing(runner.stream(req)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.delta:
                deltas.append(chunk.delta)

    assert deltas == SLOW_WORDS
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.model == "mock-model-large"
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (12, 7)
    body = api.chat_requests[-1]["json"]
    assert body["model"] == "mock-model-large"
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["hello"]
    assert not offered_tools(body) & set(ACTING_TOOLS)
    # -m did not become the user's saved model, and no global settings file was written.
    assert providers.read_bytes() == saved
    assert not (settings_dir(env) / "global-settings.json").exists()
    assert hub_daemons(workdir) == {}
    await assert_no_processes_in(workdir)


async def test_the_shell_tool_does_not_run_by_default(runner: ClineRunner, api: MockOpenAIChat, workdir: str) -> None:
    api.scenario = "tool_use"
    api.tool_name = "run_commands"
    api.tool_arguments = {"commands": ["touch marker.txt"]}
    response = await runner.complete(ChatRequest.of("Leave a marker", cwd=workdir, timeout=RUN_LIMIT))

    assert not (Path(workdir) / "marker.txt").exists()
    assert response.content.endswith(f"Tool finished: {DEFAULT_TEXT}")
    denied = [e for e in response.agent_events if e.kind == "permission_denied"]
    assert denied and denied[0].name == "run_commands"
    assert "run_commands" not in offered_tools(api.chat_requests[0]["json"])
    await assert_no_processes_in(workdir)


async def test_a_timeout_kills_cline_that_ignores_sigterm(
    runner: ClineRunner, api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "hang"
    with pytest.raises(llmrun.RunnerTimeout):  # the stall limit sits far above cline's start-up
        await runner.complete(ChatRequest.of("Say hi", cwd=workdir, timeout=RUN_LIMIT, stall_timeout=60))
    assert api.chat_requests
    assert hub_daemons(workdir) == {}
    await assert_no_processes_in(workdir)


def test_chat_command_on_401_exits_with_the_authentication_code(
    env: dict[str, str], api: MockOpenAIChat, workdir: str
) -> None:
    api.scenario = "http_401"
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "chat", "-r", "cline", "Say hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        cwd=workdir,
        timeout=RUN_LIMIT + 60,
    )

    assert done.returncode == llmrun.AuthenticationError.exit_code, (done.stdout, done.stderr)
    assert "Incorrect API key" in done.stderr
    assert len(api.chat_requests) == 1
    assert hub_daemons(workdir) == {}


# --- a warm session over ACP --------------------------------------------------------------


async def test_warm_session_answers_two_turns_in_one_process(
    runner: ClineRunner, api: MockOpenAIChat, env: dict[str, str], workdir: str
) -> None:
    saved = (settings_dir(env) / "providers.json").read_bytes()
    async with runner.session(cwd=workdir, timeout=RUN_LIMIT) as session:
        first = await session.complete("My name is Ann")
        (leader,) = {os.getpgid(pid) for pid in session.pids()}
        second = await session.complete("What is my name?")
        assert {os.getpgid(pid) for pid in session.pids()} == {leader}

    assert first.content == second.content == DEFAULT_TEXT
    assert first.session_id and second.session_id == first.session_id == session.id
    bodies = [r["json"] for r in api.chat_requests]
    assert len(bodies) == 2
    # The saved model, chosen over the protocol (cline's ACP default would be its own catalog's).
    assert {body["model"] for body in bodies} == {"mock-model"}
    assert [m["content"] for m in bodies[1]["messages"] if m["role"] == "user"][-1] == "What is my name?"
    assert "My name is Ann" in json.dumps(bodies[1]["messages"])
    assert not any(offered_tools(body) & set(ACTING_TOOLS) for body in bodies)
    assert (settings_dir(env) / "providers.json").read_bytes() == saved
    await assert_no_processes_in(workdir)

    # A new process loads the session over the protocol.
    async with runner.session(cwd=workdir, timeout=RUN_LIMIT, resume=session.id) as resumed:
        third = await resumed.complete("And again?")
    assert third.content == DEFAULT_TEXT and resumed.id == session.id
    assert "My name is Ann" in json.dumps(api.chat_requests[-1]["json"]["messages"])
    assert hub_daemons(workdir) == {}
    await assert_no_processes_in(workdir)
