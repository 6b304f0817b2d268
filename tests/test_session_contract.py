"""The session part of the contract: `runner.session()` on every runner, against its fake.

Warm runners (one tool process for the whole conversation) and the others (a process per
turn, resuming the tool's session or replaying the history) keep the same contract; what
differs is checked through what the fake recorded: its invocations, and for a warm fake the
messages it received.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import pytest

import llmrun
from llmrun import ChatChunk
from llmrun.sessions import Session

from .conftest import FakeRun, is_alive, still_alive


def received(fake: FakeRun, pid: int) -> list[dict]:
    """What a warm fake read on its stdin, message by message."""
    path = fake.record / f"received-{pid}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def prompts_sent(fake: FakeRun, pid: int) -> list[str]:
    """The user text of every turn a warm fake was sent."""
    texts = []
    for message in received(fake, pid):
        if message.get("type") == "user":  # stream-json input
            texts.append(" ".join(block.get("text", "") for block in message["message"]["content"]))
        elif message.get("method") == "session/prompt":  # ACP
            texts.append(" ".join(block.get("text", "") for block in message["params"]["prompt"]))
        elif message.get("method") == "turn/start":  # codex's app server
            texts.append(" ".join(block.get("text", "") for block in message["params"]["input"]))
    return texts


def continues(fake: FakeRun, invocation: dict, session_id: str | None, earlier: str) -> bool:
    """Whether a run carried on the conversation: it resumed (or loaded) the tool's session,
    or it was given the earlier turns again."""
    argv = " ".join(invocation["argv"])
    loaded = any(
        message.get("method") in ("session/load", "thread/resume")
        and session_id in (message["params"].get("sessionId"), message["params"].get("threadId"))
        for message in received(fake, invocation["pid"])
    )
    return (bool(session_id) and (session_id in argv or loaded)) or earlier in invocation["stdin"] + argv


async def answer(session: Session, prompt: str) -> list[ChatChunk]:
    async with aclosing(session.stream(prompt)) as stream:
        return [chunk async for chunk in stream]


async def wait_for_invocations(fake: FakeRun, count: int, within: float = 30.0) -> list[dict]:
    """The fake's invocations once `count` have recorded themselves (a started tool may not yet have)."""
    deadline = asyncio.get_running_loop().time() + within
    while len(found := fake.invocations()) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return found


def alive_tools(fake: FakeRun) -> list[int]:
    return [pid for pid in fake.pids() if is_alive(pid)]


# --- two turns, one conversation -----------------------------------------------------------


async def test_two_turns_make_one_conversation(fake: FakeRun) -> None:
    runner = fake.runner()
    async with runner.session() as session:
        first = await session.complete("My name is Ann")
        assert first.content and first.finish_reason == "stop"
        assert session.id and first.session_id == session.id
        second = await session.complete("What is my name?")
        assert second.finish_reason == "stop"
        assert second.session_id == session.id
        invocations = fake.invocations()
        if runner.capabilities.warm:
            (only,) = invocations  # both turns went to one process...
            assert alive_tools(fake) == [only["pid"]]  # ...which is still up, and alone
            assert session.pids() == [only["pid"]]
            assert prompts_sent(fake, only["pid"]) == ["My name is Ann", "What is my name?"]
        else:
            first_run, second_run = invocations
            assert continues(fake, second_run, session.id, "My name is Ann")
    assert still_alive(fake.pids()) == []


async def test_a_request_sends_only_its_new_messages(fake: FakeRun) -> None:
    runner = fake.runner()
    async with runner.session() as session:
        first = await session.complete("My name is Ann")
        history = llmrun.ChatRequest(
            messages=[
                llmrun.Message.user("My name is Ann"),
                llmrun.Message.assistant(first.content),
                llmrun.Message.user("What is my name?"),
            ]
        )
        await session.complete(history)
    if runner.capabilities.warm:
        (only,) = fake.invocations()
        assert prompts_sent(fake, only["pid"]) == ["My name is Ann", "What is my name?"]


async def test_resume_continues_the_tools_session(fake: FakeRun) -> None:
    runner = fake.runner()
    async with runner.session() as session:
        await session.complete("My name is Ann")
        session_id = session.id
    if not runner.capabilities.sessions:
        pytest.skip(f"{runner.display_name} keeps no sessions of its own to resume")
    async with runner.session(resume=session_id) as resumed:
        assert resumed.id == session_id
        response = await resumed.complete("What is my name?")
        assert response.session_id == session_id
    assert continues(fake, fake.invocations()[-1], session_id, "My name is Ann")


# --- interrupt ----------------------------------------------------------------------------


