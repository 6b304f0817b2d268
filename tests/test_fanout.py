"""Fan-out: several runners asked at once, in the library, the command (`chat --all`) and the daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from io import StringIO
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

import llmrun
from llmrun.cli.app import app
from llmrun.errors import RateLimitError, RunnerTimeout
from llmrun.fanout import FanOutResult, fan_out_stream
from llmrun.routing import RouteTarget
from llmrun.runners.base import Runner
from llmrun.types import Capabilities, ChatChunk, ChatRequest, HealthReport

from .cli_support import chat_interrupted, claude_fake
from .conftest import FakeRun, still_alive
from .server_support import LiveServer, ScriptedRunner, SilentRunner, settings

pytestmark = pytest.mark.timeout(60)

cli = CliRunner()
REQUEST = ChatRequest.of("Which is best?")


class Echo(ScriptedRunner):
    """Answers with its name and the model it was asked for."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__(lambda request: f"{self.name} says {request.model}")


class Other(Echo):
    name = "other"


class Refusing(Runner):
    """Fails at once, as a rate-limited tool does."""

    name = "refusing"
    display_name = "Refusing"
    capabilities = Capabilities(streaming=True)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        raise RateLimitError("usage limit reached", runner=self.name)
        yield ChatChunk()  # an async generator

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """echo, other and refusing as runners of the registry, as the command finds them."""
    from llmrun import registry

    for name, cls in (("echo", "Echo"), ("other", "Other"), ("refusing", "Refusing")):
        monkeypatch.setitem(registry.BUILTIN, name, f"{__name__}:{cls}")


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


