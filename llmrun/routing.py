"""Several runners named at once: `claude_code/sonnet,gemini/flash`, or a route of the config file.

A target is a runner and the model to ask it for (None: the runner's default). A spec is a
comma-separated list of targets, each `RUNNER`, `RUNNER/MODEL` or `RUNNER:MODEL`, or the name
of a `[routes.NAME]` table of the config file, whose `try` lists targets the same way:

    [routes.daily]
    try = ["claude_code/sonnet", "gemini/flash", "codex"]
    first_chunk_timeout = 30        # seconds a target may take to begin its answer; then the next

A `Route` is a runner made of targets, asked in order: the next one answers when a target
fails in a way another tool can fix (see FALLBACK_ERRORS) before its first chunk. Once a
target has begun to answer, its answer is the route's, errors included. A route keeps no
tool sessions (a session id belongs to one tool): its sessions resend the history each turn.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Union

from .errors import (
    AuthenticationError,
    BinaryNotFound,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ProcessFailed,
    RateLimitError,
    RunnerError,
    RunnerTimeout,
    ServiceUnavailable,
    UnsupportedFeature,
)
from .runners.base import Runner
from .types import Capabilities, ChatChunk, ChatRequest, ChatResponse, HealthReport

FALLBACK_ERRORS: tuple[type[RunnerError], ...] = (
    RateLimitError,
    ServiceUnavailable,
    Overloaded,
    BinaryNotFound,
    AuthenticationError,
    ModelNotFound,
    RunnerTimeout,
    UnsupportedFeature,
    ProcessFailed,
)
"""Failures before a target's first chunk that another tool can fix: its limits, its outage,
its installation or login, a model or feature it lacks, its silence, or its crash before it
said anything. Anything else (a request no tool can take, a context too long, a cancel) is
the route's answer at once."""

COOLING_DOWN = "CoolingDown"
"""The reason a route's warning gives for a target it skipped (see CoolDown)."""

ROUTE_KEYS = ("try", "first_chunk_timeout")


@dataclass(frozen=True)
class RouteTarget:
    runner: Runner
    model: str | None = None

    @property
    def label(self) -> str:
        """`runner/model`, or the runner's name alone when it keeps its default model."""
        return f"{self.runner.name}/{self.model}" if self.model else self.runner.name


