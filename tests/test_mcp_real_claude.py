"""The real Claude Code CLI as an MCP client of `llmrun mcp`.

claude is started with `--mcp-config` naming llmrun's stdio server, whose `claude_code`
runner is the claude fake (so the answer comes from a replayed transcript, offline). claude
itself talks to the mock Anthropic API of tests/mockapi.py, which first answers with a
tool_use of `mcp__llmrun__prompt` and, once the tool's result is back, with a final text:
so claude must start llmrun's server, list its tools, call `prompt` and send its result
back to the model. Skipped when `claude` is not installed (CI installs it).

Run only in a loopback-only network namespace:
    unshare -n sh -c 'ip link set lo up && python3 -m pytest -q tests/test_mcp_real_claude.py'
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import FAKE_BIN, ROOT, prompt_in

# Importable whatever pytest's import mode is, like tests/test_mockapi.py does it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mockapi import MockAnthropic, _Answer, _Block, _text_block
from realcli import assert_no_processes_in, claude_env, loopback_only, require_binary

pytestmark = [pytest.mark.real_cli, pytest.mark.timeout(240)]

TOOL = "mcp__llmrun__prompt"
QUESTION = "Second opinion: is 7 prime?"
BACKEND_TEXT = "Héllo wörld 日本語 🙂"  # what the fake's `multibyte-partial` transcript answers
FINAL = "llmrun's runner has answered."


@pytest.fixture(scope="module", autouse=True)
def claude_binary() -> str:
    binary = require_binary("claude")
    if not loopback_only():
        pytest.skip("run in a loopback-only network namespace: unshare -n sh -c 'ip link set lo up && ...'")
    return binary


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        block
        for message in body.get("messages") or []
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


class AsksLlmrun(MockAnthropic):
    """Answers with a call of llmrun's `prompt` tool; once its result is back, with FINAL."""

    def _answer(self, scenario: str, body: dict[str, Any]) -> _Answer | None:
        model = str(body.get("model") or "claude-mock")
        if tool_results(body):
            return _Answer(model, [_text_block(FINAL)], "end_turn")
        arguments = {"prompt": QUESTION, "runner": "claude_code"}
        call = {"type": "tool_use", "id": "toolu_mock_llmrun", "name": TOOL}
        raw = json.dumps(arguments)
        delta = {"type": "input_json_delta", "partial_json": raw}
        return _Answer(model, [_Block({**call, "input": {}}, [delta], {**call, "input": arguments})], "tool_use")


@pytest.fixture
def api() -> Iterator[AsksLlmrun]:
    with AsksLlmrun() as mock:
        yield mock


def test_claude_code_asks_llmrun_prompt_over_stdio(api: AsksLlmrun, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    record = tmp_path / "record"
    record.mkdir()
    server = {
        "type": "stdio",
        "command": sys.executable,
        "args": ["-m", "llmrun", "mcp", "--runner", "claude_code", "--timeout", "120"],
        "env": {
            "PYTHONPATH": str(ROOT),
            "LLMRUN_CONFIG": str(tmp_path / "no-llmrun-config.toml"),
            "LLMRUN_CLAUDE_CODE_BIN": str(FAKE_BIN / "claude"),
            "LLMRUN_FAKE_SCENARIO": "multibyte-partial",
            "LLMRUN_FAKE_RECORD": str(record),
        },
    }
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"llmrun": server}}))

    done = subprocess.run(
        [
            "claude",
            "-p",
            "--mcp-config",
            str(config),
            "--strict-mcp-config",
            "--allowedTools",
            TOOL,
            "--output-format",
            "json",
            "Ask llmrun whether 7 is prime.",
        ],
        env=claude_env(tmp_path / "claude-home", api.url),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert result["is_error"] is False and result["result"] == FINAL, result
    first, *_, last = [r["json"] for r in api.message_requests]
    assert TOOL in [tool.get("name") for tool in first.get("tools") or []]  # claude listed llmrun's tools
    # llmrun's prompt tool ran: the backend got the question...
    runs = [json.loads(p.read_text()) for p in sorted(record.glob("invocation-*.json"))]
    asked = [run for run in runs if "--output-format" in run["argv"]]
    assert len(asked) == 1 and prompt_in(asked[0]["stdin"]).rstrip().endswith(QUESTION)
    assert asked[0]["argv"][asked[0]["argv"].index("--tools") + 1] == ""  # its agent tools off
    # ...and its answer is what claude sent back to the model as the tool's result.
    (returned,) = tool_results(last)
    assert returned["tool_use_id"] == "toolu_mock_llmrun"
    assert not returned.get("is_error")
    assert BACKEND_TEXT in json.dumps(returned["content"], ensure_ascii=False)
    # claude ended llmrun's server when it exited, and the server's tool run went before it.
    asyncio.run(assert_no_processes_in(str(workdir), within=20))