async def wait_for(condition: object, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


# --- the library ----------------------------------------------------------------------------


async def test_a_hanging_target_holds_none_of_the_others_and_closing_stops_it() -> None:
    fast, hanging = ScriptedRunner(lambda r: "fast answer"), SilentRunner(silence=3600)
    targets = [RouteTarget(hanging), RouteTarget(fast, "m1"), RouteTarget(Refusing())]
    finished: dict[int, FanOutResult] = {}
    async with aclosing(fan_out_stream(targets, REQUEST)) as events:
        async for index, item in events:
            if isinstance(item, FanOutResult):
                finished[index] = item
            if len(finished) == 2:
                break
        # The fast and the failing target are done while the hanging one still runs.
        assert set(finished) == {1, 2} and not hanging.closed.is_set() and hanging.requests
    assert hanging.closed.is_set()  # leaving the fan-out closed its stream
    assert finished[1].response is not None and finished[1].response.content == "fast answer"
    assert finished[1].first_chunk_ms is not None and fast.requests[0].model == "m1"
    assert isinstance(finished[2].error, RateLimitError) and finished[2].response is None


async def test_timeout_bounds_each_target_and_order_is_kept() -> None:
    hanging = SilentRunner(silence=3600)
    targets = [RouteTarget(Refusing()), RouteTarget(hanging), RouteTarget(ScriptedRunner(), "x")]
    results = await llmrun.fan_out(targets, REQUEST, timeout=0.5)
    assert [r.label for r in results] == ["refusing", "silent", "scripted/x"]
    assert isinstance(results[0].error, RateLimitError)
    assert isinstance(results[1].error, RunnerTimeout) and hanging.closed.is_set()
    assert results[1].first_chunk_ms is None
    assert results[2].ok and results[2].response is not None
    assert results[2].response.content == "Hello from script" and results[2].response.usage.output_tokens == 3


async def test_timeout_kills_a_hanging_tool(claude: FakeRun) -> None:
    claude.fault("hang_after=2")
    targets = [RouteTarget(claude.runner()), RouteTarget(ScriptedRunner())]
    results = await llmrun.fan_out(targets, REQUEST, timeout=3)
    assert isinstance(results[0].error, RunnerTimeout) and results[1].ok
    (invocation,) = claude.invocations()
    assert still_alive([invocation["pid"]]) == []


async def test_cancelling_the_fan_out_closes_every_stream() -> None:
    runners = [SilentRunner(silence=3600), SilentRunner(silence=3600)]
    task = asyncio.ensure_future(llmrun.fan_out([RouteTarget(r) for r in runners], REQUEST))
    await wait_for(lambda: all(r.requests for r in runners), "both targets asked")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(r.closed.is_set() for r in runners)


async def test_a_spec_names_the_targets(registered: None) -> None:
    results = await llmrun.fan_out("echo/m1, other", REQUEST)
    assert [r.response.content for r in results if r.response] == ["echo says m1", "other says None"]


async def test_no_targets_is_refused() -> None:
    with pytest.raises(llmrun.InvalidRequest):
        await llmrun.fan_out([], REQUEST)


# --- the command ----------------------------------------------------------------------------


def test_all_json_is_a_list_in_target_order(registered: None) -> None:
    result = cli.invoke(app, ["chat", "-r", "refusing,echo/m1,other", "--all", "--json", "hi"])
    assert result.exit_code == RateLimitError.exit_code, result.output  # the first failure's code
    failed, echo, other = json.loads(result.stdout)
    assert failed == {
        "runner": "refusing",
        "model": None,
        "error": {"type": "RateLimitError", "message": "usage limit reached"},
    }
    assert echo["content"] == "echo says m1" and echo["runner"] == "echo" and echo["usage"]["output_tokens"] == 3
    assert other["content"] == "other says None" and other["runner"] == "other"


def test_all_to_a_pipe_prints_each_answer_under_a_header(registered: None, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[routes.pair]\ntry = ["echo/m1", "other/m2"]\n')
    result = cli.invoke(app, ["chat", "-r", "pair", "--all", "hi"], env={"LLMRUN_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    assert len(blocks) == 2
    answers = {}
    for block in blocks:
        header, body = block.split("\n", 1)
        assert header.startswith("==> ") and header.endswith(" <==") and " in, 3 out" in header
        answers[header[4:].split(" ")[0]] = body.strip()
    assert answers == {"echo/m1": "echo says m1", "other/m2": "other says m2"}
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")


def test_all_shows_an_error_in_its_place(registered: None) -> None:
    result = cli.invoke(app, ["chat", "-r", "echo,refusing", "--all", "--no-stream", "hi"])
    assert result.exit_code == RateLimitError.exit_code
    assert "==> refusing (" in result.stdout
    assert "llmrun: RateLimitError: usage limit reached" in result.stdout
    assert "echo says None" in result.stdout


@pytest.mark.parametrize(
    "extra",
    [["-m", "sonnet"], ["--jsonl"], ["--continue"]],
    ids=["model", "jsonl", "continue"],
)
def test_all_refuses_what_does_not_apply(registered: None, extra: list[str]) -> None:
    result = cli.invoke(app, ["chat", "-r", "echo,other", "--all", *extra, "hi"])
    assert result.exit_code == 2, result.output


def test_columns_side_by_side(registered: None) -> None:
    from llmrun.cli.chat import ChatOptions
    from llmrun.cli.fanout import side_by_side
    from llmrun.routing import targets_of

    out = StringIO()
    targets = targets_of("echo/m1,refusing")
    results = asyncio.run(side_by_side(targets, REQUEST, ChatOptions(), out))
    assert [r.ok for r in results] == [True, False]
    drawn = out.getvalue()
    for text in ("echo/m1", "echo says m1", "refusing", "RateLimitError: usage limit reached", "3 out"):
        assert text in drawn
    top = next(line for line in drawn.splitlines() if "echo/m1" in line)
    assert top.index("echo/m1") < top.index("refusing")  # one row: side by side


def test_ctrl_c_stops_every_target(claude: FakeRun) -> None:
    returncode, err, started = chat_interrupted(claude, "-r", "claude_code,claude_code/opus", "--all", "hi", runs=2)
    assert len(started) == 2
    assert returncode == 130, err
    assert still_alive(claude.pids()) == []


# --- the daemon -----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    runners = {
        "scripted": ScriptedRunner(lambda r: f"scripted says {r.model}"),
        "silent": SilentRunner(error=RateLimitError("usage limit reached", runner="silent")),
    }
    with LiveServer(settings(tmp_path), runners=runners) as live:
        yield live


def test_a_list_of_models_answers_a_multiplex(server: LiveServer) -> None:
    body = {"model": ["scripted/a", "silent", "nope/x", "scripted/b"], "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    multiplex = response.json()
    assert multiplex["object"] == "chat.completion.multiplex"
    assert multiplex["id"].startswith("chatcmpl-") and isinstance(multiplex["created"], int)
    assert multiplex["summary"] == "2 of 4 models answered; failed: silent, nope/x"
    first, limited, unknown, last = multiplex["responses"]
    for entry, text in ((first, "scripted says a"), (last, "scripted says b")):
        assert entry["object"] == "chat.completion"
        assert entry["choices"][0]["message"]["content"] == text
        assert entry["usage"]["completion_tokens"] == 3
    assert first["model"] == "scripted/a" and first["id"] != last["id"]
    assert limited["model"] == "silent" and limited["error"]["code"] == "rate_limit_exceeded"
    assert unknown["model"] == "nope/x" and unknown["error"]["code"] == "model_not_found"
    assert all(isinstance(entry["duration_ms"], int) for entry in multiplex["responses"])


def test_a_multiplex_cannot_stream(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=["scripted", "silent"],  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    assert refused.value.status_code == 400
    assert "streaming is not supported when `model` is a list" in refused.value.message
    runner = server.state.pool.get("scripted")
    assert isinstance(runner, ScriptedRunner) and runner.requests == []  # nothing ran
