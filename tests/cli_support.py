"""Set-up shared by the command tests: the claude fake, a private state dir, which tools exist."""

from __future__ import annotations

import os
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