async def test_interrupt_ends_the_turn_and_keeps_the_conversation(fake: FakeRun) -> None:
    fake.delay(0.3)  # an answer slow enough to be cut
    runner = fake.runner()
    async with runner.session() as session:
        chunks: list[ChatChunk] = []
        async with aclosing(session.stream("Count slowly to six")) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 1:
                    await session.interrupt()
        assert chunks[-1].finish_reason == "cancelled"
        assert all(c.finish_reason is None for c in chunks[:-1])
        fake.delay(0.002)
        after = await session.complete("Say hello")
        assert after.finish_reason == "stop" and after.content
        if runner.capabilities.warm:
            (only,) = fake.invocations()  # the process stayed
            assert alive_tools(fake) == [only["pid"]]
    assert still_alive(fake.pids()) == []


async def test_interrupt_without_a_turn_is_harmless(fake: FakeRun) -> None:
    async with fake.runner().session() as session:
        await session.interrupt()
        assert (await session.complete("Say hi")).finish_reason == "stop"


# --- faults -------------------------------------------------------------------------------


async def test_process_dying_between_turns_is_restarted_and_resumed(fake: FakeRun) -> None:
    runner = fake.runner()
    if not runner.capabilities.warm:
        pytest.skip("a process per turn: nothing lives between turns")
    fake.fault("crash_after_turns=1")
    async with runner.session() as session:
        await session.complete("My name is Ann")
        first_pid = fake.invocations()[0]["pid"]
        assert still_alive([first_pid]) == []
        fake.fault("")
        response = await session.complete("What is my name?")
        assert response.finish_reason == "stop"
        first, second = fake.invocations()
        assert continues(fake, second, session.id, "My name is Ann")
        assert alive_tools(fake) == [second["pid"]]
    assert still_alive(fake.pids()) == []


async def test_a_hung_turn_times_out_and_the_next_turn_starts_afresh(fake: FakeRun) -> None:
    runner = fake.runner()
    warm = runner.capabilities.warm
    if warm:
        fake.fault("hang_turn=2,grandchild")  # read when the process starts
    async with runner.session() as session:
        await session.complete("My name is Ann")
        if not warm:
            fake.fault("hang_after=1,grandchild")
        with pytest.raises(llmrun.RunnerTimeout) as caught:
            await session.complete(llmrun.ChatRequest.of("What is my name?", stall_timeout=1))
        assert "stall" in str(caught.value)
        assert caught.value.runner == runner.name
        assert still_alive(fake.pids(), within=5) == []  # the hung process and its child are gone
        fake.fault("")
        assert (await session.complete("Still there?")).finish_reason == "stop"
        assert continues(fake, fake.invocations()[-1], session.id, "My name is Ann")
    assert still_alive(fake.pids()) == []


async def test_caller_leaving_mid_turn_keeps_the_conversation(fake: FakeRun) -> None:
    fake.delay(0.2)
    runner = fake.runner()
    async with runner.session() as session:
        async with aclosing(session.stream("Count slowly to six")) as stream:
            async for chunk in stream:
                if chunk.delta:
                    break  # the client went away
        fake.delay(0.002)
        assert (await session.complete("Say hello")).finish_reason == "stop"
        if runner.capabilities.warm:
            assert len(fake.invocations()) == 1  # interrupted, not killed
    assert still_alive(fake.pids()) == []


async def test_cancelling_the_task_mid_turn_leaves_nothing_after_close(fake: FakeRun) -> None:
    fake.delay(0.3)
    session = fake.runner().session()
    task = asyncio.ensure_future(session.complete("Count slowly to six"))
    await wait_for_invocations(fake, 1)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.aclose()
    assert still_alive(fake.pids()) == []


async def test_close_leaves_no_process_and_refuses_more_turns(fake: FakeRun) -> None:
    session = fake.runner().session()
    await session.complete("Say hi")
    await session.aclose()
    assert still_alive(fake.pids()) == []
    assert session.pids() == []
    with pytest.raises(llmrun.InvalidRequest):
        await session.complete("Again")


async def test_start_prewarms_before_the_first_turn(fake: FakeRun) -> None:
    runner = fake.runner()
    async with runner.session() as session:
        await session.start()
        if runner.capabilities.warm:
            (started,) = await wait_for_invocations(fake, 1)
            assert is_alive(started["pid"]) and prompts_sent(fake, started["pid"]) == []
        else:
            assert fake.invocations() == []  # nothing to keep warm
        await session.complete("Say hi")
        assert len(fake.invocations()) == 1


async def test_empty_turn_is_refused_before_anything_runs(fake: FakeRun) -> None:
    async with fake.runner().session() as session:
        with pytest.raises(llmrun.InvalidRequest):
            await session.complete("   ")
    assert fake.invocations() == []
