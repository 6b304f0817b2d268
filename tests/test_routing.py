"""Routes: runners asked in order until one answers, in the library, the command and the daemon.

The targets are in-process runners whose answers each test decides, so every test can tell
which target was asked, how often, and with what.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from typer.testing import CliRunner

from llmrun.cli.app import app
from llmrun.errors import (
    AuthenticationError,
    BinaryNotFound,
    ConfigError,
    ContextLengthExceeded,
    InvalidRequest,
    LlmrunError,
    ModelNotFound,
    OutputParseError,
    Overloaded,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    RunnerTimeout,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from llmrun.routing import CoolDown, Route, RouteTarget, route_header, route_of, route_tables, targets_of
from llmrun.runners.base import Runner
from llmrun.types import Capabilities, ChatChunk, ChatRequest, ChatResponse, HealthReport

from .cli_support import private_state
from .server_support import LiveServer, ScriptedRunner, SilentRunner, settings

pytestmark = pytest.mark.timeout(60)

REQUEST = ChatRequest.of("hi")


class First(ScriptedRunner):
    name = "first"
    display_name = "First"


class Second(ScriptedRunner):
    name = "second"
    display_name = "Second"


class Third(ScriptedRunner):
    name = "third"
    display_name = "Third"


def failing(error: Any) -> Any:
    """An answer that is a fresh error each time (an error is raised once per run)."""
    return lambda request: error() if callable(error) else error


def rate_limited(retry_after: float | None = None) -> RateLimitError:
    error = RateLimitError("too many requests", runner="first")
    if retry_after is not None:
        error.retry_after = retry_after  # type: ignore[attr-defined]  # as the tools' errors carry it
    return error


class Clock:
    """A clock a test moves by hand, so that cool-downs expire without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def complete(route: Route, request: ChatRequest = REQUEST) -> ChatResponse:
    return asyncio.run(route.complete(request))


# --- fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError,
        ServiceUnavailable,
        Overloaded,
        BinaryNotFound,
        AuthenticationError,
        ModelNotFound,
        RunnerTimeout,
        UnsupportedFeature,
        ProcessFailed,
    ],
)
def test_the_next_target_answers_when_the_first_fails_in_a_way_another_tool_can_fix(
    error: type[RunnerError],
) -> None:
    first = First(failing(lambda: error("it failed", runner="first")))
    second = Second(lambda request: "second's answer")
    response = complete(Route([RouteTarget(first, "big"), RouteTarget(second, "small")]))

    assert response.content == "second's answer"
    assert response.runner == "second"
    assert response.warnings == [f"first/big: {error.__name__}: it failed"]
    assert [r.model for r in first.requests] == ["big"]  # each target is asked for its own model
    assert [r.model for r in second.requests] == ["small"]


@pytest.mark.parametrize("error", [InvalidRequest, ContextLengthExceeded, SessionNotFound, OutputParseError])
def test_an_error_no_other_tool_can_fix_ends_the_route_at_once(error: type[RunnerError]) -> None:
    first = First(failing(lambda: error("no", runner="first")))
    second = Second()
    with pytest.raises(error):
        complete(Route([RouteTarget(first), RouteTarget(second)]))
    assert second.requests == []


class FailsMidAnswer(Runner):
    name = "midway"
    display_name = "Midway"

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        yield ChatChunk(delta="Half an ans")
        raise RateLimitError("limit reached mid-answer", runner=self.name)

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def test_no_fallback_once_a_target_has_begun_to_answer() -> None:
    second = Second()
    route = Route([RouteTarget(FailsMidAnswer()), RouteTarget(second)])

    async def read() -> tuple[list[ChatChunk], BaseException | None]:
        seen: list[ChatChunk] = []
        try:
            async for chunk in route.stream(REQUEST):
                seen.append(chunk)
        except LlmrunError as exc:
            return seen, exc
        return seen, None

    seen, error = asyncio.run(read())
    assert [c.delta for c in seen] == ["Half an ans"]
    assert seen[0].runner == "midway"
    assert isinstance(error, RateLimitError) and str(error) == "limit reached mid-answer"
    assert second.requests == []


