"""Conversations over a stateless API: a client's history or conversation id → the tool's own session.

The claude fake records the argv and stdin of every run, which shows whether a turn
resumed a session (`--resume ID`) and whether only the new turn was sent.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from llmrun.errors import SessionNotFound
from llmrun.server.conversations import for_request, scope_of
from llmrun.types import ChatRequest

from .conftest import FakeRun, prompt_in
from .server_support import SESSION, THINKING_SESSION, LiveServer, ScriptedRunner, claude_fake, settings

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello from mock"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="k", max_retries=0, timeout=20)


def ask(live: LiveServer, history: list[dict[str, Any]], conversation: str | None = "conv-1", **extra: Any) -> str:
    headers = {"X-Llmrun-Session": conversation} if conversation else {}
    done = client(live).chat.completions.create(model="claude", messages=history, extra_headers=headers, **extra)
    return done.choices[0].message.content or ""


def named(name: str, api_key: str | None = None) -> str:
    """The store key of a conversation named `name` with X-Llmrun-Session."""
    key = for_request(scope_of(api_key), name).named
    assert key is not None
    return key


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def last_run(claude: FakeRun) -> dict[str, Any]:
    runs = [inv for inv in claude.invocations() if "--output-format" in inv["argv"]]
    assert runs, "the fake was not run"
    return runs[-1]


def resumed(run: dict[str, Any]) -> str | None:
    argv = run["argv"]
    if "--resume" in argv:
        return str(argv[argv.index("--resume") + 1])
    return next((arg.partition("=")[2] for arg in argv if arg.startswith("--resume=")), None)


def test_second_turn_resumes_the_session_after_a_restart(claude: FakeRun, tmp_path: Path) -> None:
    path = tmp_path / "state" / "sessions.sqlite3"
    with LiveServer(settings(tmp_path, sessions=path)) as live:
        assert ask(live, [user("first question")]) == TEXT
        assert resumed(last_run(claude)) is None
    assert path.is_file()

    with LiveServer(settings(tmp_path, sessions=path)) as live:
        ask(live, [user("first question"), assistant(TEXT), user("second question")])
    second = last_run(claude)
    assert resumed(second) == SESSION
    assert prompt_in(second["stdin"]) == "second question"  # only the new turn; the session holds the rest


def test_end_user_ids_neither_join_nor_expose_conversations(claude: FakeRun, tmp_path: Path) -> None:
    """OpenAI `user` and Anthropic `metadata.user_id` name a person: two chats of one user stay
    apart, and another client claiming the same user reaches nothing of the first chat."""
    with LiveServer(settings(tmp_path)) as live:
        ask(live, [user("my secret is 42")], conversation=None, user="alice")
        ask(live, [user("what did I just tell you?")], conversation=None, user="alice")
        assert resumed(last_run(claude)) is None
        ask(live, [user("hi"), assistant(TEXT), user("what did I say?")], conversation=None, user="alice")
        assert resumed(last_run(claude)) is None

        sdk = anthropic.Anthropic(base_url=live.url, api_key="k", max_retries=0, timeout=20)
        sdk.messages.create(model="claude", max_tokens=10, messages=[user("x")], metadata={"user_id": "bob"})
        sdk.messages.create(model="claude", max_tokens=10, messages=[user("y")], metadata={"user_id": "bob"})
        assert resumed(last_run(claude)) is None


def test_the_whole_history_continues_its_conversation_without_an_id(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path)) as live:
        ask(live, [user("one")], conversation=None)
        sdk = anthropic.Anthropic(base_url=live.url, api_key="k", max_retries=0, timeout=20)
        sdk.messages.create(model="claude", max_tokens=10, messages=[user("one")], system="be brief")

        ask(live, [user("one"), assistant(TEXT), user("two")], conversation=None)
        run = last_run(claude)
        assert resumed(run) == SESSION and prompt_in(run["stdin"]) == "two"
        # Anthropic's `system` is part of the history: the same messages under another one are
        # another conversation.
        follow_up = [user("one"), assistant(TEXT), user("two")]
        sdk.messages.create(model="claude", max_tokens=10, messages=follow_up, system="be brief")
        assert resumed(last_run(claude)) == SESSION
        sdk.messages.create(model="claude", max_tokens=10, messages=follow_up, system="be verbose")
        assert resumed(last_run(claude)) is None

        # A history nobody stored, or one that the conversation has moved past, starts afresh.
        ask(live, [user("other"), assistant(TEXT), user("two")], conversation=None)
        assert resumed(last_run(claude)) is None
        ask(live, [user("one"), assistant(TEXT), user("two, again")], conversation=None)
        run = last_run(claude)
        assert resumed(run) is None and "one" in run["stdin"]

        # Whitespace and the order of keys a client re-serialises do not break the match.
        ask(live, [user("one"), assistant(TEXT), user("two"), assistant(f"  {TEXT}\n"), user("3")], conversation=None)
        assert resumed(last_run(claude)) == SESSION


def test_a_named_conversation_belongs_to_the_api_key_that_made_it(claude: FakeRun, tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    for key in ("key-one", "key-two"):
        with LiveServer(settings(tmp_path, sessions=path, api_key=key)) as live:
            sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=20)
            headers = {"X-Llmrun-Session": "shared-name"}
            sdk.chat.completions.create(model="claude", messages=[user("turn")], extra_headers=headers)
            first = resumed(last_run(claude))
            sdk.chat.completions.create(model="claude", messages=[user("next")], extra_headers=headers)
            # Under the second key, the first turn does not reach the first key's conversation.
            assert (first, resumed(last_run(claude))) == (None, SESSION)


def test_mapping_follows_each_successful_turn_and_ignores_failed_ones(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path)) as live:
        store = live.state.store
        ask(live, [user("one")])
        first = store.get("claude_code", named("conv-1"))
        assert first is not None and (first.session_id, first.messages) == (SESSION, 2)

        # A turn that fails mid-way (the tool dies after its first delta) changes nothing.
        history = [user("one"), assistant(TEXT), user("two")]
        claude.scenario("thinking-partial")
        claude.fault("stop_after=6")
        with pytest.raises(openai.APIStatusError):
            ask(live, history)
        assert resumed(last_run(claude)) == SESSION
        assert store.get("claude_code", named("conv-1")) == first

        # The same turn again succeeds; the tool answers in another session, which is kept.
        claude.fault("")
        ask(live, history)
        assert resumed(last_run(claude)) == SESSION
        second = store.get("claude_code", named("conv-1"))
        assert second is not None and (second.session_id, second.messages) == (THINKING_SESSION, 4)

        ask(live, [*history, assistant("Hello after thinking"), user("three")])
        assert resumed(last_run(claude)) == THINKING_SESSION


def test_a_failed_first_turn_stores_nothing(claude: FakeRun, tmp_path: Path) -> None:
    claude.scenario("mock-401-stream")
    with LiveServer(settings(tmp_path)) as live:
        with pytest.raises(openai.AuthenticationError):
            ask(live, [user("one")])
        assert live.state.store.get("claude_code", named("conv-1")) is None
        claude.scenario("mock-stream-json-partial")
        ask(live, [user("one")])
        assert resumed(last_run(claude)) is None


def test_an_edited_history_starts_a_new_session(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path)) as live:
        ask(live, [user("one")])
        edited = [user("one"), assistant("something else"), user("two"), assistant(TEXT), user("three")]
        ask(live, edited)
        run = last_run(claude)
        assert resumed(run) is None
        assert "something else" in run["stdin"]  # the whole history goes to the tool instead
        held = live.state.store.get("claude_code", named("conv-1"))
        assert held is not None and held.messages == 6


def test_a_client_sending_only_new_turns_resumes_too(claude: FakeRun, tmp_path: Path) -> None:
    with LiveServer(settings(tmp_path)) as live:
        ask(live, [user("one")])
        ask(live, [user("two")])
    run = last_run(claude)
    assert resumed(run) == SESSION and prompt_in(run["stdin"]) == "two"


def test_a_conversation_keeps_one_row_as_it_moves_on(claude: FakeRun, tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    with LiveServer(settings(tmp_path, sessions=path)) as live:
        history = [user("one")]
        for text in ("two", "three", "four"):
            ask(live, history, conversation=None)
            history += [assistant(TEXT), user(text)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (1,)


def test_a_session_the_tool_lost_is_replaced_by_the_history(tmp_path: Path) -> None:
    def answer(request: ChatRequest) -> object:
        if request.session_id == "scripted-session-1":
            return SessionNotFound(f"No conversation found with session ID: {request.session_id}")
        return "fine"

    runner = ScriptedRunner(answer)
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        sdk = client(live)
        headers = {"X-Llmrun-Session": "c"}
        sdk.chat.completions.create(model="scripted", messages=[user("one")], extra_headers=headers)
        done = sdk.chat.completions.create(
            model="scripted", messages=[user("one"), assistant("fine"), user("two")], extra_headers=headers
        )
        assert done.choices[0].message.content == "fine"
        lost, replay = runner.requests[-2:]
        assert lost.session_id == "scripted-session-1"
        assert replay.session_id is None and len(replay.conversation()) == 3
        held = live.state.store.get("scripted", named("c"))
        assert held is not None and held.session_id == "scripted-session-2"


async def test_turns_of_one_conversation_run_one_at_a_time(tmp_path: Path) -> None:
    import httpx

    active = most = 0

    def answer(request: ChatRequest) -> str:
        return "ok"

    class Counting(ScriptedRunner):
        async def stream(self, request):
            nonlocal active, most
            active += 1
            most = max(most, active)
            try:
                async for chunk in super().stream(request):
                    yield chunk
            finally:
                active -= 1

    runner = Counting(answer, delay=0.05)
    with LiveServer(settings(tmp_path), runners={"scripted": runner}) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
            body = {"model": "scripted", "messages": [user("hi")]}
            same = [http.post("/v1/chat/completions", json=body, headers={"X-Llmrun-Session": "c"}) for _ in range(3)]
            replies = await asyncio.gather(*same)
            assert [r.status_code for r in replies] == [200, 200, 200]
            assert most == 1
            other = [
                http.post("/v1/chat/completions", json=body, headers={"X-Llmrun-Session": f"c{i}"}) for i in range(3)
            ]
            await asyncio.gather(*other)
            assert most > 1  # different conversations do run side by side


def test_conversations_untouched_for_a_month_are_forgotten(tmp_path: Path) -> None:
    from llmrun.server.sessions import FORGET_AFTER, SessionStore, StoredSession

    store = SessionStore(tmp_path / "sessions.sqlite3")
    store.put("claude_code", "h:old", StoredSession("s-old", 2, None))
    store.put("claude_code", "h:new", StoredSession("s-new", 2, None))
    store._db.execute("UPDATE sessions SET updated = updated - ? WHERE conversation = 'h:old'", (FORGET_AFTER + 60,))
    assert store.prune() == 1
    assert store.get("claude_code", "h:old") is None and store.get("claude_code", "h:new") is not None
    store.close()
