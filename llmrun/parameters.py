"""Sampling parameters: passed where the tool takes them, enforced by llmrun where it can, and
never dropped without the answer saying so.

Each runner declares the parameters its tool honours and how (`Runner.honoured_parameters`).
`stop` is llmrun's own for every runner: the answer ends before the first stop sequence and the
run is stopped. `max_tokens`, where the tool has no limit of its own, is cut by llmrun at an
estimate of CHARS_PER_TOKEN characters a token. Anything else a runner cannot honour runs
without it and the answer's first chunk carries a warning naming it, or, with
`ChatRequest.strict_params`, the request is refused with UnsupportedFeature.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Union

from .errors import InvalidRequest, UnsupportedFeature
from .runners.base import Runner, partial_marker_at_end
from .types import SAMPLING_PARAMETERS, ChatChunk, ChatRequest, ChatResponse, FinishReason

log = logging.getLogger("llmrun")

ENFORCED_BY_LLMRUN = {
    "stop": "llmrun ends the answer before the first stop sequence",
    "max_tokens": "llmrun cuts the answer at about 4 characters a token",
}
CHARS_PER_TOKEN = 4
"""A rough count of English text; a limit enforced by llmrun is an estimate, never exact."""

_IGNORED = re.compile(r"^ignored parameter ([a-z_]+):")


def asked(request: ChatRequest) -> list[str]:
    """The sampling parameters the request sets."""
    return [name for name in SAMPLING_PARAMETERS if getattr(request, name) not in (None, [])]


def how_honoured(runner: Runner) -> dict[str, str]:
    """Every parameter the runner honours, and how: its tool's own, then llmrun's."""
    return {**ENFORCED_BY_LLMRUN, **runner.honoured_parameters}


def ignored(honoured: Mapping[str, str], request: ChatRequest) -> list[str]:
    """The request's parameters that neither the tool nor llmrun can honour."""
    return [name for name in asked(request) if name not in honoured and name not in ENFORCED_BY_LLMRUN]


def warnings_for(runner: Runner, request: ChatRequest, honoured: Mapping[str, str] | None = None) -> list[str]:
    """What the answer must say it ignored; raises UnsupportedFeature instead under `strict_params`."""
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, not {request.max_tokens}", runner=runner.name)
    names = ignored(runner.honoured_parameters if honoured is None else honoured, request)
    if not names:
        return []
    if request.strict_params:
        raise UnsupportedFeature(
            f"{runner.display_name} cannot honour {', '.join(names)} (strict parameters are on; "
            "leave them out, or allow them to be ignored)",
            runner=runner.name,
        )
    warnings = [f"ignored parameter {name}: {runner.display_name} has no way to set it" for name in names]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def ignored_params_header(answer: Union[ChatChunk, ChatResponse, None]) -> str | None:
    """The x-llmrun-ignored-params header: the parameters the answer's warnings say were ignored."""
    if answer is None:
        return None
    names = [match.group(1) for warning in answer.warnings if (match := _IGNORED.match(warning))]
    return ", ".join(names) or None


class _Cutter:
    """Where llmrun ends an answer: before the first stop sequence, or at the length limit.

    Text that may be the start of a stop sequence is held back until the next piece tells."""

    def __init__(self, stops: list[str], limit: int | None) -> None:
        self.stops = stops
        self.limit = limit
        self.held = ""
        self.passed = 0

    def feed(self, delta: str) -> tuple[str, FinishReason | None]:
        """The text to pass on now, and why the answer ends after it (None: it goes on)."""
        text = self.held + delta
        ends: list[tuple[int, FinishReason]] = [(at, "stop") for stop in self.stops if (at := text.find(stop)) >= 0]
        if self.limit is not None and self.passed + len(text) > self.limit:
            ends.append((self.limit - self.passed, "length"))
        if ends:
            at, reason = min(ends)
            self.held = ""
            self.passed += at
            return text[:at], reason
        keep = max((partial_marker_at_end(text, stop) for stop in self.stops), default=0)
        self.held = text[len(text) - keep :]
        passed = text[: len(text) - keep]
        self.passed += len(passed)
        return passed, None


def enforced(
    runner: Runner,
    request: ChatRequest,
    chunks: AsyncGenerator[ChatChunk, None],
    *,
    honoured: Mapping[str, str] | None = None,
) -> AsyncGenerator[ChatChunk, None]:
    """The run's chunks with the request's parameters applied: what the tool did not honour is
    ended by llmrun (stop, max_tokens) or named in the first chunk's warnings.

    `honoured` overrides the runner's own list, for a run that cannot pass parameters to its
    tool (a warm session's process was started before the turn)."""
    if not asked(request):
        return chunks  # nothing to apply: no layer between the tool and the caller
    return _enforced(runner, request, chunks, runner.honoured_parameters if honoured is None else honoured)


async def _enforced(
    runner: Runner, request: ChatRequest, chunks: AsyncGenerator[ChatChunk, None], honoured: Mapping[str, str]
) -> AsyncGenerator[ChatChunk, None]:
    try:
        warnings = warnings_for(runner, request, honoured)
    except BaseException:
        await chunks.aclose()
        raise
    stops = [stop for stop in request.stop or [] if stop]
    limit = None if request.max_tokens is None or "max_tokens" in honoured else request.max_tokens * CHARS_PER_TOKEN
    cutter = _Cutter(stops, limit) if stops or limit is not None else None
    session_id = model = None
    async with aclosing(chunks) as source:
        async for chunk in source:
            if warnings:
                chunk = chunk.model_copy(update={"warnings": [*warnings, *chunk.warnings]})
                warnings = []
            session_id, model = chunk.session_id or session_id, chunk.model or model
            if cutter is None:
                yield chunk
                continue
            text, reason = cutter.feed(chunk.delta) if chunk.delta else ("", None)
            if reason is not None:
                if text or _more_than_text(chunk):
                    yield chunk.model_copy(update={"delta": text, "finish_reason": None, "usage": None})
                # The rest of the answer is not wanted: closing the source stops the tool.
                usage = chunk.usage if chunk.is_final else None
                yield ChatChunk(finish_reason=reason, usage=usage, session_id=session_id, model=model)
                return
            if chunk.is_final:
                text, cutter.held = text + cutter.held, ""
            if text or _more_than_text(chunk):
                yield chunk if text == chunk.delta else chunk.model_copy(update={"delta": text})


def _more_than_text(chunk: ChatChunk) -> bool:
    return bool(
        chunk.thinking
        or chunk.tool_call
        or chunk.agent_event
        or chunk.warnings
        or chunk.session_id
        or chunk.model
        or chunk.runner
        or chunk.is_final
    )