def test_every_chunk_names_the_answering_runner_and_the_first_carries_the_warnings() -> None:
    first = First(failing(lambda: ServiceUnavailable("down", runner="first")))
    second = Second(lambda request: "abcdef", pieces=3)
    route = Route([RouteTarget(first), RouteTarget(second)])

    async def read() -> list[ChatChunk]:
        return [chunk async for chunk in route.stream(REQUEST)]

    chunks = asyncio.run(read())
    assert len(chunks) == 4 and chunks[-1].is_final
    assert {c.runner for c in chunks} == {"second"}
    assert chunks[0].warnings == ["first: ServiceUnavailable: down"]
    assert all(not c.warnings for c in chunks[1:])


def test_when_every_target_fails_the_last_error_names_every_failure() -> None:
    first = First(failing(lambda: AuthenticationError("not logged in", runner="first")))
    second = Second(failing(lambda: RateLimitError("quota", runner="second", exit_code=1)))
    with pytest.raises(RateLimitError) as caught:
        complete(Route([RouteTarget(first, "big"), RouteTarget(second)]))
    message = str(caught.value)
    assert "first/big: AuthenticationError: not logged in" in message
    assert "second: RateLimitError: quota" in message
    assert caught.value.runner == "second" and caught.value.process_exit_code == 1


# --- the first chunk's timeout --------------------------------------------------------------


def test_a_target_silent_past_first_chunk_timeout_is_stopped_and_the_next_answers() -> None:
    silent = SilentRunner(silence=3600)
    second = Second(lambda request: "in time")
    route = Route([RouteTarget(silent), RouteTarget(second)], first_chunk_timeout=0.2)

    response = complete(route)
    assert response.content == "in time"
    assert silent.closed.is_set()  # its stream was closed, which is what stops a tool's process
    assert len(response.warnings) == 1 and response.warnings[0].startswith("silent: RunnerTimeout: ")


class PausesAfterItsFirstChunk(Runner):
    name = "pausing"
    display_name = "Pausing"

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        yield ChatChunk(delta="begun, ")
        await asyncio.sleep(0.5)  # longer than the route's first_chunk_timeout
        yield ChatChunk(delta="then finished")
        yield ChatChunk(finish_reason="stop")

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status="ok")


def test_first_chunk_timeout_does_not_cut_an_answer_that_has_begun() -> None:
    second = Second()
    route = Route([RouteTarget(PausesAfterItsFirstChunk()), RouteTarget(second)], first_chunk_timeout=0.2)
    assert complete(route).content == "begun, then finished"
    assert second.requests == []


def test_a_cancel_from_outside_stays_a_cancel_while_the_first_chunk_is_awaited() -> None:
    silent = SilentRunner(silence=3600)
    second = Second()
    route = Route([RouteTarget(silent), RouteTarget(second)], first_chunk_timeout=1800)

    async def main() -> None:
        task = asyncio.ensure_future(route.complete(REQUEST))
        while not silent.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert silent.closed.is_set()
    assert second.requests == []


# --- cool-down -----------------------------------------------------------------------------


def test_a_rate_limited_target_rests_for_its_retry_after_then_is_asked_again() -> None:
    clock = Clock()
    cool_down = CoolDown(clock=clock)
    first = First(failing(lambda: rate_limited(retry_after=30)))
    second = Second()

    def route() -> Route:  # a route per request, sharing one cool-down, as the daemon does
        return Route([RouteTarget(first), RouteTarget(second)], cool_down=cool_down)

    complete(route())
    clock.now += 29
    response = complete(route())
    assert len(first.requests) == 1  # left alone within its retry_after
    assert len(second.requests) == 2
    assert response.warnings and response.warnings[0].startswith("first: CoolingDown: ")
    clock.now += 2
    complete(route())
    assert len(first.requests) == 2


def test_without_retry_after_the_default_cool_down_applies() -> None:
    clock = Clock()
    cool_down = CoolDown(default=60, clock=clock)
    first = First(failing(lambda: rate_limited()))
    second = Second()
    route = Route([RouteTarget(first), RouteTarget(second)], cool_down=cool_down)

    complete(route)
    clock.now += 59
    complete(route)
    assert len(first.requests) == 1
    clock.now += 2
    complete(route)
    assert len(first.requests) == 2


def test_only_rate_limits_start_a_cool_down() -> None:
    cool_down = CoolDown(clock=Clock())
    first = First(failing(lambda: AuthenticationError("log in", runner="first")))
    route = Route([RouteTarget(first), RouteTarget(Second())], cool_down=cool_down)
    complete(route)
    complete(route)
    assert len(first.requests) == 2


