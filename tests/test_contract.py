"""The contract every runner keeps, checked against its fake CLI replaying real captures.

Parametrised by runner (see FAKE_TOOLS in conftest): a new runner joins by adding its
fake there, and must pass all of this unchanged.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

import llmrun
from llmrun import ChatRequest

from .conftest import FIXTURES, FakeRun, still_alive


def request(**fields: object) -> ChatRequest:
    return ChatRequest.of("Say hi", **fields)  # type: ignore[arg-type]


def ok_transcript_lines(fake: FakeRun) -> int:
    """How many lines the tool prints for a good answer."""
    return len((FIXTURES / fake.tool.tool / f"{fake.tool.ok_scenario}.stdout").read_bytes().splitlines())


async def collect(runner: llmrun.Runner, req: ChatRequest) -> list[llmrun.ChatChunk]:
    async with aclosing(runner.stream(req)) as stream:
        return [chunk async for chunk in stream]


# --- the happy path ---------------------------------------------------------------------


async def test_complete_equals_concatenated_stream(fake: FakeRun) -> None:
    runner = fake.runner()
    chunks = await collect(runner, request())
    response = await runner.complete(request())
    assert "".join(c.delta for c in chunks) == response.content == fake.tool.ok_text
    assert "".join(c.thinking for c in chunks) == response.thinking
    assert response.runner == fake.tool.runner


async def test_last_chunk_carries_finish_reason_and_usage(fake: FakeRun) -> None:
    chunks = await collect(fake.runner(), request())
    *body, last = chunks
    assert last.finish_reason == "stop"
    if fake.runner().capabilities.usage:  # some tools count no tokens (kiro-cli reports credits)
        assert last.usage is not None and last.usage.output_tokens > 0 and last.usage.input_tokens > 0
    assert last.session_id
    assert all(c.finish_reason is None and c.usage is None for c in body)


async def test_deltas_arrive_before_the_process_ends(fake: FakeRun) -> None:
    if ok_transcript_lines(fake) < 2:
        pytest.skip("the tool prints its whole answer as its only line, when it is done")
    fake.delay(0.05)  # paced like a model answering
    runner = fake.runner()
    async with aclosing(runner.stream(request())) as stream:
        async for chunk in stream:
            if chunk.delta:
                (pid,) = [inv["pid"] for inv in fake.invocations()]
                assert not fake.exited(pid), "the first delta came only after the tool had finished"
                break
        else:
            pytest.fail("no delta at all")


async def test_prompt_goes_over_stdin_not_argv(fake: FakeRun) -> None:
    prompt = "-starts with a dash and is " + "long " * 40_000  # 200 KB, over the argv limit
    await fake.runner().complete(ChatRequest.of(prompt))
    (invocation,) = fake.invocations()
    # On stdin, or in a private file named on the command line for a tool that takes no stdin.
    assert prompt in invocation["stdin"] or any(prompt in text for text in invocation["files"].values())
    assert not any("long long" in arg for arg in invocation["argv"])


async def test_garbage_and_unknown_events_are_skipped(fake: FakeRun) -> None:
    fake.fault("garbage")
    response = await fake.runner().complete(request())
    assert response.content == fake.tool.ok_text


async def test_multibyte_characters_split_across_writes(fake: FakeRun) -> None:
    if fake.tool.multibyte_scenario is None:
        pytest.skip("no multibyte transcript for this tool")
    fake.scenario(fake.tool.multibyte_scenario)
    fake.fault("split_writes")
    response = await fake.runner().complete(request())
    assert response.content == fake.tool.multibyte_text


async def test_invalid_utf8_is_replaced_not_fatal(fake: FakeRun) -> None:
    fake.fault("bad_utf8")
    response = await fake.runner().complete(request())
    assert "\ufffd" in response.content


async def test_stderr_flood_neither_blocks_nor_grows_without_bound(fake: FakeRun) -> None:
    fake.fault("stderr_flood=8000000,stop_after=1,exit=3")
    with pytest.raises(llmrun.RunnerError) as caught:
        await fake.runner().complete(request())
    error = caught.value
    assert error.process_exit_code == 3
    assert error.stderr.rstrip().endswith("FLOOD-END")
    assert len(error.stderr) <= 64 * 1024


async def test_large_line_under_the_cap_is_fine(fake: FakeRun) -> None:
    fake.fault("huge_line=5000000")
    response = await fake.runner().complete(request())
    assert response.content == fake.tool.ok_text


async def test_line_over_the_cap_is_output_too_large_and_runner_recovers(fake: FakeRun) -> None:
    fake.fault("huge_line=100000000")  # 100 MB on one line, over the 64 MiB default cap
    runner = fake.runner()
    with pytest.raises(llmrun.OutputTooLarge):
        await runner.complete(request())
    assert still_alive(fake.pids()) == []
    fake.fault("")
    assert (await runner.complete(request())).content == fake.tool.ok_text


# --- failures end in typed errors that carry the process facts ----------------------------


async def test_error_reported_in_output_is_typed(fake: FakeRun) -> None:
    for scenario, error_name in fake.tool.error_scenarios.items():
        fake.scenario(scenario)
        with pytest.raises(llmrun.RunnerError) as caught:
            await fake.runner().complete(request())
        assert type(caught.value).__name__ == error_name, scenario
        assert caught.value.runner == fake.tool.runner
        assert caught.value.process_exit_code is not None


async def test_crash_without_explanation_is_process_failed_with_stderr(fake: FakeRun) -> None:
    fake.fault("stop_after=1,exit=3,stderr=segfault in the tool")
    with pytest.raises(llmrun.ProcessFailed) as caught:
        await fake.runner().complete(request())
    assert caught.value.process_exit_code == 3
    assert "segfault in the tool" in caught.value.stderr
    assert "segfault in the tool" in str(caught.value)


async def test_clean_exit_with_truncated_output_is_not_success(fake: FakeRun) -> None:
    # Cut before the end, also for a tool whose whole output is one or two lines.
    fake.fault(f"stop_after={min(3, ok_transcript_lines(fake) - 1)},exit=0")
    with pytest.raises(llmrun.OutputParseError):
        await fake.runner().complete(request())


async def test_runner_works_again_after_an_error(fake: FakeRun) -> None:
    runner = fake.runner()
    fake.fault("stop_after=1,exit=1")
    with pytest.raises(llmrun.RunnerError):
        await runner.complete(request())
    fake.fault("")
    assert (await runner.complete(request())).content == fake.tool.ok_text


# --- nothing is left behind ---------------------------------------------------------------


async def test_stall_timeout_kills_the_whole_group(fake: FakeRun) -> None:
    fake.fault("hang_after=1,grandchild,ignore_sigterm")
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await fake.runner().complete(request(stall_timeout=1))
    assert "stall" in str(caught.value)
    assert len(fake.pids()) == 2
    assert still_alive(fake.pids(), within=1) == []


async def test_hard_timeout(fake: FakeRun) -> None:
    # Output keeps coming (or, from a tool that prints one line, is not done yet), so only
    # the hard limit can end it.
    fake.delay(0.5 if ok_transcript_lines(fake) > 2 else 2.0)
    with pytest.raises(llmrun.RunnerTimeout) as caught:
        await fake.runner().complete(request(timeout=1, stall_timeout=30))
    assert "time limit" in str(caught.value)
    assert still_alive(fake.pids(), within=1) == []


async def test_closing_the_stream_kills_the_process(fake: FakeRun) -> None:
    fake.delay(0.2)
    fake.fault("grandchild,ignore_sigterm")
    async with aclosing(fake.runner().stream(request())) as stream:
        async for chunk in stream:
            if chunk.delta:
                break
    assert len(fake.pids()) == 2
    assert still_alive(fake.pids(), within=1) == []


async def test_task_cancellation_kills_the_process(fake: FakeRun) -> None:
    fake.fault("hang_after=2,grandchild")
    task = asyncio.ensure_future(fake.runner().complete(request()))
    while len(fake.pids()) < 2:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert still_alive(fake.pids(), within=1) == []


async def test_grandchild_holding_stdout_does_not_hold_the_answer(fake: FakeRun) -> None:
    # The tool finishes, but something it started keeps the pipe open (as copilot's loader does).
    fake.fault("grandchild=inherit")
    response = await asyncio.wait_for(fake.runner().complete(request()), timeout=20)
    assert response.content == fake.tool.ok_text
    assert still_alive(fake.pids(), within=1) == []


async def test_missing_binary_says_how_to_install(fake: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"LLMRUN_{fake.tool.runner.upper()}_BIN", "/nonexistent/tool")
    with pytest.raises(llmrun.BinaryNotFound) as caught:
        await fake.runner().complete(request())
    assert caught.value.hint and "install" in caught.value.hint


async def test_health_of_the_fake_is_ok(fake: FakeRun) -> None:
    report = await fake.runner().health()
    assert report.status == "ok", report
    assert report.version and report.binary == str(fake.tool.binary)
