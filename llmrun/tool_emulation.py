"""Client-defined tools (function calling) for every runner, emulated in the prompt.

No CLI can call a caller's functions, so the tool catalog and a calling convention go into
the system prompt, and the model answers EITHER in plain text OR with blocks

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

after an optional sentence. The blocks are parsed, checked against each tool's JSON schema
and returned as `ToolCall`s with finish_reason "tool_calls". An unusable answer (unknown
tool, invalid arguments, no call where one is required) is sent back to the model once with
the problems; if the second answer is unusable too it is returned as plain text. The schemas
themselves come from the caller: `llmrun.schema` refuses a malformed one with InvalidRequest
before anything runs, and bounds the validation whatever they hold.

    response = await chat_with_tools(get_runner("claude_code"), request)
    async for chunk in stream_with_tools(runner, request): ...

Runners never see `tools`: they get the request without them, the convention in `system`.
History with tool calls and results is rendered by `prompting.flatten_conversation` in the
same convention.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidRequest
from .prompting import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from .runners.base import Runner
from .schema import check_schemas, json_type, validate_json
from .types import ChatChunk, ChatRequest, ChatResponse, FinishReason, Message, ToolCall, ToolSpec, Usage

__all__ = [
    "ToolPlan",
    "chat_with_tools",
    "plan_tools",
    "stream_with_tools",
    "tools_system_prompt",
    "validate_json",
]


# --- what the request asks for ------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """The tools offered to the model and how it must use them."""

    tools: dict[str, ToolSpec]
    mode: Literal["auto", "required"] = "auto"
    forced: str | None = None
    """The one tool the model must call, when tool_choice names one."""


def plan_tools(request: ChatRequest, runner: str | None = None) -> ToolPlan | None:
    """The plan for a request; None when no tool is offered (no tools, or tool_choice "none").

    Raises InvalidRequest for a bad tool_choice, two tools of one name or schemas that
    `check_schemas` refuses.
    """
    if not request.tools:
        return None
    if isinstance(request.tool_choice, dict) and request.tool_choice.get("type") is None:
        raise InvalidRequest(f"tool_choice {request.tool_choice!r} has no type", runner=runner)
    tools: dict[str, ToolSpec] = {}
    for spec in request.tools:
        if spec.name in tools:
            raise InvalidRequest(f"two tools are named {spec.name!r}", runner=runner)
        tools[spec.name] = spec
    try:
        check_schemas({name: spec.parameters for name, spec in tools.items()})
    except InvalidRequest as exc:
        exc.runner = runner
        raise
    choice: Any = request.tool_choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "tool"):
            # OpenAI {"type": "function", "function": {"name": X}}, Anthropic {"type": "tool", "name": X}
            function = choice.get("function")
            forced = function.get("name") if isinstance(function, dict) else choice.get("name")
            if not isinstance(forced, str) or forced not in tools:
                raise InvalidRequest(
                    f"tool_choice {request.tool_choice!r} does not name one of the tools offered", runner=runner
                )
            return ToolPlan(tools, mode="required", forced=forced)
        choice = kind  # Anthropic {"type": "auto" | "any" | "none"}
    if choice is None or choice == "auto":
        return ToolPlan(tools)
    if choice == "none":
        return None
    if choice in ("required", "any"):
        return ToolPlan(tools, mode="required")
    raise InvalidRequest(f"unknown tool_choice {request.tool_choice!r}", runner=runner)


def tools_system_prompt(plan: ToolPlan) -> str:
    """The system prompt section that offers the tools and states the calling convention."""
    catalog = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in plan.tools.values()
    )
    if plan.forced is not None:
        choice = f'In this answer you must call the tool "{plan.forced}" (and no other tool).'
    elif plan.mode == "required":
        choice = "In this answer you must call at least one tool; a plain-text answer is not accepted."
    else:
        choice = "Call a tool when it helps to answer; otherwise answer in plain text."
    return "\n".join(
        [
            "# Tools",
            "",
            "You can use the tools below. You cannot run them yourself: you ask for a call, the caller runs it"
            " and sends you the result. Each line is one tool: its name, what it does, and the JSON schema of"
            " its arguments.",
            "",
            "<tools>",
            catalog,
            "</tools>",
            "",
            f"To call a tool, write a tool-call block: the tag {TOOL_CALL_OPEN}, then one JSON object with exactly"
            ' the keys "name" (the tool\'s name) and "arguments" (an object that matches the tool\'s schema),'
            f" then the tag {TOOL_CALL_CLOSE}. For example:",
            f'{TOOL_CALL_OPEN}{{"name": "tool_name", "arguments": {{"argument": "value"}}}}{TOOL_CALL_CLOSE}',
            "",
            "Rules:",
            "- Your answer is EITHER plain text OR tool-call blocks. A short sentence may come before the first"
            " block; nothing may come after the last one.",
            "- To call several tools at once, write one block per call, one after another.",
            f"- After the last {TOOL_CALL_CLOSE}, stop. Never write a result yourself: results come back in the"
            ' next message as <tool_result id="..." name="...">...</tool_result>.',
            f"- Write the blocks as they are, not inside code fences, and write {TOOL_CALL_OPEN} only to call a tool.",
            f"- {choice}",
        ]
    )


# --- the two entry points -----------------------------------------------------------------


async def chat_with_tools(runner: Runner, request: ChatRequest) -> ChatResponse:
    """The whole answer, with the model's tool calls parsed; the same as `stream_with_tools` joined."""
    started = time.monotonic()
    chunks: list[ChatChunk] = []
    async with aclosing(stream_with_tools(runner, request)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    duration = int((time.monotonic() - started) * 1000)
    return ChatResponse.from_chunks(chunks, runner=runner.name, duration_ms=duration)


async def stream_with_tools(runner: Runner, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
    """Chunks of the answer: text as it arrives, then one chunk per tool call, then the final chunk."""
    plan = plan_tools(request, runner.name)
    forwarded = _forwarded(request, plan)
    if plan is None:
        async with aclosing(runner.stream(forwarded)) as chunks:
            async for chunk in chunks:
                yield chunk
        return

    attempt = _Attempt(plan)
    async with aclosing(attempt.run(runner, forwarded)) as chunks:
        async for chunk in chunks:
            yield chunk
    usage, cost = attempt.usage, attempt.cost
    if attempt.problems:
        retry = _Attempt(plan)
        async with aclosing(retry.run(runner, _retry_request(forwarded, attempt))) as chunks:
            async for chunk in chunks:
                yield chunk
        usage, cost = _add_usage(usage, retry.usage), _add_cost(cost, retry.cost)
        attempt = retry

    if attempt.problems:  # still unusable: the answer is text after all
        unsent, finish_reason = attempt.raw[len(attempt.released) :], "stop"
        calls: list[ToolCall] = []
    elif attempt.calls:
        unsent, finish_reason = attempt.text_before[len(attempt.released) :], "tool_calls"
        calls = attempt.calls
    else:
        unsent, finish_reason = attempt.raw[len(attempt.released) :], attempt.finish_reason
        calls = []
    if unsent:
        yield ChatChunk(delta=unsent)
    for call in calls:
        yield ChatChunk(tool_call=call)
    final = attempt.final or ChatChunk()
    yield final.model_copy(
        update={"delta": "", "thinking": "", "finish_reason": finish_reason, "usage": usage, "cost_usd": cost}
    )


# --- one run of the model -----------------------------------------------------------------


@dataclass
class _Attempt:
    plan: ToolPlan
    raw: str = ""
    released: str = ""
    """The prefix of `raw` already passed on as text."""
    final: ChatChunk | None = None
    session_id: str | None = None
    text_before: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def run(self, runner: Runner, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        # Text can only be a valid answer in auto mode; otherwise it waits for the verdict.
        splitter = _TagSplitter() if self.plan.mode == "auto" else None
        async with aclosing(runner.stream(request)) as chunks:
            async for chunk in chunks:
                self.session_id = chunk.session_id or self.session_id
                if chunk.is_final:  # held back: the verdict on the answer decides its finish_reason
                    self.final = chunk
                    chunk = ChatChunk(delta=chunk.delta, thinking=chunk.thinking)
                self.raw += chunk.delta
                passed = splitter.feed(chunk.delta) if splitter is not None else ""
                self.released += passed
                out = chunk.model_copy(update={"delta": passed})
                if out.model_dump(exclude_defaults=True):
                    yield out
        self.text_before, self.calls, self.problems = parse_answer(self.raw, self.plan)

    @property
    def usage(self) -> Usage | None:
        return self.final.usage if self.final else None

    @property
    def cost(self) -> float | None:
        return self.final.cost_usd if self.final else None

    @property
    def finish_reason(self) -> FinishReason:
        return self.final.finish_reason if self.final and self.final.finish_reason else "stop"


class _TagSplitter:
    """Passes text on until the opening tag, holding back only a suffix that could begin it."""

    def __init__(self) -> None:
        self.pending = ""
        self.found = False

    def feed(self, text: str) -> str:
        if self.found:
            return ""
        text = self.pending + text
        at = text.find(TOOL_CALL_OPEN)
        if at >= 0:
            self.found, self.pending = True, ""
            return text[:at]
        keep = next(
            (n for n in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1) if text.endswith(TOOL_CALL_OPEN[:n])),
            0,
        )
        self.pending = text[len(text) - keep :]
        return text[: len(text) - keep]


def _forwarded(request: ChatRequest, plan: ToolPlan | None) -> ChatRequest:
    """The request a runner gets: no tools, the convention in the system prompt."""
    update: dict[str, Any] = {"tools": None, "tool_choice": None, "messages": _named_results(request.messages)}
    if plan is not None:
        section = tools_system_prompt(plan)
        if request.json_schema is not None:
            # The schema is for a text answer, not for a tool call: asked for, not enforced.
            from .structured import schema_instructions

            section += "\n\nWhen you answer in text rather than with a tool call: " + schema_instructions(
                request.json_schema
            )
            update["json_schema"] = None
        update["system"] = f"{request.system}\n\n{section}" if request.system else section
    return request.model_copy(update=update)


def _named_results(messages: list[Message]) -> list[Message]:
    """Tool results labelled with the tool's name, which a resumed session cannot look up."""
    names = {call.id: call.name for m in messages for call in m.tool_calls or []}
    return [
        m.model_copy(update={"name": names[m.tool_call_id]})
        if m.role == "tool" and not m.name and m.tool_call_id in names
        else m
        for m in messages
    ]


def _retry_request(request: ChatRequest, failed: _Attempt) -> ChatRequest:
    """The request again, plus the unusable answer and what is wrong with it."""
    problems = "\n".join(f"- {p}" for p in failed.problems)
    if failed.plan.forced is not None:
        ask = f'Reply with the corrected tool-call block calling "{failed.plan.forced}" only.'
    elif failed.plan.mode == "required":
        ask = "Reply with the corrected tool-call block(s) only."
    else:
        ask = "Reply with the corrected tool-call block(s) only, or in plain text if no tool fits."
    correction = (
        f"Your previous answer did not follow the tool-calling rules:\n{problems}\n\n"
        f"{ask} Do not repeat the text you wrote before the blocks."
    )
    # A resumed session already holds the unusable answer: continue the session it ended in.
    session = (failed.session_id or request.session_id) if request.session_id else None
    return request.model_copy(
        update={
            "messages": [*request.messages, Message.assistant(failed.raw), Message.user(correction)],
            "session_id": session,
        }
    )


def _add_usage(first: Usage | None, second: Usage | None) -> Usage | None:
    if first is None or second is None:
        return first or second
    return Usage(**{name: getattr(first, name) + getattr(second, name) for name in Usage.model_fields})


def _add_cost(first: float | None, second: float | None) -> float | None:
    if first is None or second is None:
        return second if first is None else first
    return first + second


# --- reading the answer -------------------------------------------------------------------

_FENCE_OPEN = re.compile(r"\s*(?:```[\w-]*\s*)?")
_FENCE_CLOSE = re.compile(r"\s*(?:```\s*)?")
_SPACE = re.compile(r"\s*")


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """The position after what `pattern` (which can match nothing) matches at `pos`."""
    match = pattern.match(text, pos)
    return match.end() if match else pos


def parse_answer(text: str, plan: ToolPlan) -> tuple[str, list[ToolCall], list[str]]:
    """(text before the calls, the calls, problems). Any problem makes the calls unusable.

    The calls are the run of blocks that starts at the first opening tag; whatever follows
    the run is dropped, as the model should have stopped there.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        problem = _missing_call(plan)
        return text, [], [problem] if problem else []
    calls: list[ToolCall] = []
    problems: list[str] = []
    decoder = json.JSONDecoder()
    pos, number = start, 0
    while text.startswith(TOOL_CALL_OPEN, pos):
        number += 1
        try:
            value, end = decoder.raw_decode(text, _skip(_FENCE_OPEN, text, pos + len(TOOL_CALL_OPEN)))
        except (ValueError, RecursionError) as exc:  # ValueError: a JSONDecodeError, or an integer too long
            if isinstance(exc, json.JSONDecodeError):
                reason = exc.msg
            else:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else "a number with too many digits"
            problems.append(f"tool call {number}: the block does not hold a JSON object ({reason})")
            close = text.find(TOOL_CALL_CLOSE, pos)
            if close < 0:
                break
            pos = _skip(_SPACE, text, close + len(TOOL_CALL_CLOSE))
            continue
        after = _skip(_FENCE_CLOSE, text, end)
        if text.startswith(TOOL_CALL_CLOSE, after):
            after += len(TOOL_CALL_CLOSE)
        elif after < len(text):  # a closing tag missing at the very end is forgiven
            problems.append(f"tool call {number}: the JSON object is not followed by {TOOL_CALL_CLOSE}")
            break
        call = _read_call(value, number, plan, problems)
        if call is not None:
            calls.append(call)
        pos = _skip(_SPACE, text, after)
    return text[:start], calls, problems


def _missing_call(plan: ToolPlan) -> str | None:
    if plan.forced is not None:
        return f'the answer has no tool-call block, but it must call the tool "{plan.forced}"'
    if plan.mode == "required":
        return "the answer has no tool-call block, but it must call at least one tool"
    return None


def _read_call(value: Any, number: int, plan: ToolPlan, problems: list[str]) -> ToolCall | None:
    where = f"tool call {number}"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        problems.append(f'{where}: expected a JSON object with a string "name" and an object "arguments"')
        return None
    name: str = value["name"]
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI habit: arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            problems.append(f'{where}: "arguments" is a string that does not hold JSON')
            return None
    if name not in plan.tools:
        known = ", ".join(plan.tools)
        problems.append(f'{where}: there is no tool named "{name}"; the tools are: {known}')
        return None
    if plan.forced is not None and name != plan.forced:
        problems.append(f'{where}: calls "{name}", but this answer must call "{plan.forced}"')
        return None
    if not isinstance(arguments, dict):
        problems.append(f'{where} ("{name}"): "arguments" must be a JSON object, got {json_type(arguments)}')
        return None
    errors = validate_json(arguments, plan.tools[name].parameters)
    if errors:
        problems.extend(f'{where} ("{name}"): {error}' for error in errors)
        return None
    return ToolCall(name=name, arguments=arguments)
