"""`python -m llmrun serve` as its own process, stopped with SIGTERM while runs are in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, FakeRun, still_alive
from .server_support import claude_fake

pytestmark = pytest.mark.timeout(60)

# uvicorn re-raises the signal it caught once it has shut down, so a stopped daemon may end by it.
CLEAN_EXIT = (0, -signal.SIGTERM)
CHAT = {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            # One-shot runs: warm sessions are stopped by tests/test_server_warm.py.
            [sys.executable, "-m", "llmrun", "serve", "--port", str(self.port), "--max-warm", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the daemon did not start:\n{self.output}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


class StreamReader(threading.Thread):
    """Reads one streaming request in the background; `first` is set at the first delta."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=CHAT, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        if '"content": "Hello "' in line:
                            self.first.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first.set()


def assert_clean(output: str) -> None:
    for problem in ("Traceback", "Task exception was never retrieved", "Exception in ASGI application"):
        assert problem not in output, output


def test_sigterm_cancels_runs_past_the_deadline_and_leaves_no_child(claude: FakeRun, tmp_path: Path) -> None:
    # A tool that hangs, ignores SIGTERM and has a grandchild: only SIGKILL to the group ends it.
    claude.fault("hang_after=5,grandchild,ignore_sigterm")
    daemon = Daemon(tmp_path, "--shutdown-timeout", "1", "--sessions", str(tmp_path / "s.sqlite3"))
    try:
        reader = StreamReader(daemon.url)
        reader.start()
        assert reader.first.wait(15) and reader.error is None
        pids = claude.pids()
        assert len(pids) == 2
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{daemon.url}/health", timeout=2)
        code = daemon.wait(20)
        took = time.monotonic() - started
    finally:
        daemon.stop()
    reader.join(10)
    assert code in CLEAN_EXIT, daemon.output
    assert "Finished server process" in daemon.output
    assert took >= 1.0, f"shutdown took {took:.1f} s"
    assert still_alive(pids, within=0.5) == [], "a tool process outlived the server"
    last = json.loads(reader.events[-1])
    assert "shutting down" in last["error"]["message"]
    assert_clean(daemon.output)


def test_sigterm_lets_a_short_run_finish(claude: FakeRun, tmp_path: Path) -> None:
    claude.delay(0.15)  # about 2 s per run, well inside the deadline
    daemon = Daemon(tmp_path, "--shutdown-timeout", "20", "--sessions", str(tmp_path / "s.sqlite3"))
    try:
        reader = StreamReader(daemon.url)
        reader.start()
        assert reader.first.wait(15) and reader.error is None
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.wait(20)
    finally:
        daemon.stop()
    reader.join(10)
    assert code in CLEAN_EXIT, daemon.output
    assert reader.events[-1] == "[DONE]"
    text = "".join(
        (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in reader.events[:-1]
    )
    assert text == "Hello from mock"
    assert still_alive(claude.pids(), within=0.5) == []
    assert_clean(daemon.output)
