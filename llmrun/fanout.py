"""Ask several runners the same thing at once, and keep every answer.

    results = await llmrun.fan_out("claude_code/sonnet,gemini,codex", ChatRequest.of("Hi"))

Each target runs in a task of its own, so a target that fails or hangs holds none of the
others; `timeout` bounds each target's run, after which its stream is closed (which stops
its tool). Closing or cancelling the fan-out closes every stream that is still going.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from .errors import InvalidRequest, LlmrunError, RunnerError, RunnerTimeout
from .routing import RouteTarget, targets_of
from .types import ChatChunk, ChatRequest, ChatResponse


@dataclass(frozen=True)
class FanOutResult:
    """What one target answered, or how it failed, and how long it took."""

    target: RouteTarget
    response: ChatResponse | None
    """The whole answer (its usage and cost included); None when the target failed."""
    error: LlmrunError | None
    first_chunk_ms: int | None
    """Time from the start to the target's first chunk; None when none came."""
    duration_ms: int

    @property
    def label(self) -> str:
        return self.target.label

    @property
    def ok(self) -> bool:
        return self.error is None


FanOutEvent = tuple[int, ChatChunk | FanOutResult]
"""(index of the target, a chunk of its answer) as chunks come, then (index, its result) once."""


def _targets(targets: str | Sequence[RouteTarget]) -> list[RouteTarget]:
    found = targets_of(targets) if isinstance(targets, str) else list(targets)
    if not found:
        raise InvalidRequest("fan-out needs at least one target")
    return found


async def fan_out_stream(
    targets: str | Sequence[RouteTarget], request: ChatRequest, *, timeout: float | None = None
) -> AsyncGenerator[FanOutEvent, None]:
    """Every target's chunks as they come, each tagged with the target's index, and each
    target's `FanOutResult` when it ends. Use it under `contextlib.aclosing` so that
    leaving early stops the targets still running."""
    if timeout is not None and timeout <= 0:
        raise InvalidRequest("the fan-out timeout must be a positive number of seconds")
    chosen = _targets(targets)
    events: asyncio.Queue[FanOutEvent] = asyncio.Queue()
    tasks = [asyncio.ensure_future(_run(i, target, request, timeout, events)) for i, target in enumerate(chosen)]
    try:
        finished = 0
        while finished < len(tasks):
            index, item = await events.get()
            yield index, item
            finished += isinstance(item, FanOutResult)
    finally:
        # Leaving early (closed, cancelled, Ctrl-C): stop every target and wait until each
        # stream is closed, so that no tool outlives the fan-out.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def fan_out(
    targets: str | Sequence[RouteTarget], request: ChatRequest, *, timeout: float | None = None
) -> list[FanOutResult]:
    """Ask every target at once; one result per target, in the targets' order.

    `targets` are RouteTargets or a spec (`"claude_code/sonnet,gemini"`, or a route's name);
    each is asked with the request's model replaced by its own (None: its default)."""
    chosen = _targets(targets)
    results: list[FanOutResult | None] = [None] * len(chosen)
    async with aclosing(fan_out_stream(chosen, request, timeout=timeout)) as events:
        async for index, item in events:
            if isinstance(item, FanOutResult):
                results[index] = item
    return [result for result in results if result is not None]


async def _run(
    index: int,
    target: RouteTarget,
    request: ChatRequest,
    timeout: float | None,
    events: asyncio.Queue[FanOutEvent],
) -> None:
    started = time.monotonic()
    first: float | None = None
    chunks: list[ChatChunk] = []

    async def ask() -> LlmrunError | None:
        nonlocal first
        try:
            stream = target.runner.stream(request.model_copy(update={"model": target.model}))
            async with aclosing(stream) as chunk_stream:
                async for chunk in chunk_stream:
                    if first is None:
                        first = time.monotonic()
                    chunks.append(chunk)
                    events.put_nowait((index, chunk))
        except LlmrunError as exc:
            return exc
        except Exception as exc:  # a broken runner must not take the fan-out down
            error = RunnerError(f"{type(exc).__name__}: {exc}", runner=target.runner.name)
            error.__cause__ = exc
            return error
        return None

    try:
        # On timeout, wait_for cancels ask() and waits for it: its stream is closed by then.
        error = await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        error = RunnerTimeout(f"{target.label} did not finish within {timeout:g} s", runner=target.runner.name)
    duration = int((time.monotonic() - started) * 1000)
    response = None if error else ChatResponse.from_chunks(chunks, runner=target.runner.name, duration_ms=duration)
    first_ms = int((first - started) * 1000) if first is not None else None
    events.put_nowait((index, FanOutResult(target, response, error, first_ms, duration)))
