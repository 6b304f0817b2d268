"""Shared test set-up: no user config, fake CLIs on demand, process-table checks."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FAKE_BIN = FIXTURES / "bin"


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's llmrun config or LLMRUN_* variables."""
    for name in list(os.environ):
        if name.startswith("LLMRUN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMRUN_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # `chat --continue` remembers sessions there
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # `llmrun chat` logs its turns there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the command remembers tool checks there


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    """A working directory of this test's own, for its runs (and to find what they leave behind)."""
    path = tmp_path / f"work-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return os.path.realpath(path)


@dataclass
class FakeTool:
    """How one runner is driven against its fake CLI in the contract suite."""

    runner: str
    ok_scenario: str
    ok_text: str
    multibyte_scenario: str | None = None
    multibyte_text: str = ""
    error_scenarios: dict[str, str] = field(default_factory=dict)
    """Transcript → name of the error class the runner must raise for it."""
    config: str = ""
    """A config file to run with (TOML): for a runner defined there, which is known only through it."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment for its runs; `{fixtures}` stands for the fixtures directory, `{tmp}` for the
    test's own temporary directory."""

    @property
    def binary(self) -> Path:
        return FAKE_BIN / self.tool

    @property
    def tool(self) -> str:
        from llmrun import get_runner_class

        return get_runner_class(self.runner).binary


# A runner defined in the config file (llmrun/runners/configured.py), driving fixtures/bin/jsonl-cli.
JSONL_CLI_CONFIG = """\
[runners.jsonl_cli]
command = ["jsonl-cli", "--model", "{model}", "--system", "{system}", "--format", "jsonl"]
output = "jsonl"
models = ["mock-small", "mock-large"]
default_model = "mock-large"
version_command = ["jsonl-cli", "--version"]
display_name = "JSONL CLI"
install_hint = "pip install jsonl-cli"

[runners.jsonl_cli.jsonl]
delta = { path = "text", type = "delta" }
text = { path = "text", type = "end" }
thinking = { path = "text", type = "thinking" }
session_id = { path = "session", type = "start" }
model = { path = "model", type = "start" }
cost_usd = { path = "cost", type = "end" }
error = { path = "error.message", type = "error" }
done = { type = "end" }

[runners.jsonl_cli.jsonl.usage]
input_tokens = "usage.input"
output_tokens = "usage.output"
cache_read_tokens = "usage.cached"
"""

FAKE_TOOLS = [
    FakeTool(
        runner="claude_code",
        ok_scenario="mock-stream-json-partial",
        ok_text="Hello from mock",
        multibyte_scenario="multibyte-partial",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "mock-401-stream": "AuthenticationError",
            "noauth-stream": "AuthenticationError",
            "mock-529-stream-partial-retries2": "ServiceUnavailable",
            "mock-500-stream-retries0": "ServiceUnavailable",
        },
    ),
    FakeTool(
        runner="codex",
        ok_scenario="mock-exec-json",
        ok_text="Hello from mock",
        multibyte_scenario="runner-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "mock-401-json": "AuthenticationError",
            "mock-401-json-noretry": "AuthenticationError",
            "mock-nokey-env": "AuthenticationError",
            "mock-429-json-defaultretries": "RateLimitError",
            "mock-500-json-defaultretries": "ServiceUnavailable",
            "mock-500-json-noretry": "ServiceUnavailable",
            "runner-503": "ServiceUnavailable",
            "connrefused-json-bounded": "ServiceUnavailable",
            "runner-context-length": "ContextLengthExceeded",
            "runner-model-not-found": "ModelNotFound",
            "runner-resume-missing": "SessionNotFound",
        },
    ),
    FakeTool(
        runner="gemini",
        ok_scenario="stream-json-text",
        ok_text="Hello from mock",
        multibyte_scenario="stream-json-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "stream-json-401": "AuthenticationError",
            "noauth-stream": "AuthenticationError",
            "stream-json-noauth": "AuthenticationError",
            "stream-json-429": "RateLimitError",
            "mock-429-stream-maxattempts1": "RateLimitError",
            "stream-json-500": "ServiceUnavailable",
            "stream-json-503": "ServiceUnavailable",
            "stream-json-400-context": "ContextLengthExceeded",
            "stream-json-404-model": "ModelNotFound",
            "resume-missing": "SessionNotFound",
        },
    ),
    FakeTool(
        runner="qwen",
        ok_scenario="mock-stream-json-partial",
        ok_text="Hello from mock",
        multibyte_scenario="multibyte-partial",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "llmrun-401-partial": "AuthenticationError",
            "llmrun-nokey-partial": "AuthenticationError",
            "mock-401-json": "AuthenticationError",
            "noauth-stream": "AuthenticationError",
            "llmrun-429-partial": "RateLimitError",
            "llmrun-500-partial": "ServiceUnavailable",
            "llmrun-resume-missing": "SessionNotFound",
        },
    ),
    FakeTool(
        runner="ollama",
        ok_scenario="run-answer",
        ok_text="Hello from mock.\n\nHow can I help?",
        multibyte_scenario="run-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "run-no-server": "ServiceUnavailable",
            "run-500": "ServiceUnavailable",
            "run-not-pulled-offline": "ModelNotFound",
            "run-not-in-registry": "ModelNotFound",
            "run-404": "ModelNotFound",
            "run-429": "RateLimitError",
            "run-401": "AuthenticationError",
            "run-cloud-signin": "AuthenticationError",
            "run-context": "ContextLengthExceeded",
            "run-think-unsupported": "UnsupportedFeature",
        },
    ),
    FakeTool(
        runner="cursor_agent",
        ok_scenario="stream-json-partial",
        ok_text="Hello from mock",
        multibyte_scenario="stream-json-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "noauth": "AuthenticationError",
            "result-error": "AuthenticationError",
            "usage-limit": "RateLimitError",
            "model-unavailable": "ModelNotFound",
            "resume-missing": "SessionNotFound",
            "network-error": "ServiceUnavailable",
        },
    ),
    FakeTool(
        runner="copilot",
        ok_scenario="llmrun-text",
        ok_text="Hello from mock",
        multibyte_scenario="llmrun-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "llmrun-401": "AuthenticationError",
            "mock-401-json": "AuthenticationError",
            "llmrun-noauth": "AuthenticationError",
            "noauth-p-json": "AuthenticationError",
            "offline-without-provider": "AuthenticationError",
            "fake-gh-token-offline-net": "AuthenticationError",
            "llmrun-429-partial": "RateLimitError",
            "llmrun-500": "ServiceUnavailable",
            "mock-500-json": "ServiceUnavailable",
            "llmrun-resume-missing": "SessionNotFound",
        },
    ),
    FakeTool(
        runner="opencode",
        ok_scenario="llmrun-thinking",
        ok_text="Hello from mock",
        multibyte_scenario="llmrun-multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "llmrun-401": "AuthenticationError",
            "mock-401-json": "AuthenticationError",
            "mock-429-json": "RateLimitError",
            "llmrun-model-not-found": "ModelNotFound",
            "llmrun-resume-missing": "SessionNotFound",
        },
    ),
    FakeTool(
        runner="jsonl_cli",
        ok_scenario="stream",
        ok_text="Hello from mock",
        multibyte_scenario="multibyte",
        multibyte_text="Héllo wörld 日本語 🙂",
        error_scenarios={
            "error-401": "AuthenticationError",
            "error-429": "RateLimitError",
            "error-503": "ServiceUnavailable",
            "error-model": "ModelNotFound",
            "error-context": "ContextLengthExceeded",
        },
        config=JSONL_CLI_CONFIG,
    ),
]


