"""Warm sessions on the real tools, each against its loopback mock API.

For every warm runner whose binary is installed: a conversation runs in one tool process
(found in the process table) that keeps the history between turns (the mock's second
request carries the first turn); a shell command the model asks for is refused by default;
an interrupt ends the answer and the next turn works in the same process; closing the
session leaves nothing. Skips, with the install command, where a tool is absent.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun.process import group_members

sys.path.insert(0, str(Path(__file__).parent))
import mock_gemini
import mockapi
from realcli import assert_no_processes_in, become, loopback_only, require_binary
from warmtools import WARM_TOOLS, WarmTool

pytestmark = pytest.mark.real_cli

MARKER = "mock-tool-ran"
SHELL_CALL = {"command": f"echo {MARKER} > marker.txt; echo {MARKER}", "description": "Leave a marker"}
# Far above any tool's start-up on a loaded machine; a hang still fails in bounded time.
TURN_LIMIT = 240.0


@pytest.fixture(params=WARM_TOOLS, ids=str)
def tool(request: pytest.FixtureRequest) -> WarmTool:
    real: WarmTool = request.param
    require_binary(real.binary)
    if not loopback_only():
        pytest.skip("real tools run only in a loopback-only network namespace (unshare -n)")
    return real


@pytest.fixture
def api(tool: WarmTool) -> Iterator[Any]:
    with tool.mock() as mock:
        yield mock


@pytest.fixture
def runner(tool: WarmTool, api: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> llmrun.Runner:
    become(monkeypatch, tmp_path, tool.env(tmp_path, api))
    return llmrun.get_runner(tool.runner, **tool.settings(api))


def request_texts(api: Any) -> list[str]:
    """Every model request the mock received, as text (titles and other side calls included)."""
    return [json.dumps(entry.get("json") or entry) for entry in api.requests if entry.get("method") != "GET"]


def session_of(runner: llmrun.Runner, workdir: str, **settings: Any) -> Any:
    return runner.session(cwd=workdir, timeout=TURN_LIMIT, **settings)


def process_groups(pids: list[int]) -> set[int]:
    """The process groups of these pids; a short-lived child of the tool (a `git` it ran, say)
    may be gone by the time it is asked."""
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    return groups


async def test_a_conversation_is_one_process_that_remembers(runner: llmrun.Runner, api: Any, workdir: str) -> None:
    async with session_of(runner, workdir) as session:
        first = await session.complete("My name is Ann")
        assert first.content and first.finish_reason == "stop"
        (leader,) = process_groups(session.pids())
        second = await session.complete("What is my name?")
        assert second.content and second.finish_reason == "stop"
        assert second.session_id == first.session_id == session.id
        assert group_members(leader) and process_groups(session.pids()) == {leader}  # the same process
        last = request_texts(api)[-1]
        assert "What is my name?" in last and "My name is Ann" in last  # the tool kept the history
    await assert_no_processes_in(workdir)


async def test_a_shell_command_is_refused_by_default(
    tool: WarmTool, runner: llmrun.Runner, api: Any, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tool.runner == "claude_code":
        monkeypatch.setattr(mockapi, "TOOL_INPUT", dict(SHELL_CALL))
    elif tool.runner == "gemini":
        monkeypatch.setattr(mock_gemini, "TOOL_INPUT", dict(SHELL_CALL))
    elif tool.runner != "codex":  # codex's mock asks for a file of its own: tool_write
        api.tool_name, api.tool_arguments = "bash", dict(SHELL_CALL)
    api.scenario = "tool_write" if tool.runner == "codex" else "tool_use"
    async with session_of(runner, workdir) as session:
        response = await session.complete("Leave a marker file")
        assert response.finish_reason in ("stop", "tool_calls")
    assert not (Path(workdir) / "marker.txt").exists(), "the shell command ran"
    assert not (Path(workdir) / "codex-created.txt").exists(), "the file was written"
    await assert_no_processes_in(workdir)


async def test_interrupt_keeps_the_process_and_the_conversation(runner: llmrun.Runner, api: Any, workdir: str) -> None:
    api.scenario, api.token_delay = "slow", 0.5
    async with session_of(runner, workdir) as session:
        await session.start()
        (leader,) = process_groups(session.pids())
        chunks: list[llmrun.ChatChunk] = []
        async with aclosing(session.stream("Count slowly to six")) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                if chunk.delta and len([c for c in chunks if c.delta]) == 1:
                    await session.interrupt()
        assert chunks[-1].finish_reason == "cancelled"
        api.scenario, api.token_delay = "text", 0.0
        after = await session.complete("Say hello")
        assert after.content and after.finish_reason == "stop"
        assert process_groups(session.pids()) == {leader}
    await assert_no_processes_in(workdir)


async def saved(session_id: str | None, text: str, home: Path, within: float = 60.0) -> None:
    """Wait until the tool has written the turn holding `text` to its session file (some create
    the file first and append the turn a moment later; one killed before that has lost it)."""
    assert session_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if any(text in _read(path) for path in home.rglob("*") if session_id[:8] in str(path)):
            return
        await asyncio.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


async def test_a_killed_process_is_replaced_and_the_session_resumed(
    tool: WarmTool, runner: llmrun.Runner, api: Any, workdir: str
) -> None:
    async with session_of(runner, workdir) as session:
        await session.complete("My name is Ann")
        (leader,) = process_groups(session.pids())
        await saved(session.id, "My name is Ann", Path(os.environ["HOME"]))
        os.killpg(leader, 9)
        while group_members(leader):
            await asyncio.sleep(0.05)
        try:
            response = await session.complete("What is my name?")
        except llmrun.SessionNotFound as exc:
            # gemini cannot load a session in the minute it was created (its session file is
            # rewritten then); it says so, and that is the contract's other outcome.
            assert tool.runner == "gemini", exc
            return
        assert response.content and response.finish_reason == "stop"
        assert response.session_id == session.id
        assert process_groups(session.pids()) != {leader}
        assert "My name is Ann" in request_texts(api)[-1]
    await assert_no_processes_in(workdir)