def test_each_route_has_its_own_cool_down_unless_given_one() -> None:
    first = First(failing(lambda: rate_limited(retry_after=3600)))
    complete(Route([RouteTarget(first), RouteTarget(Second())]))
    complete(Route([RouteTarget(first), RouteTarget(Second())]))
    assert len(first.requests) == 2


def test_when_every_target_rests_the_one_free_first_is_asked() -> None:
    clock = Clock()
    cool_down = CoolDown(clock=clock)
    first, second, third = First(), Second(lambda request: "second, still resting"), Third()
    targets = [RouteTarget(first), RouteTarget(second), RouteTarget(third)]
    cool_down.note(targets[0], rate_limited(retry_after=300))
    cool_down.note(targets[1], rate_limited(retry_after=10))
    cool_down.note(targets[2], rate_limited(retry_after=100))

    response = complete(Route(targets, cool_down=cool_down))
    assert response.content == "second, still resting"
    assert (len(first.requests), len(second.requests), len(third.requests)) == (0, 1, 0)
    assert [w.split(":")[0] for w in response.warnings] == ["first"]  # skipped before the answer
    assert cool_down.remaining(targets[1]) == 0  # it answered: no longer resting


def test_a_cool_down_is_per_target_model() -> None:
    cool_down = CoolDown(clock=Clock())
    runner = First()
    cool_down.note(RouteTarget(runner, "opus"), rate_limited(retry_after=60))
    assert cool_down.remaining(RouteTarget(runner, "opus")) == 60
    assert cool_down.remaining(RouteTarget(runner, "sonnet")) == 0


# --- a route is a runner --------------------------------------------------------------------


class Seeing(ScriptedRunner):
    name = "seeing"
    display_name = "Seeing"
    capabilities = Capabilities(images=True, json_schema=True, sessions=True, token_streaming=True)


def test_a_route_can_do_what_every_target_can_do_and_keeps_no_sessions() -> None:
    route = Route([RouteTarget(Seeing()), RouteTarget(First())])
    assert isinstance(route, Runner)
    assert route.capabilities.token_streaming
    assert not route.capabilities.images and not route.capabilities.json_schema  # First cannot
    assert not route.capabilities.sessions and not route.capabilities.warm
    assert route.name == "route" and route.default_model is None
    assert route.display_name == "Route (seeing, first)"
    assert route.metadata().display_name == "Route (seeing, first)"


def test_a_route_session_resends_the_history_to_whichever_target_answers() -> None:
    first = First(failing(lambda: ServiceUnavailable("down", runner="first")))
    second = Second(lambda request: f"answer {len(request.messages)}")
    route = Route([RouteTarget(first), RouteTarget(second)])

    async def talk() -> list[str]:
        async with route.session() as session:
            return [(await session.complete(text)).content for text in ("one", "two")]

    assert asyncio.run(talk()) == ["answer 1", "answer 3"]
    assert all(r.session_id is None for r in second.requests)
    assert [m.text for m in second.requests[-1].messages] == ["one", "answer 1", "two"]


def test_a_route_refuses_to_resume_a_tool_session() -> None:
    second = Second()
    with pytest.raises(UnsupportedFeature, match="session"):
        complete(Route([RouteTarget(second)]), ChatRequest.of("hi", session_id="abc"))
    assert second.requests == []


class Health(ScriptedRunner):
    def __init__(self, status: str) -> None:
        super().__init__()
        self.status = status

    async def health(self, probe: bool = False) -> HealthReport:
        return HealthReport(runner=self.name, status=self.status, hint="install it")  # type: ignore[arg-type]


def test_a_route_is_healthy_when_any_target_is() -> None:
    class Missing(Health):
        name = "missing"

    class Fine(Health):
        name = "fine"

    usable = asyncio.run(Route([RouteTarget(Missing("not_installed")), RouteTarget(Fine("ok"))]).health())
    assert usable.ok and usable.message == "missing: not_installed; fine: ok"
    broken = asyncio.run(Route([RouteTarget(Missing("not_installed")), RouteTarget(Fine("error"))]).health())
    assert broken.status == "not_installed" and broken.hint == "install it"


# --- specs and the config file --------------------------------------------------------------


