"""`llmrun chat` on a terminal: the interactive conversation and the decorations, in a pty."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pexpect
import pytest

from llmrun.cli.chat import ChatOptions
from llmrun.cli.interactive import Conversation
from llmrun.errors import AuthenticationError
from llmrun.runners.base import Runner
from llmrun.sessions import Session, SessionSettings, TurnItem
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport

from .cli_support import THINKING_SESSION, claude_fake, private_state
from .conftest import FAKE_TOOLS, FakeRun, is_alive, prompt_in, still_alive

# The session id in the cursor-agent transcript its fake replays.
CURSOR_SESSION = "6f1c2a9e-3b7d-4e21-9a55-0c8d4b2e7f13"


@pytest.fixture(autouse=True)
def state_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_state(monkeypatch, tmp_path)


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


@pytest.fixture
def cursor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    """cursor-agent's fake: a runner that starts the tool for each turn and resumes its session."""
    record = tmp_path / "record"
    record.mkdir()
    run = FakeRun(next(t for t in FAKE_TOOLS if t.runner == "cursor_agent"), monkeypatch, record)
    yield run
    for pid in run.pids():
        if is_alive(pid):
            os.kill(pid, 9)


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
        # A terminal delivers Ctrl-C; a test run started in the background ignores SIGINT,
        # and children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    spawned.append(child)
    return child


# What the conversation runs before the first prompt, to check that the tool is ready.
CHECKS = (["--version"], ["status"], ["auth", "status"])


def runs(fake: FakeRun) -> list[dict[str, Any]]:
    """The tool's runs for the conversation, without those of the checks at its start."""
    return [inv for inv in fake.invocations() if inv["argv"] not in CHECKS]


