"""Sampling parameters: honoured by the tool, enforced by llmrun, or named in the answer."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import ClassVar

import pytest

from llmrun import ChatChunk, ChatRequest, HealthReport, InvalidRequest, Runner, UnsupportedFeature, Usage
from llmrun.parameters import enforced, how_honoured, ignored_params_header

from .conftest import FAKE_TOOLS, FakeRun, is_alive


class ScriptedRunner(Runner):
    """Answers with the given deltas, one chunk each, and notes how far it was read."""

    name = "scripted"
    display_name = "Scripted"
    honoured_parameters: ClassVar[dict[str, str]] = {"temperature": "--temperature"}

    def __init__(self, deltas: list[str]) -> None:
        self.deltas = deltas
        self.sent = 0
        self.closed_early = False

    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        return enforced(self, request, self._run())

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        finished = False
        try:
            for delta in self.deltas:
                self.sent += 1
                yield ChatChunk(delta=delta, session_id="s-1" if self.sent == 1 else None)
            finished = True
            yield ChatChunk(finish_reason="stop", usage=Usage(input_tokens=3, output_tokens=9))
        finally:
            self.closed_early = not finished

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


async def answer(runner: ScriptedRunner, **fields: object) -> list[ChatChunk]:
    async with aclosing(runner.stream(ChatRequest.of("q", **fields))) as chunks:  # type: ignore[arg-type]
        return [chunk async for chunk in chunks]


async def test_the_answer_ends_before_a_stop_sequence_split_across_chunks() -> None:
    runner = ScriptedRunner(["Hello wor", "ld. ST", "OP and more", " and more"])
    response = await runner.complete(ChatRequest.of("q", stop=["STOP", "never"]))
    assert response.content == "Hello world. "
    assert response.finish_reason == "stop"
    assert response.session_id == "s-1"  # kept from the chunk that carried it
    assert runner.sent == 3 and runner.closed_early  # the rest was not read: the run was stopped


async def test_text_that_only_looks_like_a_stop_sequence_is_passed_on() -> None:
    runner = ScriptedRunner(["one ST", "ILL two", " ST"])
    response = await runner.complete(ChatRequest.of("q", stop=["STOP"]))
    assert response.content == "one STILL two ST"  # held back, then given once the answer ended
    assert response.usage.output_tokens == 9 and not runner.closed_early


async def test_a_stop_at_the_very_start_gives_an_empty_answer() -> None:
    response = await ScriptedRunner(["STOP now"]).complete(ChatRequest.of("q", stop=["STOP"]))
    assert response.content == "" and response.finish_reason == "stop"


async def test_max_tokens_is_cut_by_an_estimate_where_the_tool_has_no_limit() -> None:
    runner = ScriptedRunner(["a" * 30, "b" * 30, "c" * 30])
    response = await runner.complete(ChatRequest.of("q", max_tokens=10))
    assert response.content == "a" * 30 + "b" * 10  # 10 tokens of about 4 characters
    assert response.finish_reason == "length" and runner.closed_early


async def test_max_tokens_the_tool_honours_is_left_to_the_tool() -> None:
    class Limited(ScriptedRunner):
        honoured_parameters: ClassVar[dict[str, str]] = {"max_tokens": "--max-tokens"}

    response = await Limited(["a" * 30, "b" * 30]).complete(ChatRequest.of("q", max_tokens=10))
    assert response.content == "a" * 30 + "b" * 30 and response.finish_reason == "stop"


async def test_an_ignored_parameter_is_named_in_the_answer_and_the_header() -> None:
    chunks = await answer(ScriptedRunner(["hi"]), temperature=0.2, top_p=0.5, seed=7)
    assert chunks[0].warnings == [
        "ignored parameter top_p: Scripted has no way to set it",
        "ignored parameter seed: Scripted has no way to set it",
    ]
    assert ignored_params_header(chunks[0]) == "top_p, seed"  # temperature is the tool's own
    response = await ScriptedRunner(["hi"]).complete(ChatRequest.of("q", presence_penalty=1.0))
    assert response.warnings == ["ignored parameter presence_penalty: Scripted has no way to set it"]
    assert ignored_params_header(response) == "presence_penalty"


async def test_nothing_ignored_means_no_warning_and_no_header() -> None:
    response = await ScriptedRunner(["hi"]).complete(ChatRequest.of("q", temperature=0.1, stop=["x"], max_tokens=5))
    assert response.warnings == [] and ignored_params_header(response) is None


async def test_strict_parameters_refuse_before_the_run() -> None:
    runner = ScriptedRunner(["hi"])
    with pytest.raises(UnsupportedFeature, match="Scripted cannot honour seed"):
        await runner.complete(ChatRequest.of("q", seed=1, strict_params=True))
    assert runner.sent == 0
    await runner.complete(ChatRequest.of("q", temperature=1.0, stop=["x"], strict_params=True))  # all honoured


async def test_a_limit_below_one_token_is_refused() -> None:
    runner = ScriptedRunner(["hi"])
    with pytest.raises(InvalidRequest, match="max_tokens must be at least 1, not 0"):
        await runner.complete(ChatRequest.of("q", max_tokens=0))
    assert runner.sent == 0


def test_how_each_parameter_is_honoured_is_listed() -> None:
    honoured = how_honoured(ScriptedRunner([]))
    assert honoured["temperature"] == "--temperature"
    assert set(honoured) == {"temperature", "stop", "max_tokens"}


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRun:
    return FakeRun(FAKE_TOOLS[0], monkeypatch, tmp_path)


async def test_a_real_run_is_stopped_at_the_stop_sequence(claude: FakeRun) -> None:
    claude.scenario("mock-stream-json-partial")
    claude.delay(0.2)
    response = await claude.runner().complete(ChatRequest.of("q", stop=["from"]))
    assert response.content == "Hello " and response.finish_reason == "stop"
    (pid,) = claude.pids()
    assert not is_alive(pid) and not claude.exited(pid)  # stopped before its last lines, not ended


async def test_a_warm_session_applies_stop_and_names_what_its_process_cannot_take(claude: FakeRun) -> None:
    runner = claude.runner()
    async with runner.session() as session:
        first = await session.complete(ChatRequest.of("q", stop=[" you"], temperature=0.5))
        second = await session.complete("and then?")  # the stopped turn was wound up; the process answers on
        pids = session.pids()
    assert first.content == "Nice to meet" and first.finish_reason == "stop"
    # The process started before the turn: even what the tool takes at start-up cannot reach it.
    assert first.warnings == ["ignored parameter temperature: Claude Code has no way to set it"]
    assert second.content and second.finish_reason == "stop" and second.warnings == []
    assert len(pids) == 1 and len(claude.invocations()) == 1  # one warm process for both turns
