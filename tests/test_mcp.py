"""llmrun as an MCP server, through the official MCP SDK's client.

Over stdio, each test starts `python -m llmrun mcp` as an MCP client would, with the claude
fake as the `claude_code` runner's binary (the fake is chosen through the environment,
which the server hands on). Over streamable HTTP, the client talks to the daemon's /mcp
(the real app under uvicorn on 127.0.0.1), where runs go through the daemon's engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from llmrun.types import ChatRequest

from .conftest import ROOT, FakeRun, prompt_in, still_alive
from .server_support import SESSION, LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = pytest.mark.timeout(90)

TEXT = "Hello from mock"
# What real MCP clients (Claude Code, Gemini CLI, Codex) speak today: the initialize handshake.
MODE = "legacy"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def stdio(*args: str) -> Client:
    """`llmrun mcp ARGS` as an MCP client starts it, with this test's environment (the fake's)."""
    command = [sys.executable, "-m", "llmrun", "mcp", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this llmrun, from whatever directory
    return Client(StdioServerParameters(command=command[0], args=command[1:], env=env), mode=MODE)


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def survivors(pids: list[int], within: float = 30.0) -> list[int]:
    """The pids still alive after waiting up to `within` seconds, the event loop serving meanwhile."""
    with anyio.move_on_after(within):
        while still_alive(pids, within=0):
            await anyio.sleep(0.05)
    return still_alive(pids, within=0)


def runs(claude: FakeRun) -> list[dict[str, Any]]:
    """The fake's answering runs (not its --version checks), oldest first."""
    return [inv for inv in claude.invocations() if "--output-format" in inv["argv"]]


# --- stdio --------------------------------------------------------------------------------


async def test_stdio_lists_the_three_tools() -> None:
    async with stdio() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert set(tools) == {"prompt", "list_runners", "health"}
    prompt = tools["prompt"]
    assert prompt.input_schema["required"] == ["prompt"]
    assert {"runner", "model", "session", "cwd", "system"} <= set(prompt.input_schema["properties"])
    assert prompt.output_schema is not None
    assert {"answer", "session", "usage", "runner", "model", "finish_reason"} <= set(prompt.output_schema["properties"])
    assert "ctx" not in prompt.input_schema["properties"]
    assert prompt.annotations is not None and prompt.annotations.read_only_hint is True  # agent tools off


async def test_stdio_prompt_answers_then_continues_the_tool_session(claude: FakeRun, workdir: str) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    async with stdio("--runner", "claude_code") as client:
        first = await client.call_tool(
            "prompt", {"prompt": "What is 2+2?", "system": "Be terse", "cwd": workdir}, progress_callback=on_progress
        )
        answer = structured(first)
        second = structured(await client.call_tool("prompt", {"prompt": "And 3+3?", "session": answer["session"]}))

    assert text_of(first) == TEXT
    assert answer["answer"] == TEXT
    assert answer["runner"] == "claude_code"
    assert answer["session"] == SESSION  # the tool's own session id, as `llmrun chat --session` takes it
    assert answer["finish_reason"] == "stop"
    assert (answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]) == (12, 7)
    assert progress and "Claude Code" in (progress[0][1] or "")
    one, two = runs(claude)
    assert prompt_in(one["stdin"]).rstrip().endswith("What is 2+2?")
    argv = one["argv"]
    assert argv[argv.index("--tools") + 1] == ""  # the asked tool's agent tools stay off
    assert argv[argv.index("--system-prompt") + 1] == "Be terse"
    assert one["cwd"] == workdir
    assert not any(arg.startswith("--resume") for arg in argv)
    assert f"--resume={SESSION}" in two["argv"]
    assert prompt_in(two["stdin"]).rstrip().endswith("And 3+3?")
    assert second["session"] == SESSION


async def test_stdio_allow_tools_lifts_the_lockdown(claude: FakeRun) -> None:
    async with stdio("--runner", "claude_code", "--allow-tools") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        structured(await client.call_tool("prompt", {"prompt": "hi"}))

    assert "--tools" not in runs(claude)[0]["argv"]
    annotations = tools["prompt"].annotations
    assert annotations is not None and annotations.read_only_hint is False