# Runners may also declare their fake in tests/fakes/<runner>.json (the fields of FakeTool).
FAKE_TOOLS += [FakeTool(**json.loads(path.read_text())) for path in sorted((ROOT / "tests" / "fakes").glob("*.json"))]


class FakeRun:
    """Drives a fake CLI through environment variables and reads what it recorded."""

    def __init__(self, tool: FakeTool, monkeypatch: pytest.MonkeyPatch, record: Path) -> None:
        self.tool = tool
        self.monkeypatch = monkeypatch
        self.record = record
        if tool.config:
            config = record.parent / "llmrun-config.toml"
            config.write_text(tool.config)
            monkeypatch.setenv("LLMRUN_CONFIG", str(config))
        monkeypatch.setenv(f"LLMRUN_{tool.runner.upper()}_BIN", str(tool.binary))
        for name, value in tool.env.items():
            monkeypatch.setenv(name, value.replace("{fixtures}", str(FIXTURES)).replace("{tmp}", str(record.parent)))
        monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
        self.scenario(tool.ok_scenario)

    def scenario(self, name: str) -> None:
        self.monkeypatch.setenv("LLMRUN_FAKE_SCENARIO", name)

    def fault(self, spec: str) -> None:
        self.monkeypatch.setenv("LLMRUN_FAKE_FAULT", spec)

    def delay(self, seconds: float) -> None:
        self.monkeypatch.setenv("LLMRUN_FAKE_DELAY", str(seconds))

    def invocations(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.record.glob("invocation-*.json"))]

    def pids(self) -> list[int]:
        """Every process a run of the fake started: the fake itself and its grandchildren."""
        pids = [inv["pid"] for inv in self.invocations()]
        pids += [int(p.read_text()) for p in self.record.glob("grandchild-*.pid")]
        return pids

    def exited(self, pid: int) -> bool:
        return (self.record / f"exited-{pid}").exists()

    def runner(self, **settings: object):  # type: ignore[no-untyped-def]
        from llmrun import get_runner

        return get_runner(self.tool.runner, **settings)


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def prompt_in(stdin: str | bytes) -> str:
    """The prompt a run was given on stdin: the text of the one stream-json user message a
    one-shot claude reads, else stdin as it came."""
    text = stdin.decode() if isinstance(stdin, bytes) else stdin
    if text.startswith('{"type": "user"'):
        return "".join(block["text"] for block in json.loads(text)["message"]["content"] if block["type"] == "text")
    return text


@pytest.fixture(params=FAKE_TOOLS, ids=lambda t: t.runner)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    record = tmp_path / "record"
    record.mkdir()
    run = FakeRun(request.param, monkeypatch, record)
    yield run
    # Whatever a test did, leave nothing running.
    for pid in run.pids():
        if is_alive(pid):
            os.kill(pid, 9)


def is_alive(pid: int) -> bool:
    """True when the pid is a live process (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def still_alive(pids: list[int], within: float = 5.0) -> list[int]:
    """The pids still alive after waiting up to `within` seconds for them to go."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if is_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The system temp directory of one test, so that what runs leave there can be seen."""
    path = tmp_path / "temp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path
