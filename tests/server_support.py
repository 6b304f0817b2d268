"""Set-up shared by the server tests: a live uvicorn on 127.0.0.1, the claude fake, scripted runners.

`LiveServer` runs the real app under uvicorn in a thread of the test process, on a random
port, so clients talk real HTTP and the tool processes are children of this process
(where /proc can count them). The claude fake is driven through the environment, which
the server's runners read when they start a tool.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llmrun.errors import LlmrunError
from llmrun.runners.base import Runner
from llmrun.server.run import make_server
from llmrun.server.settings import ServerSettings
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport, Usage

from .conftest import FAKE_BIN, FAKE_TOOLS, FakeRun, is_alive

# The session ids in the claude transcripts the fake replays.
SESSION = "01871f75-0c93-4e8f-a53a-b32da0c71f20"
THINKING_SESSION = "cd044b25-8cc1-5f06-aa58-77ac398404a0"
FAKE_CLAUDE = str(FAKE_BIN / "claude")


def claude_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    """The claude fake as `claude_code`'s binary; every process it started is gone afterwards."""
    tool = next(t for t in FAKE_TOOLS if t.runner == "claude_code")
    record = tmp_path / "record"
    record.mkdir()
    run = FakeRun(tool, monkeypatch, record)
    yield run
    for pid in run.pids():
        if is_alive(pid):
            os.kill(pid, 9)


def settings(tmp_path: Path, **fields: Any) -> ServerSettings:
    fields.setdefault("sessions", tmp_path / "sessions.sqlite3")
    fields.setdefault("queue_timeout", 10.0)
    fields.setdefault("shutdown_timeout", 2.0)
    # These suites test the one-shot path; tests/test_server_warm.py tests warm sessions.
    fields.setdefault("max_warm", 0)
    # A loaded machine must not turn a tool's error status into an error event mid-stream;
    # tests/test_server_signals.py sets the grace short on purpose.
    fields.setdefault("first_chunk_grace", 120.0)
    return ServerSettings(**fields).validate()


class LiveServer:
    """The app under uvicorn in a background thread; `stop()` is a graceful shutdown."""

    def __init__(self, config: ServerSettings, *, runners: Mapping[str, Runner] | None = None) -> None:
        self.settings = config
        # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on accepted connections as it does
        # for the sockets it makes itself (else each answer on a kept-alive connection waits 40 ms).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((config.host, 0))
        self.port = self.sock.getsockname()[1]
        # log_config=None leaves logging alone, so pytest's capture sees uvicorn's records too.
        self.server = make_server(config, runners=runners, log_level="info", log_config=None)
        self.state = self.server.state
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()
        assert not self._thread.is_alive(), "the server did not stop"

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_processes(*, parent: int | None = None, group: int | None = None) -> list[int]:
    """Live processes (from /proc) whose parent is `parent` and process group is `group`, where given."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in ("Z", "X"):
            continue
        if (parent is None or int(fields[1]) == parent) and (group is None or int(fields[2]) == group):
            found.append(int(entry))
    return found


def children() -> list[int]:
    """Live child processes of this test process (the daemon runs in a thread of it)."""
    return live_processes(parent=os.getpid())


def fake_children(binary: str = FAKE_CLAUDE) -> list[int]:
    """Live processes of this test process that run the fake (found by command line in /proc)."""
    found = []
    for pid in children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if any(arg.decode(errors="replace") == binary for arg in argv[:3]):
            found.append(pid)
    return found


class ScriptedRunner(Runner):
    """An in-process runner whose answers a test decides: `answer(request)` gives the text."""

    name = "scripted"
    display_name = "Scripted"
    default_model = "script"
    capabilities = Capabilities(streaming=True, token_streaming=True, sessions=True, usage=True)
    builtin_models = (("script", ()),)

    def __init__(self, answer: Any = None, *, delay: float = 0.0, pieces: int = 3) -> None:
        self.answer = answer or (lambda request: "Hello from script")
        self.delay = delay
        self.pieces = pieces
        self.requests: list[ChatRequest] = []
        self.session_counter = 0

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        result = self.answer(request)
        if isinstance(result, BaseException):
            raise result
        text = str(result)
        size = max(1, -(-len(text) // self.pieces))
        for start in range(0, len(text), size):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield ChatChunk(delta=text[start : start + size])
        self.session_counter += 1
        yield ChatChunk(
            finish_reason="stop",
            usage=Usage(input_tokens=5, output_tokens=3),
            session_id=f"scripted-session-{self.session_counter}",
            model="script",
        )

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok", version="1.0")


SILENT_ANSWER = "Thought it over."


class SilentRunner(Runner):
    """Says nothing for `silence` seconds, then answers, or fails with `error`."""

    name = "silent"
    display_name = "Silent"
    default_model = "silent"
    capabilities = Capabilities(streaming=True, token_streaming=True, usage=True)
    builtin_models = (("silent", ()),)

    def __init__(self, silence: float = 0.0, error: LlmrunError | None = None) -> None:
        self.silence = silence
        self.error = error
        self.requests: list[ChatRequest] = []
        self.closed = threading.Event()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        try:
            await asyncio.sleep(self.silence)
            if self.error is not None:
                raise self.error
            yield ChatChunk(delta=SILENT_ANSWER)
            yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=4, output_tokens=3), model="silent")
        finally:
            self.closed.set()

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok", version="1.0")