def test_route_tables_check_their_keys() -> None:
    assert route_tables({"routes": {"daily": {"try": ["a", "b/m"], "first_chunk_timeout": 30}}}) == {
        "daily": ["a", "b/m"]
    }
    with pytest.raises(ConfigError, match="unknown key 'tries'"):
        route_tables({"routes": {"daily": {"try": ["a"], "tries": 2}}})
    with pytest.raises(ConfigError, match="first_chunk_timeout"):
        route_tables({"routes": {"daily": {"try": ["a"], "first_chunk_timeout": 0}}})
    with pytest.raises(ConfigError, match="try"):
        route_tables({"routes": {"daily": {"try": []}}})


def test_a_route_of_the_config_brings_its_first_chunk_timeout() -> None:
    runners = {"first": First(), "second": Second()}
    config = {"routes": {"daily": {"try": ["first/big", "second"], "first_chunk_timeout": 12}}}
    route = route_of("daily", config=config, get_runner=runners.__getitem__)
    assert [t.label for t in route.targets] == ["first/big", "second"]
    assert route.first_chunk_timeout == 12
    listed = route_of("first,second:small", config=config, get_runner=runners.__getitem__)
    assert [t.label for t in listed.targets] == ["first", "second/small"] and listed.first_chunk_timeout is None
    expanded = targets_of("daily,first", routes=route_tables(config), get_runner=runners.__getitem__)
    assert [t.label for t in expanded] == ["first/big", "second", "first"]


def test_the_route_header_says_who_answered_and_who_failed_why() -> None:
    chunk = ChatChunk(
        delta="x",
        runner="gemini",
        warnings=["claude_code/sonnet: RateLimitError: slow down", "codex: CoolingDown: left alone"],
    )
    assert route_header(chunk) == "answered=gemini; failed=claude_code/sonnet (rate_limit), codex (cooling_down)"
    assert route_header(ChatChunk(delta="x", runner="gemini")) == "answered=gemini"
    assert route_header(None) is None
    # A model name comes from the client: what a header cannot carry is replaced.
    foreign = ChatChunk(runner="a", warnings=["b/mod\u00e8le: BinaryNotFound: gone"])
    assert route_header(foreign) == "answered=a; failed=b/mod?le (binary_not_found)"


# --- the command ----------------------------------------------------------------------------

cli = CliRunner()


class Limited(ScriptedRunner):
    name = "limited"
    display_name = "Limited"

    def __init__(self) -> None:
        super().__init__(failing(lambda: RateLimitError("quota reached", runner="limited")))


