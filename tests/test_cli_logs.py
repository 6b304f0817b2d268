"""The log of `llmrun chat` (llmrun/logs.py) and the `llmrun logs` command."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmrun.cli.app import app
from llmrun.logs import SCHEMA_VERSION, Log, Recorder, Turn, logs_path

from .cli_support import SESSION, chat_interrupted, claude_fake
from .conftest import FAKE_BIN, FAKE_TOOLS, FakeRun

cli = CliRunner()


@pytest.fixture(autouse=True)
def data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The log goes to the test's own directory, never the developer's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "data" / "llmrun" / "logs.db"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The fake llm (which keeps no session unless asked to log), recording its invocations."""
    monkeypatch.setenv("LLMRUN_LLM_BIN", str(FAKE_BIN / "llm"))
    record = tmp_path / "llm-record"
    monkeypatch.setenv("LLMRUN_FAKE_RECORD", str(record))
    monkeypatch.setenv("LLMRUN_FAKE_DELAY", "0")
    for name in list(os.environ):
        if name.startswith("LLM_"):
            monkeypatch.delenv(name)
    # The interactive mode checks the login first: the default model's key must be there.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return record


def chat(*args: str) -> Any:
    result = cli.invoke(app, ["chat", *args])
    return result


def logged() -> list[Turn]:
    """Every logged turn, the first first."""
    with Log() as log:
        return list(reversed(log.turns(limit=None)))


