"""`llmrun chat` on a terminal: the interactive conversation and the decorations, in a pty."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from llmrun.cli.chat import ChatOptions
from llmrun.cli.interactive import Conversation
from llmrun.runners.base import Runner
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport

from .cli_support import SESSION, THINKING_SESSION, claude_fake, private_state
from .conftest import FakeRun, is_alive, still_alive


@pytest.fixture(autouse=True)
def state_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_state(monkeypatch, tmp_path)


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def spawned() -> Iterator[list[pexpect.spawn]]:
    children: list[pexpect.spawn] = []
    yield children
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def llmrun(spawned: list[pexpect.spawn], *args: str, **env: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmrun", *args],
        env={**os.environ, "TERM": "xterm", **env},
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    spawned.append(child)
    return child


def wait_for_invocations(fake: FakeRun, count: int, within: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while len(fake.invocations()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    invocations = fake.invocations()
    assert len(invocations) >= count
    return invocations


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


# --- the conversation -----------------------------------------------------------------------


def test_second_turn_resumes_the_first_ones_session(
    claude: FakeRun, spawned: list[pexpect.spawn], state_file: Path
) -> None:
    child = llmrun(spawned, "chat", "-r", "claude_code")
    child.expect("Chatting with Claude Code")
    child.expect("> ")
    child.sendline("first question")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("second question")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("/exit")
    assert ended(child) == 0
    first, second = sorted(claude.invocations(), key=lambda inv: inv["argv"].count("--resume"))
    assert "--resume" not in first["argv"] and first["stdin"] == "first question"
    assert second["argv"][second["argv"].index("--resume") + 1] == SESSION
    assert second["stdin"] == "second question"  # the session holds the first turn, not the prompt
    assert json.loads(state_file.read_text())["sessions"]["claude_code"]["session_id"] == SESSION


def test_clear_and_model_commands(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "chat", "-r", "claude_code")
    child.expect("> ")
    child.sendline("one")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("/model opus")
    child.expect(r"\(model: opus\)")
    child.sendline("two")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("/clear")
    child.expect(r"\(new conversation\)")
    child.sendline("three")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("/nonsense")
    child.expect("unknown command /nonsense")
    child.sendeof()
    assert ended(child) == 0
    invocations = wait_for_invocations(claude, 3)
    by_prompt = {inv["stdin"]: inv["argv"] for inv in invocations}
    assert by_prompt["two"][by_prompt["two"].index("--model") + 1] == "opus"
    assert "--resume" in by_prompt["two"] and "--resume" not in by_prompt["three"]
    assert len(invocations) == 3  # /commands never reach the tool


def test_ctrl_c_cancels_the_answer_and_kills_the_tool(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    claude.fault("hang_after=2")
    child = llmrun(spawned, "chat", "-r", "claude_code")
    child.expect("> ")
    child.sendline("never answered")
    (invocation,) = wait_for_invocations(claude, 1)
    time.sleep(0.3)  # the fake has printed its two lines and hangs
    assert is_alive(invocation["pid"])
    child.sendintr()
    child.expect(r"answer cancelled; Ctrl-C again to leave")
    child.expect("> ")
    assert still_alive(claude.pids()) == []
    assert child.isalive()  # the conversation goes on
    child.sendintr()
    assert ended(child) == 130


def test_ctrl_c_at_the_prompt_asks_before_leaving(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "chat", "-r", "claude_code")
    child.expect("> ")
    child.sendintr()
    child.expect(r"Ctrl-C again to leave")
    child.expect("> ")
    child.sendline("still here")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendintr()  # the answer in between disarmed the first press
    child.expect(r"Ctrl-C again to leave")
    child.sendintr()
    assert ended(child) == 130


def test_errors_do_not_end_the_conversation(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    claude.scenario("mock-401-stream")
    child = llmrun(spawned, "chat", "-r", "claude_code")
    child.expect("> ")
    child.sendline("hi")
    child.expect("llmrun: AuthenticationError: Invalid API key")
    child.expect("> ")
    child.sendline("/exit")
    assert ended(child) == 0


def test_continue_opens_the_conversation_on_the_last_session(
    claude: FakeRun, spawned: list[pexpect.spawn], state_file: Path
) -> None:
    state_file.parent.mkdir(parents=True)
    state_file.write_text(
        json.dumps({"last_runner": "claude_code", "sessions": {"claude_code": {"session_id": "s-1"}}})
    )
    child = llmrun(spawned, "chat", "--continue")
    child.expect("Continuing session s-1")
    child.sendline("again")
    child.expect("Hello from mock")
    child.sendline("/exit")
    assert ended(child) == 0
    (invocation,) = claude.invocations()
    assert invocation["argv"][invocation["argv"].index("--resume") + 1] == "s-1"


# --- one answer on a terminal ---------------------------------------------------------------


def test_spinner_then_dimmed_thinking_then_answer(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    claude.scenario("thinking-partial")
    child = llmrun(spawned, "chat", "-r", "claude", "-u", "hi", LLMRUN_FAKE_DELAY="0.05")
    child.expect(r"Claude Code \(sonnet\) is thinking")  # the spinner, before any token
    child.expect_exact("\x1b[2mThe user greets me. ")
    child.expect_exact("\x1b[0m")
    child.expect("Hello after thinking")
    child.expect("tokens: ")
    assert ended(child) == 0
    assert claude.invocations()[0]["stdin"] == "hi"


@pytest.mark.parametrize("how", ["--no-color", "NO_COLOR"])
def test_no_color(claude: FakeRun, spawned: list[pexpect.spawn], how: str) -> None:
    claude.scenario("thinking-partial")
    args = ["--no-color"] if how == "--no-color" else []
    env = {"NO_COLOR": "1"} if how == "NO_COLOR" else {}
    child = llmrun(spawned, *args, "chat", "-r", "claude", "hi", **env)
    child.expect(pexpect.EOF)
    output = child.before
    assert "thinking: The user greets me." in output and "Hello after thinking" in output
    assert "\x1b[2m" not in output


def test_hide_thinking(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    claude.scenario("thinking-partial")
    child = llmrun(spawned, "chat", "-r", "claude", "--hide-thinking", "hi")
    child.expect(pexpect.EOF)
    assert "Hello after thinking" in child.before and "greets" not in child.before


def test_json_without_a_prompt_on_a_terminal_is_a_usage_error(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "chat", "-r", "claude", "--json")
    child.expect("give a prompt")
    assert ended(child) == 2


# --- history for runners without sessions ---------------------------------------------------


class Recording(Runner):
    """A runner without a tool: answers "answer N" and records each request."""

    name = "recording"
    display_name = "Recording"
    default_model = "m"

    def __init__(self, *, sessions: bool, session_id: str | None = None) -> None:
        self.requests: list[ChatRequest] = []
        self.session_id = session_id
        self.capabilities = Capabilities(sessions=sessions)  # type: ignore[misc]

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.requests.append(request)
        yield ChatChunk(delta=f"answer {len(self.requests)}")
        yield ChatChunk(finish_reason="stop", session_id=self.session_id)

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def converse(runner: Recording, *turns: str) -> None:
    from io import StringIO

    conversation = Conversation(runner, ChatOptions(), out=StringIO(), err=StringIO())
    for text in turns:
        conversation.turn(text)


@pytest.mark.parametrize("sessions", [False, True], ids=["no sessions", "session not reported"])
def test_without_a_session_the_history_is_resent(sessions: bool) -> None:
    runner = Recording(sessions=sessions)
    converse(runner, "one", "two", "three")
    last = runner.requests[-1]
    assert [(m.role, m.text) for m in last.messages] == [
        ("user", "one"),
        ("assistant", "answer 1"),
        ("user", "two"),
        ("assistant", "answer 2"),
        ("user", "three"),
    ]
    assert last.session_id is None


def test_with_a_session_only_the_new_turn_is_sent(state_file: Path) -> None:
    runner = Recording(sessions=True, session_id=THINKING_SESSION)
    converse(runner, "one", "two")
    assert [m.text for m in runner.requests[1].messages] == ["two"]
    assert runner.requests[1].session_id == THINKING_SESSION
    assert json.loads(state_file.read_text())["sessions"]["recording"]["session_id"] == THINKING_SESSION


def test_health_shows_progress_on_a_terminal(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "health", "-r", "claude", "--probe", LLMRUN_FAKE_DELAY="0.1")
    child.expect(r"checking claude_code \(0 of 1 done\)")
    child.expect("probe answered")
    assert ended(child) == 0