class Answering(ScriptedRunner):
    name = "answering"
    display_name = "Answering"

    def __init__(self) -> None:
        super().__init__(lambda request: f"answered with {request.model}")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`limited` and `answering` as runners of the registry; returns the state file."""
    from llmrun import registry

    for cls in (Limited, Answering):
        monkeypatch.setitem(registry.BUILTIN, cls.name, f"{__name__}:{cls.__name__}")
    return private_state(monkeypatch, tmp_path)


def test_a_route_takes_runners_by_name(registered: Path) -> None:
    route = Route(["limited/big", "answering"])
    assert [t.label for t in route.targets] == ["limited/big", "answering"]
    assert isinstance(route.targets[0].runner, Limited)
    assert complete(route).content == "answered with None"


def test_the_command_falls_back_along_a_route_and_says_so(registered: Path) -> None:
    result = cli.invoke(app, ["chat", "-r", "limited,answering/quick", "--usage", "hi"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "answered with quick\n"
    assert "llmrun: warning: limited: RateLimitError: quota reached" in result.stderr
    assert "via answering" in result.stderr  # the footer names the runner that answered


def test_the_command_json_names_the_runner_and_the_warnings(registered: Path) -> None:
    result = cli.invoke(app, ["chat", "-r", "limited,answering", "--json", "hi"])
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["runner"] == "answering"
    assert body["warnings"] == ["limited: RateLimitError: quota reached"]
    assert "warning" not in result.stderr  # the JSON carries them
    # --continue picks up the conversation with the runner that answered, not with the route.
    remembered = json.loads(registered.read_text())
    assert remembered["last_runner"] == "answering"


def test_the_command_takes_a_route_of_the_config_file(
    registered: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[routes.daily]\ntry = ["limited/big", "answering/small"]\nfirst_chunk_timeout = 30\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    result = cli.invoke(app, ["chat", "-r", "daily", "--json", "hi"])
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["content"] == "answered with small"
    assert body["warnings"] == ["limited/big: RateLimitError: quota reached"]


def test_the_command_refuses_a_model_for_a_whole_route(registered: Path) -> None:
    result = cli.invoke(app, ["chat", "-r", "limited,answering", "-m", "opus", "hi"])
    assert result.exit_code == 2
    assert "claude_code/sonnet,gemini/flash" in result.stderr


def test_the_command_exits_with_the_last_error_when_every_target_fails(registered: Path) -> None:
    result = cli.invoke(app, ["chat", "-r", "limited,limited/other", "hi"])
    assert result.exit_code == RateLimitError.exit_code
    assert "limited: RateLimitError" in result.stderr and "limited/other: RateLimitError" in result.stderr


# --- the daemon -----------------------------------------------------------------------------


@pytest.fixture
def runners() -> dict[str, Runner]:
    return {
        "first": First(failing(lambda: rate_limited(retry_after=600))),
        "second": Second(lambda request: "second answers"),
        "silent": SilentRunner(silence=3600),
    }


@pytest.fixture
def server(runners: dict[str, Runner], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    config = tmp_path / "config.toml"
    config.write_text('[routes.patient]\ntry = ["silent", "second"]\nfirst_chunk_timeout = 0.3\n')
    monkeypatch.setenv("LLMRUN_CONFIG", str(config))
    with LiveServer(settings(tmp_path), runners=runners) as live:
        yield live


@pytest.fixture
def oai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=30)


def test_the_daemon_answers_a_route_and_says_who_answered(oai: openai.OpenAI, runners: dict[str, Any]) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="first/big,second", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "second answers"
    assert completion.model == "first/big,second"
    assert raw.headers["x-llmrun-route"] == "answered=second; failed=first/big (rate_limit)"
    assert (completion.model_extra or {})["warnings"] == ["first/big: RateLimitError: too many requests"]
    assert [r.model for r in runners["first"].requests] == ["big"]


def test_the_daemon_lists_the_routes_of_the_config_as_models(oai: openai.OpenAI) -> None:
    listed = {model.id: model.owned_by for model in oai.models.list()}
    assert listed["patient"] == "route"


def test_the_daemon_streams_a_route_with_the_header(oai: openai.OpenAI) -> None:
    with oai.chat.completions.with_streaming_response.create(
        model="first,second", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        assert response.headers["x-llmrun-route"] == "answered=second; failed=first (rate_limit)"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "second answers"


def test_the_daemon_shares_one_cool_down_between_requests(oai: openai.OpenAI, runners: dict[str, Any]) -> None:
    for _ in range(3):
        raw = oai.chat.completions.with_raw_response.create(
            model="first,second", messages=[{"role": "user", "content": "hi"}]
        )
    assert len(runners["first"].requests) == 1  # its retry_after (600 s) has not passed
    assert len(runners["second"].requests) == 3
    assert raw.headers["x-llmrun-route"] == "answered=second; failed=first (cooling_down)"


def test_the_daemon_takes_a_route_of_the_config_with_its_first_chunk_timeout(
    oai: openai.OpenAI, runners: dict[str, Any]
) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="patient", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "second answers"
    assert raw.headers["x-llmrun-route"] == "answered=second; failed=silent (runner_timeout)"
    assert runners["silent"].closed.wait(10)  # the silent target's stream was closed


def test_the_daemon_reports_a_route_where_every_target_fails_as_the_last_error(
    oai: openai.OpenAI, runners: dict[str, Any]
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="first,first/other", messages=[{"role": "user", "content": "hi"}])
    assert "first: RateLimitError" in str(caught.value) and "first/other: RateLimitError" in str(caught.value)


def test_a_plain_runner_gets_no_route_header(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="second", messages=[{"role": "user", "content": "hi"}])
    assert "x-llmrun-route" not in raw.headers
    assert "warnings" not in (raw.parse().model_extra or {})


def test_the_anthropic_api_says_who_answered_in_the_header(server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0, timeout=30)
    raw = client.messages.with_raw_response.create(
        model="first,second", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmrun-route"] == "answered=second; failed=first (rate_limit)"
    assert raw.parse().content[0].text == "second answers"  # type: ignore[union-attr]


def test_a_conversation_over_a_route_resends_its_history(oai: openai.OpenAI, runners: dict[str, Any]) -> None:
    history: list[Any] = [{"role": "user", "content": "one"}]
    first = oai.chat.completions.create(model="first,second", messages=history)
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "two"}]
    oai.chat.completions.create(model="first,second", messages=history)
    last = runners["second"].requests[-1]
    assert last.session_id is None  # no tool session is resumed through a route
    assert [m.text for m in last.messages] == ["one", "second answers", "two"]