def logs_json(*args: str) -> list[dict[str, Any]]:
    result = cli.invoke(app, ["logs", *args, "--json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


# --- what a turn leaves in the log --------------------------------------------------------------


def test_a_chat_turn_is_logged_with_its_answer_and_usage(claude: FakeRun, data_home: Path) -> None:
    assert chat("-r", "claude", "-m", "opus", "-s", "Be terse", "Say hi").exit_code == 0
    (turn,) = logged()
    assert (turn.runner, turn.model, turn.model_reported) == ("claude_code", "opus", "claude-opus-4-8")
    assert (turn.prompt, turn.system, turn.answer) == ("Say hi", "Be terse", "Hello from mock")
    assert (turn.input_tokens, turn.output_tokens) == (12, 7)
    assert turn.cost_usd is not None and turn.cost_usd > 0
    assert turn.session_id == SESSION and turn.finish_reason == "stop" and not turn.failed
    assert turn.duration_ms is not None and turn.conversation_id
    assert logs_path() == data_home


def test_the_log_is_private_and_versioned(claude: FakeRun, data_home: Path) -> None:
    assert chat("-r", "claude", "hi").exit_code == 0
    assert stat.S_IMODE(data_home.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_home.parent.stat().st_mode) == 0o700
    with sqlite3.connect(data_home) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_logs_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_home: Path) -> None:
    assert cli.invoke(app, ["logs", "path"]).stdout.strip() == str(data_home)
    monkeypatch.setenv("LLMRUN_LOGS_PATH", str(tmp_path / "elsewhere.db"))
    assert cli.invoke(app, ["logs", "path"]).stdout.strip() == str(tmp_path / "elsewhere.db")


def test_a_failed_turn_is_logged_with_its_error(claude: FakeRun) -> None:
    claude.scenario("mock-401-stream")
    assert chat("-r", "claude", "hi").exit_code == 4
    (turn,) = logged()
    assert turn.failed and turn.error_type == "AuthenticationError"
    assert turn.error_message and turn.prompt == "hi" and turn.answer == ""
    shown = cli.invoke(app, ["logs"]).stdout
    assert "## Error\n\nAuthenticationError: " in shown


def test_every_answer_of_all_is_logged(claude: FakeRun) -> None:
    assert chat("-r", "claude_code,claude_code/opus", "--all", "--no-stream", "hi").exit_code == 0
    turns = logged()
    assert sorted(str(turn.model) for turn in turns) == ["None", "opus"]
    assert all(turn.answer == "Hello from mock" and turn.prompt == "hi" for turn in turns)
    assert turns[0].conversation_id != turns[1].conversation_id  # each continues on its own


def test_a_turn_cut_short_by_ctrl_c_is_logged_as_cancelled(claude: FakeRun) -> None:
    returncode, err, _ = chat_interrupted(claude, "-r", "claude", "hi")
    assert returncode == 130, err
    (turn,) = logged()
    assert (turn.error_type, turn.error_message) == ("Cancelled", "cancelled (Ctrl-C)")


def test_a_log_that_cannot_be_written_does_not_fail_the_chat(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LLMRUN_LOGS_PATH", str(tmp_path / "a-file" / "logs.db"))
    result = chat("-r", "claude", "hi")
    assert result.exit_code == 0 and result.stdout == "Hello from mock\n"
    assert "llmrun: the turn was not logged: cannot write " in result.stderr


# --- turning it off --------------------------------------------------------------------------


def test_no_log_writes_nothing(claude: FakeRun, data_home: Path) -> None:
    assert chat("-r", "claude", "--no-log", "hi").exit_code == 0
    assert not data_home.exists()


def test_log_false_in_the_config_writes_nothing(
    claude: FakeRun, data_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("log = false\n")
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    assert chat("-r", "claude", "hi").exit_code == 0
    assert not data_home.exists()


def test_log_in_the_config_must_be_true_or_false(
    claude: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('log = "no"\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = chat("-r", "claude", "hi")
    assert result.exit_code == 2 and "log: expected true or false" in result.stderr
    assert claude.invocations() == []


def test_logs_off_then_on(claude: FakeRun) -> None:
    assert cli.invoke(app, ["logs", "off"]).exit_code == 0
    assert chat("-r", "claude", "unseen").exit_code == 0
    assert cli.invoke(app, ["logs", "on"]).exit_code == 0
    assert chat("-r", "claude", "seen").exit_code == 0
    assert [turn.prompt for turn in logged()] == ["seen"]


# --- llmrun logs ------------------------------------------------------------------------------


def test_logs_lists_the_newest_first(claude: FakeRun) -> None:
    for prompt in ("one", "two", "three", "four"):
        assert chat("-r", "claude", prompt).exit_code == 0
    (newest,) = logs_json("-n", "1")
    assert newest["prompt"] == "four" and newest["answer"] == "Hello from mock"
    assert newest["input_tokens"] == 12 and newest["runner"] == "claude_code"
    assert [row["prompt"] for row in logs_json()] == ["four", "three", "two"]  # 3 by default
    assert len(logs_json("-n", "0")) == 4
    text = cli.invoke(app, ["logs", "-n", "1"]).stdout
    assert "## Prompt\n\nfour\n\n## Answer\n\nHello from mock" in text


def test_query_finds_turns_by_their_text(claude: FakeRun) -> None:
    for prompt in ("ripe apples", "green pears", "100% sure"):
        assert chat("-r", "claude", prompt).exit_code == 0
    assert [row["prompt"] for row in logs_json("-q", "PEARS")] == ["green pears"]
    assert [row["prompt"] for row in logs_json("-q", "100%")] == ["100% sure"]
    assert [row["prompt"] for row in logs_json("-q", "0%")] == ["100% sure"]  # % is no wildcard
    assert len(logs_json("-q", "from mock", "-n", "0")) == 3  # the answers hold it
    assert logs_json("-q", "apples pears") == []  # every word must be found


def test_runner_filter(claude: FakeRun) -> None:
    assert chat("-r", "claude", "hi").exit_code == 0
    assert len(logs_json("-r", "claude")) == 1  # an alias names the runner too
    assert logs_json("-r", "gemini") == []


def test_logs_of_no_log_yet_are_empty(data_home: Path) -> None:
    assert logs_json() == [] and logs_json("-c") == [] and logs_json("--usage") == []
    assert not data_home.exists()  # reading creates nothing


def test_usage_sums_tokens_and_cost_by_runner_and_day(claude: FakeRun) -> None:
    for prompt in ("one", "two"):
        assert chat("-r", "claude", prompt).exit_code == 0
    claude.scenario("mock-401-stream")
    assert chat("-r", "claude", "three").exit_code == 4
    (row,) = logs_json("--usage")
    costs = [turn.cost_usd or 0.0 for turn in logged()]
    assert (row["runner"], row["turns"], row["failed"]) == ("claude_code", 3, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (24, 14)
    assert row["cost_usd"] == pytest.approx(sum(costs)) and row["cost_usd"] > 0
    assert len(row["day"]) == len("2026-01-01")
    table = cli.invoke(app, ["logs", "--usage"]).stdout
    assert "claude_code" in table and " 24 " in table


# --- conversations and --continue -------------------------------------------------------------


def test_continue_resumes_the_session_in_the_same_conversation(claude: FakeRun) -> None:
    assert chat("-r", "claude", "unrelated").exit_code == 0
    assert chat("-r", "claude", "first").exit_code == 0
    assert chat("-c", "second").exit_code == 0
    last = claude.invocations()[-1]["argv"]
    assert f"--resume={SESSION}" in last
    conversation = logs_json("-c")
    assert [row["prompt"] for row in conversation] == ["first", "second"]
    assert len({row["conversation_id"] for row in conversation}) == 1
    assert logs_json("--cid", conversation[0]["conversation_id"]) == conversation
    unrelated = logs_json("-n", "0")[-1]
    assert unrelated["conversation_id"] != conversation[0]["conversation_id"]
    text = cli.invoke(app, ["logs", "-c"]).stdout
    assert text.index("## Prompt\n\nfirst") < text.index("## Prompt\n\nsecond")


def test_a_resumed_session_continues_its_logged_conversation(claude: FakeRun) -> None:
    assert chat("-r", "claude", "first").exit_code == 0
    assert chat("-r", "claude", "other").exit_code == 0
    assert chat("-r", "claude", "--session", SESSION, "again").exit_code == 0
    first, other, again = logged()
    assert again.conversation_id == other.conversation_id != first.conversation_id  # the session's last use


def test_continue_sends_the_logged_conversation_to_a_tool_without_sessions(llm: Path) -> None:
    assert chat("-r", "llm", "-s", "Be brief", "first question").exit_code == 0
    assert chat("-r", "llm", "-c", "second question").exit_code == 0
    first, second = (json.loads(p.read_text()) for p in sorted(llm.glob("invocation-*.json")))
    assert "--no-log" in first["argv"] and not any(arg.startswith("--cid") for arg in second["argv"])
    # The tool is given the earlier turn, and the system prompt of the conversation.
    assert "first question" in second["stdin"] and "Hello from mock" in second["stdin"]
    assert second["stdin"].endswith("second question") and "--system=Be brief" in second["argv"]
    turns = logged()
    assert [turn.prompt for turn in turns] == ["first question", "second question"]  # the prompt, not the history
    assert turns[0].conversation_id == turns[1].conversation_id


def test_continue_sends_the_history_where_the_session_dies_with_llmrun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # ollama's session ids are llmrun's own, kept only while the runner lives.
    tool = next(t for t in FAKE_TOOLS if t.runner == "ollama")
    record = tmp_path / "ollama-record"
    record.mkdir()
    fake = FakeRun(tool, monkeypatch, record)
    assert chat("-r", "ollama", "first question").exit_code == 0
    assert logged()[0].session_id  # there is one, but it cannot be resumed
    assert chat("-r", "ollama", "-c", "second question").exit_code == 0
    second = fake.invocations()[-1]["stdin"]
    assert "first question" in second and tool.ok_text in second and second.endswith("second question")


def test_an_interactive_chat_continues_a_logged_conversation(llm: Path) -> None:
    pexpect = pytest.importorskip("pexpect", reason="the interactive mode needs a terminal, which pexpect provides")
    assert chat("-r", "llm", "first question").exit_code == 0
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmrun", "chat", "-r", "llm", "-c"],
        env={**os.environ, "TERM": "xterm"},
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    try:
        child.expect("> ")
        child.sendline("second question")
        child.expect("Hello from mock")
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    second = json.loads(sorted(llm.glob("invocation-*.json"))[-1].read_text())
    assert "first question" in second["stdin"] and second["stdin"].endswith("second question")
    first, again = logged()
    assert again.prompt == "second question" and again.conversation_id == first.conversation_id


def test_continue_skips_a_failed_conversation(claude: FakeRun) -> None:
    assert chat("-r", "claude", "answered").exit_code == 0
    claude.scenario("mock-401-stream")
    assert chat("-r", "claude", "failed").exit_code == 4
    assert [row["prompt"] for row in logs_json("-c")] == ["answered"]


def test_continue_takes_a_newer_unlogged_session(claude: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    # A turn kept out of the log is still the last conversation: its session is in the state file.
    assert chat("-r", "claude", "logged").exit_code == 0
    with Log() as log:
        log.write(
            Turn(
                runner="claude_code",
                prompt="older",
                conversation_id="c",
                session_id="other",
                time="2000-01-01T00:00:00+00:00",
            )
        )
    assert chat("-r", "claude", "--no-log", "kept out").exit_code == 0
    assert chat("-r", "claude", "-c", "more").exit_code == 0
    assert f"--resume={SESSION}" in claude.invocations()[-1]["argv"]


def test_the_interactive_conversation_is_logged_turn_by_turn(
    llm: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmrun import get_runner
    from llmrun.cli.chat import ChatOptions
    from llmrun.cli.interactive import Conversation

    lines = ["first", "second", "/clear", "third"]

    def typed(prompt: str = "") -> str:
        if not lines:
            raise EOFError
        return lines.pop(0)

    monkeypatch.setattr("builtins.input", typed)
    opts = ChatOptions(log=Recorder())
    assert Conversation(get_runner("llm"), opts, out=StringIO(), err=StringIO()).loop() == 0
    first, second, third = logged()
    assert [first.prompt, second.prompt, third.prompt] == ["first", "second", "third"]
    assert first.conversation_id == second.conversation_id != third.conversation_id
    assert all(turn.answer == "Hello from mock" for turn in (first, second, third))


# --- several writers ----------------------------------------------------------------------------

WRITER = """
import os, sys, time
from llmrun.logs import Log, Turn
go = sys.argv[2]
open(go + "-ready-" + sys.argv[1], "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
for index in range(100):
    with Log() as log:
        log.write(Turn(runner="claude_code", prompt=f"{sys.argv[1]}-{index}", conversation_id=sys.argv[1]))
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path, data_home: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "LLMRUN_LOGS_PATH": str(data_home)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, name, str(go)], env=env, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    # Both wait for `go`, so that they write at the same time.
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}-ready-{name}").exists() for name in ("a", "b")) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    prompts = {turn.prompt for turn in logged()}
    assert prompts == {f"{name}-{index}" for name in ("a", "b") for index in range(100)}
