"""Set-up shared by the command tests: the claude fake, a private state dir, which tools exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import FAKE_TOOLS, FakeRun, is_alive

# The session id in the claude transcripts the fake replays.
SESSION = "01871f75-0c93-4e8f-a53a-b32da0c71f20"
THINKING_SESSION = "cd044b25-8cc1-5f06-aa58-77ac398404a0"


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


def private_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`--continue` state goes to the test's own directory, never the developer's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "llmrun" / "state.json"


def only_installed(monkeypatch: pytest.MonkeyPatch, *keep: str) -> None:
    """Every runner but `keep` looks not installed, whatever tools this machine has."""
    from llmrun.registry import runner_names

    for name in runner_names():
        if name not in keep:
            monkeypatch.setenv(f"LLMRUN_{name.upper()}_BIN", f"/nonexistent/{name}")


def chat_interrupted(claude: FakeRun, *args: str, runs: int = 1) -> tuple[int, str, list[dict]]:
    """`llmrun chat ARGS` in a process of its own while the fake hangs after two lines, sent
    Ctrl-C (SIGINT) once `runs` runs of the tool have started: (exit code, stderr, those runs)."""
    claude.fault("hang_after=2")
    child = subprocess.Popen(
        [sys.executable, "-m", "llmrun", "chat", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(claude.invocations()) < runs and time.monotonic() < deadline:
            time.sleep(0.05)
        started = claude.invocations()
        time.sleep(0.3)  # let the tool print its two lines and hang
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    return child.returncode, err, started