async def test_stdio_default_runner_comes_from_the_environment(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRUN_RUNNER", "claude")
    async with stdio() as client:
        answer = structured(await client.call_tool("prompt", {"prompt": "hi", "model": "haiku"}))
        listing = structured(await client.call_tool("list_runners", {}))

    assert answer["runner"] == "claude_code"
    argv = runs(claude)[0]["argv"]
    assert argv[argv.index("--model") + 1] == "haiku"
    assert listing["default_runner"] == "claude"
    claude_code = next(r for r in listing["runners"] if r["name"] == "claude_code")
    assert claude_code["installed"] is True and claude_code["sessions"] is True
    assert claude_code["display_name"] == "Claude Code"
    assert claude_code["models"] and claude_code["default_model"] is None  # claude's own choice


async def test_stdio_health_of_one_runner(claude: FakeRun) -> None:
    async with stdio() as client:
        health = structured(await client.call_tool("health", {"runner": "claude"}))

    assert health["ok"] is True
    (report,) = health["reports"]
    assert (report["runner"], report["status"]) == ("claude_code", "ok")


async def test_stdio_missing_tool_is_a_tool_error_with_the_install_hint(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMRUN_CLAUDE_CODE_BIN", str(tmp_path / "no-such" / "claude"))
    async with stdio("--runner", "claude_code") as client:
        failed = await client.call_tool("prompt", {"prompt": "hi"})
        health = structured(await client.call_tool("health", {"runner": "claude_code"}))
        listing = structured(await client.call_tool("list_runners", {}))

    assert failed.is_error
    message = text_of(failed)
    assert message.startswith("BinaryNotFound: Claude Code is not installed")
    assert "hint: install it with `npm" in message
    assert health["ok"] is False and health["reports"][0]["status"] == "not_installed"
    assert next(r for r in listing["runners"] if r["name"] == "claude_code")["installed"] is False
    assert not runs(claude)


async def test_stdio_tool_failures_and_bad_arguments_are_tool_errors(claude: FakeRun, tmp_path: Path) -> None:
    claude.scenario("mock-401-stream")
    async with stdio("--runner", "claude_code") as client:
        refused = await client.call_tool("prompt", {"prompt": "hi"})
        unknown = await client.call_tool("prompt", {"prompt": "hi", "runner": "no-such-runner"})
        bad_session = await client.call_tool("prompt", {"prompt": "hi", "session": "--last"})
        bad_cwd = await client.call_tool("prompt", {"prompt": "hi", "cwd": str(tmp_path / "missing")})

    assert refused.is_error and text_of(refused).startswith("AuthenticationError:")
    assert unknown.is_error and text_of(unknown).startswith("RunnerNotFound: unknown runner 'no-such-runner'")
    assert bad_session.is_error and "InvalidRequest" in text_of(bad_session)
    assert bad_cwd.is_error and "is not a directory" in text_of(bad_cwd)
    assert len(runs(claude)) == 1  # only the first reached the tool


async def test_stdio_cancelled_call_kills_the_tool(claude: FakeRun) -> None:
    claude.delay(5)  # seconds before each line: a run left alone would outlive the test's checks
    async with stdio("--runner", "claude_code") as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "prompt", {"prompt": "hi"})
            with anyio.fail_after(60):
                while not runs(claude):
                    await anyio.sleep(0.05)
            group.cancel_scope.cancel()
        (run,) = runs(claude)
        assert await survivors([run["pid"]]) == []
        after = structured(await client.call_tool("list_runners", {}))

    assert after["default_runner"] == "claude_code"  # the server goes on serving


def test_mcp_without_the_sdk_says_how_to_install_it(tmp_path: Path) -> None:
    blocked = "import sys; sys.modules['mcp'] = None; sys.argv = ['llmrun', 'mcp']; from llmrun.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )

    assert done.returncode == 2, done.stderr
    assert "needs the mcp package" in done.stderr
    assert "pip install 'llmrun-cli[mcp]'" in done.stderr
    assert done.stdout == ""


def test_mcp_refuses_an_unknown_default_runner() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmrun", "mcp", "--runner", "no-such-runner"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert done.returncode == 2
    assert "unknown runner 'no-such-runner'" in done.stderr


# --- streamable HTTP at the daemon's /mcp -------------------------------------------------


@asynccontextmanager
async def http(live: LiveServer, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    # The SDK's HTTP client library; a client of one's own is how the SDK takes extra headers.
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http_client:
        transport = streamable_http_client(f"{live.url}/mcp", http_client=http_client)
        async with Client(transport, mode=MODE) as client:
            yield client


async def test_http_prompt_runs_through_the_engine_and_continues_its_conversation(
    claude: FakeRun, tmp_path: Path
) -> None:
    progress: list[str | None] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    with LiveServer(settings(tmp_path)) as live:
        async with http(live) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            first = structured(
                await client.call_tool(
                    "prompt", {"prompt": "What is 2+2?", "runner": "claude_code"}, progress_callback=on_progress
                )
            )
            second = structured(
                await client.call_tool(
                    "prompt", {"prompt": "And 3+3?", "runner": "claude_code", "session": first["session"]}
                )
            )
            unknown = await client.call_tool(
                "prompt", {"prompt": "hi", "runner": "claude_code", "session": "never-started"}
            )
            elsewhere = await client.call_tool(
                "prompt", {"prompt": "hi", "runner": "claude_code", "cwd": str(tmp_path)}
            )

    assert tools == {"prompt", "list_runners", "health"}
    assert first["answer"] == TEXT and first["runner"] == "claude_code"
    assert progress  # streamed in the call's response while the tool ran
    # A conversation the daemon keeps, not the tool's own id: the daemon takes none from clients.
    assert first["session"] and first["session"] != SESSION
    assert second["session"] == first["session"]
    one, two = runs(claude)
    assert not any(arg.startswith("--resume") for arg in one["argv"])
    assert f"--resume={SESSION}" in two["argv"]
    assert two["argv"][two["argv"].index("--tools") + 1] == ""
    assert unknown.is_error and text_of(unknown).startswith("SessionNotFound:")
    # A directory of the client's choosing, whose settings the tool would read: not without --allow-tools.
    assert elsewhere.is_error and "--allow-tools" in text_of(elsewhere)
    assert len(runs(claude)) == 2


async def test_http_runs_take_the_daemons_settings(
    tmp_path: Path, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No tool on PATH: the default runner is the scripted one, found without starting a tool.
    monkeypatch.setenv("PATH", str(tmp_path))
    seen: list[ChatRequest] = []

    def answer(request: ChatRequest) -> str:
        seen.append(request)
        return "scripted answer"

    runner = ScriptedRunner(answer)
    with LiveServer(settings(tmp_path, allow_tools=True), runners={"scripted": runner}) as live:
        async with http(live) as client:
            done = structured(
                await client.call_tool("prompt", {"prompt": "hi", "cwd": workdir})
            )  # the first ready runner
            listing = structured(await client.call_tool("list_runners", {}))
            health = structured(await client.call_tool("health", {"runner": "scripted"}))
        limits = live.state.limiter.stats()

    assert done["answer"] == "scripted answer" and done["runner"] == "scripted"
    assert done["session"]  # the scripted runner keeps sessions, so the daemon keeps the conversation
    assert seen[0].allow_tools is True  # the daemon's allow_tools, as for its other APIs
    assert seen[0].cwd == workdir  # which lets its clients choose the directory
    assert listing["default_runner"] == "scripted"
    assert health["reports"][0]["status"] == "ok"
    assert limits["active"] == 0 and limits["waiting"] == 0  # the slot the run took is back


async def test_http_needs_the_api_key_when_the_daemon_has_one(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path, api_key="sk-llmrun")) as live:
        async with http(live, headers={"Authorization": "Bearer sk-llmrun"}) as client:
            answer = structured(await client.call_tool("prompt", {"prompt": "hi", "runner": "claude_code"}))
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        }
        accept = {"Accept": "application/json, text/event-stream"}
        no_key = httpx.post(f"{live.url}/mcp", json=initialize, headers=accept, timeout=30)
        wrong_key = httpx.post(f"{live.url}/mcp", json=initialize, headers={**accept, "x-api-key": "nope"}, timeout=30)
        web_page = httpx.post(
            f"{live.url}/mcp",
            json=initialize,
            headers={**accept, "Authorization": "Bearer sk-llmrun", "Origin": "https://evil.example"},
            timeout=30,
        )

    assert answer["answer"] == TEXT
    assert no_key.status_code == 401 and wrong_key.status_code == 401
    assert web_page.status_code == 403
    assert len(runs(claude)) == 1


async def test_http_cancelled_call_kills_the_tool(claude: FakeRun, tmp_path: Path) -> None:
    claude.delay(5)  # seconds before each line: a run left alone would outlive the test's checks
    with LiveServer(settings(tmp_path)) as live:
        async with http(live) as client:
            async with anyio.create_task_group() as group:
                group.start_soon(client.call_tool, "prompt", {"prompt": "hi", "runner": "claude_code"})
                with anyio.fail_after(60):
                    while not runs(claude):
                        await anyio.sleep(0.05)
                group.cancel_scope.cancel()
            (run,) = runs(claude)
            assert await survivors([run["pid"]]) == []
            claude.delay(0)
            after = structured(await client.call_tool("prompt", {"prompt": "still there?", "runner": "claude_code"}))
        limits = live.state.limiter.stats()

    assert after["answer"] == TEXT
    assert limits["active"] == 0