def split_spec(spec: str | Sequence[str]) -> list[str]:
    """The targets of a comma-separated spec (or a list of them), stripped, none empty."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [name.strip() for part in parts for name in part.split(",")]
    if not names or any(not name for name in names):
        raise InvalidRequest(f"expected RUNNER[/MODEL] names separated by commas, got {spec!r}")
    return names


def route_tables(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The `[routes.NAME]` tables of a config file: name → its `try` list."""
    routes = config.get("routes", {})
    if not isinstance(routes, dict):
        raise ConfigError("routes: expected tables [routes.NAME] with a `try` list")
    found: dict[str, list[str]] = {}
    for name, table in routes.items():
        table = table if isinstance(table, dict) else {}
        targets = table.get("try")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f'[routes.{name}]: expected try = ["RUNNER/MODEL", ...] (at least one)')
        if unknown := sorted(set(table) - set(ROUTE_KEYS)):
            raise ConfigError(f"[routes.{name}]: unknown key {unknown[0]!r}; expected one of {', '.join(ROUTE_KEYS)}")
        timeout = table.get("first_chunk_timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"[routes.{name}]: first_chunk_timeout: expected a positive number of seconds")
        found[name] = targets
    return found


def is_route(spec: str, routes: Mapping[str, Any]) -> bool:
    """Whether a runner spec names a route (several targets, or a route's name) rather than one runner."""
    return "," in spec or spec.strip() in routes


def targets_of(
    spec: str | Sequence[str],
    *,
    routes: Mapping[str, list[str]] | None = None,
    get_runner: Callable[[str], Runner] | None = None,
) -> list[RouteTarget]:
    """The targets a spec names, in order; route names expand to their `try` lists.

    `routes` defaults to the config file's; `get_runner(name)` to the registry's (the daemon
    passes its own pool's)."""
    if routes is None:
        from .config import load_file

        routes = route_tables(load_file())
    from .registry import get_runner as from_registry

    get = get_runner or from_registry
    targets: list[RouteTarget] = []
    for name in split_spec(spec):
        if name in routes:
            targets += [_target(entry, get) for entry in split_spec(routes[name])]
        else:
            targets.append(_target(name, get))
    return targets


def _target(name: str, get_runner: Callable[[str], Runner]) -> RouteTarget:
    for sep in ("/", ":"):
        if sep in name:
            runner_name, _, model = name.partition(sep)
            return RouteTarget(get_runner(runner_name.strip()), model.strip() or None)
    return RouteTarget(get_runner(name), None)


def route_of(
    spec: str,
    *,
    config: Mapping[str, Any] | None = None,
    get_runner: Callable[[str], Runner] | None = None,
    cool_down: CoolDown | None = None,
) -> Route:
    """The Route a spec names; a route of the config file brings its first_chunk_timeout.

    `config` defaults to the config file (for the daemon: `{"routes": its route tables}`)."""
    if config is None:
        from .config import load_file

        config = load_file()
    routes = route_tables(config)
    table = config.get("routes", {}).get(spec.strip())
    timeout = table.get("first_chunk_timeout") if isinstance(table, dict) else None
    return Route(
        targets_of(spec, routes=routes, get_runner=get_runner),
        first_chunk_timeout=float(timeout) if timeout is not None else None,
        cool_down=cool_down,
    )


class CoolDown:
    """Which targets said "too many requests", and until when a route leaves them alone.

    A target that failed with RateLimitError or Overloaded rests for the error's `retry_after`
    seconds, else for `default` seconds. Share one among the routes that should agree (the
    daemon keeps one for all its requests); each Route has its own unless given one."""

    def __init__(self, default: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.default = default
        self.clock = clock
        self._until: dict[str, float] = {}

    def note(self, target: RouteTarget, error: RunnerError) -> None:
        """Rest `target` if `error` says it is rate-limited."""
        if not isinstance(error, (RateLimitError, Overloaded)):
            return
        wait = getattr(error, "retry_after", None)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait <= 0:
            wait = self.default
        self._until[target.label] = self.clock() + wait

    def remaining(self, target: RouteTarget) -> float:
        """Seconds `target` still rests; 0 when it may be asked."""
        until = self._until.get(target.label)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._until[target.label]
            return 0.0
        return left

    def clear(self, target: RouteTarget) -> None:
        self._until.pop(target.label, None)


class Route(Runner):
    """Targets asked in order until one answers: `Route(["claude_code/sonnet", "gemini"])`.

    Targets are RouteTargets or specs (a runner, `RUNNER/MODEL`, a comma-separated list, a
    route of the config file), which name runners of the registry.

    Every chunk says which runner answered (`runner`); the answer's first chunk carries
    `warnings` naming each target that failed or was skipped before it, and why. When every
    target fails, the last error is raised (its type kept), its message naming every failure.
    """

    name = "route"

    def __init__(
        self,
        targets: str | Sequence[RouteTarget | str],
        *,
        first_chunk_timeout: float | None = None,
        cool_down: CoolDown | None = None,
    ) -> None:
        items = [targets] if isinstance(targets, str) else targets
        self.targets = [found for item in items for found in (targets_of(item) if isinstance(item, str) else [item])]
        if not self.targets:
            raise InvalidRequest("a route needs at least one target")
        self.first_chunk_timeout = first_chunk_timeout
        self.cool_down = cool_down or CoolDown()

    @property
    def display_name(self) -> str:  # type: ignore[override]  # a route is named by its targets
        return f"Route ({', '.join(t.label for t in self.targets)})"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # what every target can do
        every = [t.runner.capabilities for t in self.targets]
        shared = {name: all(getattr(c, name) for c in every) for name in Capabilities.model_fields}
        # A session id belongs to one tool: a route's sessions resend the history instead.
        return Capabilities(**{**shared, "sessions": False, "warm": False, "model_discovery": False})

    async def health(self, probe: bool = False) -> HealthReport:
        """Ok when any target is; the message gives each target's status."""
        started = time.monotonic()
        reports = await asyncio.gather(*(t.runner.health(probe) for t in self.targets))
        usable = next((r for r in reports if r.ok), None)
        chosen = usable or reports[0]
        return HealthReport(
            runner=self.name,
            status=chosen.status,
            latency_ms=int((time.monotonic() - started) * 1000),
            message="; ".join(f"{t.label}: {r.status}" for t, r in zip(self.targets, reports, strict=True)),
            hint=None if usable else chosen.hint,
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        if request.session_id is not None:
            raise UnsupportedFeature(
                "a route does not resume a tool's session (its id belongs to one tool); send the history instead",
                runner=self.name,
            )
        warnings: list[str] = []
        last: RunnerError | None = None
        for target, resting in self._plan():
            if resting:
                warnings.append(f"{target.label}: {COOLING_DOWN}: rate-limited, left alone for {resting:.0f} s more")
                continue
            asked = request.model_copy(update={"model": target.model})
            async with aclosing(target.runner.stream(asked)) as chunks:
                try:
                    first = await self._first_chunk(chunks, target)
                except FALLBACK_ERRORS as exc:
                    self.cool_down.note(target, exc)
                    warnings.append(f"{target.label}: {type(exc).__name__}: {exc}")
                    last = exc
                    continue
                self.cool_down.clear(target)
                answering = target.runner.name
                first = first or ChatChunk(finish_reason="stop")  # an empty answer is still one
                yield first.model_copy(update={"runner": answering, "warnings": [*warnings, *first.warnings]})
                async for chunk in chunks:
                    yield chunk.model_copy(update={"runner": answering})
                return
        assert last is not None  # the plan always asks one target at least
        last.message = "every target of the route failed: " + "; ".join(warnings)
        last.args = (last.message,)
        raise last

    def _plan(self) -> list[tuple[RouteTarget, float]]:
        """Each target with the seconds it still rests (0: ask it). When every target rests,
        the one that is free first is asked anyway: a route always tries something."""
        plan = [(target, self.cool_down.remaining(target)) for target in self.targets]
        if all(resting for _, resting in plan):
            soonest = min(range(len(plan)), key=lambda index: plan[index][1])
            plan[soonest] = (plan[soonest][0], 0.0)
        return plan

    async def _first_chunk(self, chunks: AsyncIterator[ChatChunk], target: RouteTarget) -> ChatChunk | None:
        """The target's first chunk (None if it ends without one). Past first_chunk_timeout
        the wait is cancelled, which closes the target's stream and so stops its tool."""
        limit = self.first_chunk_timeout
        if limit is None:
            return await anext(chunks, None)
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(limit, expire)
        try:
            return await anext(chunks, None)
        except (asyncio.CancelledError, RunnerError):
            if not expired:
                raise
            if sys.version_info >= (3, 11) and task.uncancel() > 0:
                raise  # cancelled from outside as well
            raise RunnerTimeout(
                f"no answer began within {limit:g} s (the route's first_chunk_timeout)", runner=target.runner.name
            ) from None
        finally:
            timer.cancel()


# --- how the daemon says who answered ------------------------------------------------------

_FAILURE = re.compile(r"^(\S+): ([A-Za-z]+): ")
_UNSAFE = re.compile(r"[^\x20-\x7e]")  # a header value is printable ASCII


def route_header(answer: Union[ChatChunk, ChatResponse, None]) -> str | None:
    """`answered=gemini; failed=claude_code/sonnet (rate_limit)`: the x-llmrun-route header
    for a route's answer, from its first chunk (a stream) or the whole response."""
    if answer is None or not answer.runner:
        return None
    parts = [f"answered={answer.runner}"]
    failed = []
    for warning in answer.warnings:
        if match := _FAILURE.match(warning):
            reason = re.sub(r"(?<!^)(?=[A-Z])", "_", match.group(2)).lower().removesuffix("_error")
            failed.append(f"{match.group(1)} ({reason})")
    if failed:
        parts.append("failed=" + ", ".join(failed))
    return _UNSAFE.sub("?", "; ".join(parts))
