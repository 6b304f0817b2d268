"""`llmrun chat -r NAME` loads only what the call uses: every module costs start-up time on
each call (bench/command_overhead.py measures it). Structure only, no times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli_support import claude_fake
from .conftest import FakeRun

# The command's process, reporting every module loaded by the time it exits (sys.modules also
# sees importlib.import_module, which -X importtime does not).
REPORTER = """
import atexit, json, runpy, sys
report = sys.argv[1]
atexit.register(lambda: open(report, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["llmrun", *sys.argv[2:]]
runpy.run_module("llmrun", run_name="__main__")
"""

# Neither the call nor its output needs these: other frameworks, the daemon, other transports.
UNUSED_PACKAGES = {"rich", "fastapi", "starlette", "uvicorn", "litellm", "langchain", "openai", "anthropic", "mcp"}
UNUSED_LLMRUN = {
    "llmrun.server",
    "llmrun.sessions",
    "llmrun.transports",
    "llmrun.structured",  # and its JSON-schema validator: only for --schema
    "llmrun.schema",
    "llmrun.fanout",
    "llmrun.tool_emulation",
    "llmrun.mcp_server",
    "llmrun.cli.views",
    "llmrun.cli.interactive",
    "llmrun.cli.fanout",
}
CLAUDE_MODULES = {"llmrun.runners", "llmrun.runners.base", "llmrun.runners.claude_code", "llmrun.runners.stream_json"}


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def loaded_by(tmp_path: Path, *args: str) -> set[str]:
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", REPORTER, str(report), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,  # piped, as in a script: no terminal
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from mock\n"  # the call did run
    return set(json.loads(report.read_text()))


def unused(modules: set[str]) -> set[str]:
    packages = {m for m in modules if m.split(".")[0] in UNUSED_PACKAGES}
    ours = {m for m in modules if any(m == u or m.startswith(u + ".") for u in UNUSED_LLMRUN)}
    runners = {m for m in modules if m.startswith("llmrun.runners")} - CLAUDE_MODULES
    return packages | ours | runners


def test_chat_with_a_named_runner_loads_only_what_it_uses(claude: FakeRun, tmp_path: Path) -> None:
    modules = loaded_by(tmp_path, "chat", "-r", "claude_code", "hi")
    assert "llmrun.runners.claude_code" in modules and "sqlite3" in modules  # the turn is logged
    assert not unused(modules)


def test_chat_without_the_log_opens_no_database(claude: FakeRun, tmp_path: Path) -> None:
    modules = loaded_by(tmp_path, "chat", "--no-log", "-r", "claude_code", "hi")
    assert not unused(modules)
    assert not {"sqlite3", "llmrun.logs"} & modules
