"""Warm sessions in the daemon: a conversation's turns go to one live tool process.

Most tests drive the app under uvicorn with `FakeWarmRunner`, whose sessions are the real
`Session` machinery over a stand-in tool process (`sleep`, spawned by llmrun's process
layer, so pids, process groups and memory are real) answering turns in-process. What the
tests check is structure: how many sessions were made and started, what each was sent,
which were closed or interrupted, which processes are alive. Waits are bounded polls;
nothing is timed. The last test runs the real `claude` against the loopback mock API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrun import process
from llmrun.errors import ConfigError, SessionNotFound
from llmrun.runners.base import Runner
from llmrun.server.conversations import for_request
from llmrun.server.sessions import StoredSession
from llmrun.server.settings import load_settings, max_warm_for
from llmrun.server.warm import reap_orphans
from llmrun.sessions import Session, SessionSettings, TurnItem
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport, Message, Usage

from .conftest import is_alive, still_alive
from .server_support import LiveServer, children, settings

pytestmark = pytest.mark.timeout(90)

WAIT = 30.0  # bound on every wait for something the server does in the background
_ids = itertools.count(1)


# --- the test double ----------------------------------------------------------------------


class FakeSession(Session):
    """A warm session whose tool process is `sleep` and whose answers are made here.

    A turn answers "Hello from warm"; a prompt containing "hang" stops after the first
    delta until the turn is interrupted.
    """

    warm = True

    def __init__(self, runner: FakeWarmRunner, settings: SessionSettings) -> None:
        super().__init__(runner, settings)
        self.fake = runner
        self.starts = self.closes = self.interrupts = self.abandons = 0
        self.sent: list[list[Message]] = []
        self._stack: contextlib.AsyncExitStack | None = None
        self._child: process.Child | None = None
        self._answer: asyncio.Future[None] | None = None
        self._answering: asyncio.Queue[TurnItem] | None = None

    async def start(self) -> None:
        async with self._lock:
            await self._settle()
            await self._started()

    async def _started(self) -> None:
        if self._child is not None:
            return
        self.starts += 1
        stack = contextlib.AsyncExitStack()
        invocation = process.Invocation(argv=["sleep", "600"], interactive=True)
        self._child = await stack.enter_async_context(process.spawn(invocation, process.Limits(stall_timeout=None)))
        self._stack = stack

    def pids(self) -> list[int]:
        return process.group_members(self._child.pid) if self._child is not None else []

    async def _begin(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        await self._started()
        queue: asyncio.Queue[TurnItem] = asyncio.Queue()
        if self.turns == 0 and self.settings.resume in self.fake.lost:
            queue.put_nowait(SessionNotFound(f"No conversation found with session ID: {self.settings.resume}"))
            return queue
        self.sent.append(request.messages)
        self._answering = queue
        self._answer = asyncio.ensure_future(self._answer_turn(request, queue))
        return queue

    async def _answer_turn(self, request: ChatRequest, queue: asyncio.Queue[TurnItem]) -> None:
        queue.put_nowait(ChatChunk(delta="Hello "))
        if "hang" in request.messages[-1].text:
            await asyncio.Event().wait()  # until interrupted
        queue.put_nowait(ChatChunk(delta="from warm"))
        self.id = self.id or f"warm-session-{next(_ids)}"
        queue.put_nowait(ChatChunk(finish_reason="stop", session_id=self.id, usage=Usage(input_tokens=3)))

    async def _stop_turn(self) -> None:
        self.interrupts += 1
        if self._answer is not None:
            self._answer.cancel()
        if self._answering is not None:
            self._answering.put_nowait(ChatChunk(finish_reason="cancelled"))

    def _abandon(self, queue: asyncio.Queue[TurnItem]) -> None:
        self.abandons += 1
        self._settling = asyncio.ensure_future(self._wind_up(queue))

    async def _wind_up(self, queue: asyncio.Queue[TurnItem]) -> None:
        await self._stop_turn()
        while True:
            item = await queue.get()
            if isinstance(item, BaseException) or item.is_final:
                return

    async def _kill(self) -> None:
        if self._answer is not None:
            self._answer.cancel()
        stack, self._stack, self._child = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _shutdown(self) -> None:
        self.closes += 1
        await self._kill()


class FakeWarmRunner(Runner):
    name = "fakewarm"
    display_name = "Fake warm tool"
    default_model = "one"
    capabilities = Capabilities(streaming=True, token_streaming=True, sessions=True, warm=True)
    builtin_models = (("one", ()), ("two", ()))

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.one_shots: list[ChatRequest] = []
        self.lost: set[str] = set()
        """Tool session ids the tool no longer has."""

    def session(self, **fields: Any) -> Session:
        made = FakeSession(self, SessionSettings(**fields))
        self.sessions.append(made)
        return made

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self.one_shots.append(request)
        yield ChatChunk(delta="Hello from one-shot")
        yield ChatChunk(finish_reason="stop", session_id=request.session_id or f"cold-session-{next(_ids)}")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok", version="1.0")


# --- helpers ------------------------------------------------------------------------------


def named(name: str) -> str:
    key = for_request("", name).named
    assert key is not None
    return key


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def chat(
    live: LiveServer, messages: list[dict[str, Any]], conversation: str | None, model: str = "fakewarm", **extra: Any
) -> str:
    headers = {"X-Llmrun-Session": conversation} if conversation else {}
    body = {"model": model, "messages": messages, **extra}
    reply = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=WAIT)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def spares_ready(live: LiveServer, count: int = 1) -> bool:
    return sum(1 for e in list(live.state.warm.entries) if e.role == "spare" and not e.busy) >= count


def texts(messages: list[Message]) -> list[str]:
    return [m.text for m in messages]


@pytest.fixture
def runner() -> FakeWarmRunner:
    return FakeWarmRunner()


def server(runner: Runner, tmp_path: Path, **fields: Any) -> LiveServer:
    fields.setdefault("max_warm", 4)
    return LiveServer(settings(tmp_path, **fields), runners={"fakewarm": runner})


# --- conversations ------------------------------------------------------------------------


def test_turns_of_one_conversation_share_one_started_session(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path) as live:
        assert chat(live, [user("one")], "c1") == "Hello from warm"
        assert chat(live, [user("one"), assistant("Hello from warm"), user("two")], "c1") == "Hello from warm"
        (session,) = runner.sessions
        assert (session.starts, session.turns, session.closed) == (1, 2, False)
        assert [texts(sent) for sent in session.sent] == [["one"], ["two"]]  # only the new message the second time
        assert runner.one_shots == []
        stored = live.state.store.get("fakewarm", named("c1"))
        assert stored is not None and (stored.session_id, stored.messages) == (session.id, 4)


def test_a_full_pool_closes_the_least_recently_used_session(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path, max_warm=2) as live:
        chat(live, [user("one")], "c1")
        (first,) = runner.sessions
        pids = first.pids()
        chat(live, [user("one")], "c2")
        chat(live, [user("one")], "c3")
        _, second, third = runner.sessions
        assert first.closed and not second.closed and not third.closed
        assert pids and still_alive(pids, WAIT) == []

        chat(live, [user("again")], "c2")  # c3 is now the least recently used
        chat(live, [user("one")], "c4")
        assert third.closed and not second.closed

        # The evicted conversation goes on in a new process, resuming the tool's session.
        chat(live, [user("one"), assistant("Hello from warm"), user("two")], "c1")
        resumed = runner.sessions[-1]
        assert resumed.settings.resume == first.id and texts(resumed.sent[0]) == ["two"]
        assert len([s for s in runner.sessions if not s.closed]) <= 2


def test_an_idle_session_is_closed_and_the_conversation_resumes(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path, warm_idle_timeout=0.2) as live:
        chat(live, [user("one")], "c1")
        (first,) = runner.sessions
        pids = first.pids()
        assert pids
        wait_until(lambda: first.closed, "the idle session to be closed")
        assert still_alive(pids, WAIT) == []

        chat(live, [user("one"), assistant("Hello from warm"), user("two")], "c1")
        second = runner.sessions[-1]
        assert second.settings.resume == first.id and texts(second.sent[0]) == ["two"]


def test_a_model_change_reopens_the_session_resuming_it(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path) as live:
        chat(live, [user("one")], "c1", model="fakewarm/one")
        chat(live, [user("one"), assistant("Hello from warm"), user("two")], "c1", model="fakewarm/two")
        first, second = runner.sessions
        assert first.closed and not second.closed
        assert (second.settings.model, second.settings.resume) == ("two", first.id)
        assert texts(second.sent[0]) == ["two"]


def test_an_edited_history_starts_a_fresh_session(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path) as live:
        chat(live, [user("one")], "c1")
        chat(live, [user("one"), assistant("something else"), user("two"), assistant("x"), user("three")], "c1")
        first, second = runner.sessions
        assert first.closed and second.settings.resume is None
        assert texts(second.sent[0]) == ["one", "something else", "two", "x", "three"]


def test_a_session_the_tool_lost_is_replaced_by_the_history(runner: FakeWarmRunner, tmp_path: Path) -> None:
    runner.lost.add("gone")
    with server(runner, tmp_path) as live:
        live.state.store.put("fakewarm", named("c1"), StoredSession("gone", 2, None))
        chat(live, [user("one"), assistant("earlier"), user("two")], "c1")
        lost, fresh = runner.sessions
        assert lost.settings.resume == "gone" and lost.closed
        assert fresh.settings.resume is None and texts(fresh.sent[0]) == ["one", "earlier", "two"]
        stored = live.state.store.get("fakewarm", named("c1"))
        assert stored is not None and (stored.session_id, stored.messages) == (fresh.id, 4)


def test_a_client_leaving_mid_turn_interrupts_and_keeps_the_process(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path) as live:
        body = {"model": "fakewarm", "stream": True, "messages": [user("please hang")]}
        headers = {"X-Llmrun-Session": "c1"}
        with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=WAIT) as r:
            for line in r.iter_lines():
                if "Hello" in line:
                    break  # leave after the first delta
        (session,) = runner.sessions
        wait_until(lambda: session.interrupts == 1, "the abandoned turn to be interrupted")
        assert session.abandons == 1 and not session.closed and session.pids()

        assert chat(live, [user("please hang"), assistant("Hello "), user("two")], "c1") == "Hello from warm"
        assert runner.sessions == [session] and session.starts == 1 and not session.closed


def test_a_new_chat_whose_first_turn_fails_leaves_no_process(runner: FakeWarmRunner, tmp_path: Path) -> None:
    """Until its first answer a chat without an id has no key a client could send: its process
    would sit unreachable, so it is closed with the turn."""
    with server(runner, tmp_path) as live:
        body = {"model": "fakewarm", "stream": True, "messages": [user("please hang")]}
        with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=WAIT) as r:
            for line in r.iter_lines():
                if "Hello" in line:
                    break  # leave after the first delta
        (session,) = runner.sessions
        wait_until(lambda: session.closed, "the unreachable session to close")
        assert session.interrupts == 1 and live.state.warm.entries == []


def test_requests_the_session_cannot_take_run_one_shot(runner: FakeWarmRunner, tmp_path: Path) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with server(runner, tmp_path) as live:
        assert chat(live, [user("one")], "c1", response_format=schema) == "Hello from one-shot"
    assert runner.sessions == [] and len(runner.one_shots) == 1
    with server(runner, tmp_path, max_warm=0) as live:
        chat(live, [user("one")], "c2")
        chat(live, [user("one")], None)
    assert runner.sessions == [] and len(runner.one_shots) == 3


def test_a_pool_full_of_busy_sessions_runs_the_turn_one_shot(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path, max_warm=1) as live:
        body = {"model": "fakewarm", "stream": True, "messages": [user("please hang")]}
        url = f"{live.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers={"X-Llmrun-Session": "busy"}, timeout=WAIT) as r:
            lines = r.iter_lines()  # kept open: leaving the loop would close the connection
            while "Hello" not in next(lines):
                pass
            assert chat(live, [user("one")], "other") == "Hello from one-shot"
        assert len(runner.sessions) == 1 and len(runner.one_shots) == 1


# --- spares -------------------------------------------------------------------------------


def test_a_spare_serves_a_new_conversation_and_is_replaced(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path, max_warm=4, prewarm={"fakewarm": 1}) as live:
        wait_until(lambda: spares_ready(live), "the spare to start")
        (spare,) = runner.sessions
        assert spare.starts == 1 and spare.turns == 0

        chat(live, [user("one")], "c1")
        assert spare.turns == 1 and spare.starts == 1  # the conversation got the started process
        wait_until(lambda: spares_ready(live), "a new spare")
        replacement = runner.sessions[1]
        assert replacement.starts == 1 and replacement.turns == 0

        # Another model is another process: the spare is not used for it.
        chat(live, [user("one")], "c2", model="fakewarm/two")
        assert replacement.turns == 0 and runner.sessions[-1].settings.model == "two"

        # A new chat without an id takes the spare too and keeps it: the client's next turn,
        # which sends the whole history, goes on in the same process.
        chat(live, [user("one")], None)
        chat(live, [user("one"), assistant("Hello from warm"), user("two")], None)
        assert replacement.turns == 2 and not replacement.closed
        assert texts(replacement.sent[1]) == ["two"]
        wait_until(lambda: spares_ready(live), "yet another spare")
        assert runner.one_shots == []
        assert not spare.closed  # the first conversation kept its process throughout


def test_shutdown_closes_every_session(runner: FakeWarmRunner, tmp_path: Path) -> None:
    record_dir = tmp_path / "warm"
    with server(runner, tmp_path, max_warm=3, prewarm={"fakewarm": 1}) as live:
        chat(live, [user("one")], "c1")
        chat(live, [user("one")], "c2")
        wait_until(lambda: spares_ready(live), "the spare to start")
        pids = [pid for session in runner.sessions for pid in session.pids()]
        assert len(pids) >= 3
        wait_until(lambda: len(list(record_dir.glob("*.json"))) == 1, "the record of process groups")
        recorded = json.loads(next(record_dir.glob("*.json")).read_text())
        assert {group for group, _ in recorded["groups"]} >= {process.process_group(pid) for pid in pids}
    assert all(session.closed for session in runner.sessions)
    assert still_alive(pids, WAIT) == []
    assert list(record_dir.glob("*.json")) == []


def test_runners_route_shows_warm_sessions_and_limits(runner: FakeWarmRunner, tmp_path: Path) -> None:
    with server(runner, tmp_path, max_warm=3, warm_idle_timeout=120, prewarm={"fakewarm/two": 1}) as live:
        chat(live, [user("one")], "c1")
        wait_until(lambda: spares_ready(live), "the spare to start")
        body = httpx.get(f"{live.url}/v1/runners", timeout=WAIT).json()
    (fake,) = [r for r in body["data"] if r["name"] == "fakewarm"]
    (session,) = fake["warm"]["sessions"]
    (spare,) = fake["warm"]["spares"]
    assert session["conversation"] == named("c1") and session["model"] == "one" and session["turns"] == 1
    assert spare["model"] == "two" and spare["conversation"] is None
    for shown in (session, spare):
        assert shown["pids"] and shown["rss_bytes"] > 0
    limits = body["limits"]
    assert (limits["max_warm"], limits["warm_idle_timeout"], limits["prewarm"]) == (3, 120, {"fakewarm/two": 1})


# --- crash safety -------------------------------------------------------------------------


def sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv or ("sleep", "600"), start_new_session=True, stdin=subprocess.DEVNULL)


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def write_record(directory: Path, name: str, pid: int, start: int | None, groups: list[Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps({"pid": pid, "start": start, "groups": groups}))
    return path


def test_a_starting_daemon_kills_the_groups_a_dead_one_left(runner: FakeWarmRunner, tmp_path: Path) -> None:
    orphan, reused, alive_daemons = sleeper(), sleeper(), sleeper()
    # A group whose leader is gone and whose member lives on (what a tool started).
    launcher = sleeper(sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '600'])")
    launcher.wait()
    wait_until(lambda: len(process.group_members(launcher.pid)) == 1, "the launcher's child")
    (left_behind,) = process.group_members(launcher.pid)
    try:

        def started(pid: int) -> int:
            value = process.start_time(pid)
            assert value is not None
            return value

        records = tmp_path / "warm"
        groups = [
            [orphan.pid, [[orphan.pid, started(orphan.pid)]]],
            [reused.pid, [[reused.pid, started(reused.pid) + 1]]],  # same pid, another process
            [launcher.pid, [[launcher.pid, 1], [left_behind, started(left_behind)]]],
        ]
        dead = write_record(records, "1-0.json", dead_pid(), 1, groups)
        me = os.getpid()
        living = write_record(
            records,
            "2-0.json",
            me,
            process.start_time(me),
            [[alive_daemons.pid, [[alive_daemons.pid, started(alive_daemons.pid)]]]],
        )

        with server(runner, tmp_path):
            assert orphan.wait(WAIT) == -9
            assert still_alive([left_behind], WAIT) == []
            assert is_alive(reused.pid) and is_alive(alive_daemons.pid)
            assert not dead.exists() and living.exists()
    finally:
        for proc in (orphan, reused, alive_daemons):
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(left_behind, 9)


def test_reap_orphans_ignores_an_unreadable_record(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    assert reap_orphans(tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    assert reap_orphans(tmp_path / "missing") == []


# --- settings -----------------------------------------------------------------------------


def test_max_warm_follows_the_available_memory() -> None:
    mb = 1024 * 1024
    assert max_warm_for(500 * mb) == 1  # at least one
    assert max_warm_for(4 * 1024 * mb) == 3  # 4 GiB / 300 MB / 4 = 3.4
    assert max_warm_for(8 * 1024 * mb) == 7
    assert max_warm_for(64 * 1024 * mb) == 8  # capped
    assert max_warm_for(None) == 2


def test_warm_settings_load_and_validate() -> None:
    loaded = load_settings(
        data={"server": {"max_warm": 5, "warm_idle_timeout": 30, "prewarm": {"claude_code/sonnet": 2, "claude": 1}}}
    )
    assert (loaded.max_warm, loaded.warm_idle_timeout, loaded.prewarm) == (
        5,
        30,
        {"claude_code/sonnet": 2, "claude": 1},
    )
    assert load_settings(data={}).prewarm == {} and load_settings(data={}).warm_idle_timeout == 600
    bad = [
        {"max_warm": -1},
        {"max_warm": True},
        {"max_warm": 2.5},
        {"warm_idle_timeout": 0},
        {"prewarm": {"claude": True}},
        {"prewarm": {"claude": -1}},
        {"prewarm": ["claude"]},
        {"max_warm": 2, "prewarm": {"claude": 2}},  # spares must leave room for conversations
    ]
    for table in bad:
        with pytest.raises(ConfigError):
            load_settings(data={"server": table})


def test_prewarm_must_name_a_runner_with_a_warm_mode(runner: FakeWarmRunner, tmp_path: Path) -> None:
    from llmrun.server.app import create_app

    with pytest.raises(ConfigError):
        create_app(settings(tmp_path, max_warm=3, prewarm={"no_such_runner": 1}), runners={"fakewarm": runner})
    with pytest.raises(ConfigError):
        create_app(settings(tmp_path, max_warm=3, prewarm={"ollama": 1}), runners={"fakewarm": runner})


# --- the real claude ----------------------------------------------------------------------


@pytest.mark.real_cli
@pytest.mark.timeout(180)
def test_real_claude_answers_a_conversation_from_one_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mockapi import MockAnthropic
    from realcli import become, claude_env, require_binary

    binary = os.path.realpath(require_binary("claude"))
    with MockAnthropic() as api:
        become(monkeypatch, tmp_path, claude_env(tmp_path / "claude", api.url))
        workdir = tmp_path / "work"
        workdir.mkdir()
        monkeypatch.chdir(workdir)  # where the tool runs: a conversation without a cwd gets the daemon's

        def claude_processes() -> list[int]:
            return [pid for pid in children() if os.path.realpath(f"/proc/{pid}/exe") == binary]

        with LiveServer(settings(tmp_path, max_warm=2)) as live:
            history = [user("first question")]
            assert chat(live, history, "real-1", model="claude_code/haiku") == "Hello from mock"
            (leader,) = claude_processes()
            started = process.start_time(leader)
            group = process.group_members(leader)

            history += [assistant("Hello from mock"), user("second question")]
            assert chat(live, history, "real-1", model="claude_code/haiku") == "Hello from mock"
            assert claude_processes() == [leader] and process.start_time(leader) == started
            assert process.group_members(leader)[0] == group[0] == leader
            # The second request to the API carries the first turn: the process held the conversation.
            second = api.message_requests[-1]["json"]
            said = json.dumps(second["messages"])
            assert "first question" in said and "second question" in said
        assert still_alive(group, WAIT) == []


# --- a daemon killed with SIGKILL ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_daemon_killed_with_sigkill_leaves_no_warm_process(tmp_path: Path) -> None:
    """`llmrun serve` in its own process, a conversation on the fake claude's warm mode whose
    turn hangs (so the tool reads no more input and would not notice its stdin closing), then
    kill -9 of the daemon: the tool dies with it (PR_SET_PDEATHSIG), not at some later start."""
    from .conftest import FAKE_BIN, still_alive

    record = tmp_path / "record"
    record.mkdir()
    env = {
        **os.environ,
        "LLMRUN_CLAUDE_CODE_BIN": str(FAKE_BIN / "claude"),
        "LLMRUN_FAKE_RECORD": str(record),
        "LLMRUN_FAKE_FAULT": "hang_turn=1",
        "LLMRUN_CONFIG": str(tmp_path / "no-config.toml"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    port = _free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "llmrun", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(600):  # the daemon's start-up, bounded
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            body = {"model": "claude_code", "messages": [{"role": "user", "content": "My name is Ann"}]}
            turn = asyncio.ensure_future(
                client.post("/v1/chat/completions", json=body, headers={"X-Llmrun-Session": "c1"})
            )
            received = record.glob("received-*.jsonl")
            for _ in range(600):  # until the tool has the turn, bounded
                if any(path.read_text().strip() for path in received):
                    break
                await asyncio.sleep(0.1)
                received = record.glob("received-*.jsonl")
            (invocation,) = [json.loads(p.read_text()) for p in record.glob("invocation-*.json")]
            tool = invocation["pid"]
            assert "--input-format" in invocation["argv"]  # the warm mode
            assert still_alive([tool], within=0) == [tool]
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=30)
            with contextlib.suppress(httpx.TransportError):
                await turn
        assert still_alive([tool], within=30) == []
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