def wait_for_invocations(fake: FakeRun, count: int, within: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while len(runs(fake)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    invocations = runs(fake)
    assert len(invocations) >= count
    return invocations


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


# --- the conversation, with a tool started for each turn -----------------------------------


def test_second_turn_resumes_the_first_ones_session(
    cursor: FakeRun, spawned: list[pexpect.spawn], state_file: Path
) -> None:
    child = llmrun(spawned, "chat", "-r", "cursor_agent")
    child.expect("Cursor Agent starts for each turn and resumes its session")
    child.expect("> ")
    child.sendline("first question")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("second question")
    child.expect("Hello from mock")
    child.expect("> ")
    child.sendline("/session")
    child.expect(f"session: {CURSOR_SESSION}")
    child.sendline("/exit")
    assert ended(child) == 0
    first, second = sorted(runs(cursor), key=lambda inv: "--resume" in " ".join(inv["argv"]))
    assert f"--resume={CURSOR_SESSION}" not in first["argv"] and first["stdin"] == "first question"
    assert f"--resume={CURSOR_SESSION}" in second["argv"]
    assert second["stdin"] == "second question"  # the session holds the first turn, not the prompt
    assert json.loads(state_file.read_text())["sessions"]["cursor_agent"]["session_id"] == CURSOR_SESSION


def test_clear_and_model_commands(cursor: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "chat", "-r", "cursor_agent")
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
    invocations = wait_for_invocations(cursor, 3)
    by_prompt = {inv["stdin"]: inv["argv"] for inv in invocations}
    assert "--model=opus" in by_prompt["two"]
    assert f"--resume={CURSOR_SESSION}" in by_prompt["two"]  # /model keeps the conversation
    assert not any(arg.startswith("--resume") for arg in by_prompt["three"])
    assert len(invocations) == 3  # /commands never reach the tool


def test_ctrl_c_cancels_the_answer_and_kills_the_tool(cursor: FakeRun, spawned: list[pexpect.spawn]) -> None:
    cursor.fault("hang_after=2")
    child = llmrun(spawned, "chat", "-r", "cursor_agent")
    child.expect("> ")
    child.sendline("never answered")
    (invocation,) = wait_for_invocations(cursor, 1)
    time.sleep(0.3)  # the fake has printed its two lines and hangs
    assert is_alive(invocation["pid"])
    child.sendintr()
    child.expect(r"answer cancelled; Ctrl-C again to leave")
    child.expect("> ")
    assert still_alive(cursor.pids()) == []
    assert child.isalive()  # the conversation goes on
    child.sendintr()
    assert ended(child) == 130


def test_ctrl_c_at_the_prompt_asks_before_leaving(cursor: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "chat", "-r", "cursor_agent")
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


def test_errors_do_not_end_the_conversation(cursor: FakeRun, spawned: list[pexpect.spawn]) -> None:
    cursor.scenario("noauth")
    child = llmrun(spawned, "chat", "-r", "cursor_agent")
    child.expect("> ")
    child.sendline("hi")
    child.expect("llmrun: AuthenticationError: Authentication required")
    child.expect("> ")
    child.sendline("/exit")
    assert ended(child) == 0


def test_continue_opens_the_conversation_on_the_last_session(
    cursor: FakeRun, spawned: list[pexpect.spawn], state_file: Path
) -> None:
    state_file.parent.mkdir(parents=True)
    state_file.write_text(
        json.dumps({"last_runner": "cursor_agent", "sessions": {"cursor_agent": {"session_id": "s-1"}}})
    )
    child = llmrun(spawned, "chat", "--continue")
    child.expect("Continuing session s-1")
    child.sendline("again")
    child.expect("Hello from mock")
    child.sendline("/exit")
    assert ended(child) == 0
    (invocation,) = runs(cursor)
    assert "--resume=s-1" in invocation["argv"]


# --- a warm Claude Code session, end to end -------------------------------------------------


def test_one_claude_process_answers_every_turn_and_survives_ctrl_c(
    claude: FakeRun, spawned: list[pexpect.spawn]
) -> None:
    # The fake claude replays its captured stream-json input session, one line every 0.3 s.
    child = llmrun(spawned, "chat", "-r", "claude_code", LLMRUN_FAKE_DELAY="0.3")
    child.expect("one Claude Code process for the whole conversation")
    child.expect("> ")
    child.sendline("My name is Ann")
    child.expect("Nice to ")  # the answer has begun
    child.sendintr()
    child.expect(r"answer cancelled; Ctrl-C again to leave")
    child.expect("> ")
    child.sendline("What is my name?")
    child.expect("Your name is Ann.")
    child.expect("> ")
    (invocation,) = runs(claude)  # one process for both turns
    assert "--input-format" in invocation["argv"] and is_alive(invocation["pid"])
    child.sendline("/exit")
    assert ended(child) == 0
    assert still_alive([invocation["pid"]]) == []


# --- one answer on a terminal ---------------------------------------------------------------


def test_spinner_then_dimmed_thinking_then_answer(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    claude.scenario("thinking-partial")
    # No model asked for: the spinner names the one claude's own setting chooses.
    child = llmrun(spawned, "chat", "-r", "claude", "-u", "hi", LLMRUN_FAKE_DELAY="0.05", ANTHROPIC_MODEL="sonnet")
    child.expect(r"Claude Code \(sonnet\) is thinking")  # the spinner, before any token
    child.expect_exact("\x1b[2mThe user greets me. ")
    child.expect_exact("\x1b[0m")
    child.expect("Hello after thinking")
    child.expect("tokens: ")
    assert ended(child) == 0
    assert prompt_in(runs(claude)[0]["stdin"]) == "hi"


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


# --- one session for the whole conversation, in process ------------------------------------


def ctrl_c() -> None:
    """What pressing Ctrl-C does: SIGINT to the main thread, which reads the keyboard."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


class WarmDouble(Session):
    """A warm session without a tool. It records what happens to it in `events`; the prompt
    "hang" presses Ctrl-C mid-answer, and "hang twice" presses it again once interrupted."""

    warm = True

    def __init__(self, runner: WarmRunner, settings: SessionSettings) -> None:
        super().__init__(runner, settings)
        self.new_id = f"s-{len(runner.sessions) + 1}"
        self.fail_start: Exception | None = runner.fail_start
        self.events: list[str] = []
        self.running = False
        self.prompt = ""

    async def start(self) -> None:
        self._run()

    def _run(self) -> None:
        if self.fail_start is not None:
            error, self.fail_start = self.fail_start, None
            raise error
        if not self.running:
            self.running = True
            self.events.append("start")

    async def _begin(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        self._run()
        self.prompt = request.messages[-1].text
        self.events.append(f"turn {self.prompt}")
        queue: asyncio.Queue[TurnItem] = asyncio.Queue()
        queue.put_nowait(ChatChunk(delta=f"answer to {self.prompt}"))
        if self.prompt.startswith("hang"):
            asyncio.get_running_loop().call_soon(ctrl_c)
        else:
            queue.put_nowait(ChatChunk(finish_reason="stop", session_id=self.id or self.new_id))
        return queue

    async def _stop_turn(self) -> None:
        self.events.append("interrupt")
        if self.prompt == "hang twice":
            ctrl_c()
        elif self._queue is not None:
            self._queue.put_nowait(ChatChunk(finish_reason="stop", session_id=self.id or self.new_id))

    def _abandon(self, queue: asyncio.Queue[TurnItem]) -> None:
        self.events.append("abandon")

    async def _kill(self) -> None:
        self.running = False

    async def _shutdown(self) -> None:
        self.events.append("aclose")
        self.running = False


class WarmRunner(Runner):
    """A warm runner whose sessions are WarmDoubles; it has no one-shot runs."""

    name = "warm"
    display_name = "Warm Tool"
    default_model = "m"
    capabilities = Capabilities(sessions=True, warm=True)

    def __init__(self, fail_start: Exception | None = None) -> None:
        self.sessions: list[WarmDouble] = []
        self.fail_start = fail_start

    def session(self, **settings: Any) -> Session:
        session = WarmDouble(self, SessionSettings(**settings))
        self.sessions.append(session)
        return session

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        raise AssertionError("a conversation asks its session, never the runner")
        yield ChatChunk()  # pragma: no cover - makes this a generator

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


@pytest.fixture
def typing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines the user types, in order; "^C" is Ctrl-C at the prompt, and after the last
    line comes Ctrl-D."""
    lines: list[str] = []

    def fake_input(prompt: str = "") -> str:
        if not lines:
            raise EOFError
        line = lines.pop(0)
        if line == "^C":
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    return lines


def chat(runner: Runner, typing: list[str], *lines: str, session_id: str | None = None) -> tuple[int, str, str]:
    """Run the conversation on what the user types: (exit code, stdout, stderr)."""
    typing.extend(lines)
    out, err = StringIO(), StringIO()
    code = Conversation(runner, ChatOptions(), session_id, out=out, err=err).loop()
    return code, out.getvalue(), err.getvalue()


def test_the_tool_starts_before_the_first_message_and_stops_on_leaving(typing: list[str]) -> None:
    runner = WarmRunner()
    code, _, err = chat(runner, typing)  # Ctrl-D at once
    assert code == 0
    assert "one Warm Tool process for the whole conversation" in err
    (session,) = runner.sessions
    assert session.events == ["start", "aclose"]


def test_every_turn_goes_to_the_same_warm_session(typing: list[str], state_file: Path) -> None:
    runner = WarmRunner()
    code, out, err = chat(runner, typing, "one", "two", "/session", "/exit")
    assert code == 0
    assert "answer to one" in out and "answer to two" in out
    (session,) = runner.sessions
    assert session.events == ["start", "turn one", "turn two", "aclose"]
    assert "(session: s-1)" in err
    assert json.loads(state_file.read_text())["sessions"]["warm"]["session_id"] == "s-1"


def test_clear_and_model_reopen_the_session(typing: list[str]) -> None:
    runner = WarmRunner()
    chat(runner, typing, "one", "/model big", "two", "/clear", "three")
    first, second, third = runner.sessions
    assert first.events == ["start", "turn one", "aclose"]
    # /model continues the conversation with the new model; /clear starts a new one.
    assert (second.settings.model, second.settings.resume) == ("big", "s-1")
    assert second.events == ["start", "turn two", "aclose"]
    assert (third.settings.model, third.settings.resume) == ("big", None)
    assert third.events == ["start", "turn three", "aclose"]


@pytest.mark.parametrize("leave", [["/exit"], [], ["^C", "^C"]], ids=["/exit", "Ctrl-D", "Ctrl-C twice"])
def test_leaving_closes_the_session(typing: list[str], leave: list[str]) -> None:
    runner = WarmRunner()
    code, _, _ = chat(runner, typing, "one", *leave)
    assert code == (130 if leave == ["^C", "^C"] else 0)
    (session,) = runner.sessions
    assert session.events[-1] == "aclose" and session.closed


def test_ctrl_c_interrupts_the_answer_and_the_session_goes_on(typing: list[str]) -> None:
    runner = WarmRunner()
    code, out, err = chat(runner, typing, "hang", "two", "/exit")
    assert code == 0
    assert "(answer cancelled; Ctrl-C again to leave)" in err
    assert "answer to two" in out
    (session,) = runner.sessions
    assert session.events == ["start", "turn hang", "interrupt", "turn two", "aclose"]


def test_a_second_ctrl_c_during_the_answer_leaves(typing: list[str]) -> None:
    runner = WarmRunner()
    code, _, err = chat(runner, typing, "hang twice", "never read")
    assert code == 130
    assert "(answer cancelled)" in err
    (session,) = runner.sessions
    assert session.events == ["start", "turn hang twice", "interrupt", "abandon", "aclose"]
    assert typing == ["never read"]


def test_a_tool_that_fails_to_start_fails_the_first_turn(typing: list[str]) -> None:
    runner = WarmRunner(fail_start=AuthenticationError("not logged in", runner="warm"))
    code, out, err = chat(runner, typing, "one", "two")
    assert code == 0
    assert err.count("AuthenticationError: not logged in") == 1
    assert "answer to one" not in out and "answer to two" in out
    (session,) = runner.sessions
    assert session.events == ["start", "turn two", "aclose"]


# --- a tool started for each turn: its session resumed, or the history sent again ------------


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
    with Conversation(runner, ChatOptions(), out=StringIO(), err=StringIO()) as conversation:
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


def test_another_model_keeps_the_history(typing: list[str]) -> None:
    runner = Recording(sessions=False)
    code, _, err = chat(runner, typing, "one", "/model other", "two")
    assert code == 0
    assert "Recording starts for each turn and is sent the history" in err
    last = runner.requests[-1]
    assert last.model == "other"
    assert [m.text for m in last.messages] == ["one", "answer 1", "two"]


def test_clear_forgets_the_history(typing: list[str]) -> None:
    runner = Recording(sessions=False)
    chat(runner, typing, "one", "/clear", "two")
    assert [m.text for m in runner.requests[-1].messages] == ["two"]


def test_health_shows_progress_on_a_terminal(claude: FakeRun, spawned: list[pexpect.spawn]) -> None:
    child = llmrun(spawned, "health", "-r", "claude", "--probe", LLMRUN_FAKE_DELAY="0.1")
    child.expect(r"checking claude_code \(0 of 1 done\)")
    child.expect("probe answered")
    assert ended(child) == 0
