"""The Agent Client Protocol (JSON-RPC over the tool's stdin and stdout), for warm sessions.

llmrun is the client: it greets the agent (`initialize`), opens a session (`session/new`,
or `session/load` to resume one), sends each turn as `session/prompt`, and maps the
agent's `session/update` notifications onto chunks. `session/cancel` interrupts a turn,
which the agent then ends with the stop reason `cancelled`.

Lockdown: llmrun offers the agent neither file-system nor terminal access, picks the
runner's read-only mode where the agent has one, and rejects every permission request
unless the session allows tools. JSON-RPC itself is the official `agent-client-protocol`
package's; this module only feeds it the tool's lines and maps what it delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import acp
import pydantic
from acp import schema

from .. import __version__
from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    OutputParseError,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
    UnsupportedFeature,
)
from ..prompting import flatten_conversation, with_system_prompt
from ..runners.base import as_count, as_number, json_object
from ..types import AgentEvent, ChatChunk, ChatRequest, FinishReason, Usage
from .base import WarmConnection

if TYPE_CHECKING:
    from ..process import Invocation
    from ..runners.base import CliRunner
    from ..sessions import SessionSettings

log = logging.getLogger("llmrun.acp")

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "max_turn_requests": "length",
    "refusal": "content_filter",
    "cancelled": "cancelled",
}

_STATUS = re.compile(r"\b([45]\d\d)\b")
_CONTEXT = re.compile(r"context (length|window)|too many tokens|prompt is too long", re.I)
_MODEL = re.compile(r"model.*(not found|not exist|not supported|unknown)|unknown model", re.I)
_AUTH = re.compile(r"api key|unauthori[sz]ed|authenticat|not logged in|log ?in", re.I)
_RATE = re.compile(r"rate limit|quota|resource has been exhausted|too many requests", re.I)
# A 5xx some agents (opencode, kilo) pass on as JSON-RPC's internal error, without its status.
_UNAVAILABLE = re.compile(r"server had an error|overloaded|(cannot|unable to) connect", re.I)
_SESSION = re.compile(r"session.*(not found|does not exist|no such)|no (such )?session", re.I)

# JSON-RPC's "auth required" error of ACP agents, and its own internal error.
AUTH_REQUIRED = -32000
INTERNAL_ERROR = -32603
# After `session/load`, the replayed history is taken as over after this long without an update.
HISTORY_QUIET = 0.3
HISTORY_REPLAY_LIMIT = 5.0


@dataclass(frozen=True)
class AcpProfile:
    """What differs between ACP agents: how to lock them down and how they report usage."""

    read_only_modes: tuple[str, ...] = ()
    """Mode ids (or the last part of a mode option's value) to choose without allow_tools, in order."""
    system_prompt_at_start: bool = False
    """The tool took the system prompt at start-up; else it leads the first turn's text."""
    cumulative_usage: bool = False
    """The prompt result's usage counts the whole session, not the turn."""
    usage_from_result: Callable[[dict[str, Any]], Usage | None] | None = None
    """Reads usage the agent reports outside ACP's `usage` field of the prompt result."""
    error_in_answer: Callable[[str], RunnerError | None] | None = None
    """For agents that report a failed turn as answer text ending with `end_turn`."""
    notice: Callable[[str], AgentEvent | None] | None = None
    """For agents that say "retrying" and the like as answer text: such a chunk, as an event."""


def error_for(code: int, message: str, data: Any = None) -> RunnerError:
    """The typed error for a failed `session/prompt`, from the code and the agent's words."""
    details = json.dumps(data) if data is not None and not isinstance(data, str) else (data or "")
    text = f"{message} {details}".strip()
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    if status is None and (found := _STATUS.search(text)):
        status = int(found.group(1))
    summary = _summary(message, data)
    if code == AUTH_REQUIRED or status in (401, 403) or _AUTH.search(text):
        return AuthenticationError(summary)
    if status == 429 or _RATE.search(text):
        return RateLimitError(summary)
    if _CONTEXT.search(text):
        return ContextLengthExceeded(summary)
    if _MODEL.search(text) or status == 404:
        return ModelNotFound(summary)
    if (status is not None and status >= 500) or _UNAVAILABLE.search(text):
        return ServiceUnavailable(summary)
    return RunnerError(summary)


def _summary(message: str, data: Any) -> str:
    """The most telling words of an error: an embedded API error's message, else the details."""
    for text in (message, data.get("details") if isinstance(data, dict) else data):
        if isinstance(text, str) and text.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError, RecursionError):
                inner = json.loads(text).get("error", {})
                if isinstance(inner, dict) and inner.get("message"):
                    return str(inner["message"])
    if isinstance(data, dict) and isinstance(data.get("details"), str) and message in ("Internal error", ""):
        return str(data["details"])
    if isinstance(data, str) and data.strip() and message.startswith("Internal error"):
        return data.strip()  # droid: "Internal error: Agent error", the API's words in data
    return message


class _Lines:
    """The SDK's message transport over the tool's stdin and stdout lines."""

    def __init__(self, connection: AcpConnection) -> None:
        self.connection = connection
        self._lines = connection.lines()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.connection.child is not None
        await self.connection.child.send((json.dumps(message, ensure_ascii=False) + "\n").encode())

    async def receive(self) -> dict[str, Any] | None:
        async for line in self._lines:
            # What the package cannot route is skipped here, where the package would log it
            # as an error with a traceback (or stop reading): a kind of update newer than the
            # package, an unknown notification, a response with an id llmrun never sends.
            message = json_object(line)
            skipped = _unroutable(message) if message is not None else "not JSON-RPC"
            if message is None or skipped:
                log.debug("%s, skipped: %.200s", skipped, line)
                continue
            error = message.get("error")
            if error is not None and not isinstance(error, dict):  # the package reads it as an object
                message = {**message, "error": {"code": INTERNAL_ERROR, "message": str(error)}}
            return message
        return None

    async def close(self) -> None:
        await self._lines.aclose()


def _unroutable(message: dict[str, Any]) -> str | None:
    """Why a message cannot go to the protocol package, or None when it can."""
    method = message.get("method")
    if method is None:
        request_id = message.get("id")
        valid = isinstance(request_id, (int, str)) and not isinstance(request_id, bool)
        return None if valid else "an answer to no request of llmrun's"
    if not isinstance(method, str):
        return "not JSON-RPC"
    if "id" in message or method.startswith("_"):
        return None  # a request (the package answers those it does not know), an extension
    if method != "session/update":
        return "unknown notification"
    return None if _known_update(message.get("params")) else "unknown session update"


def _known_update(params: Any) -> bool:
    try:
        schema.SessionNotification.model_validate(params)
    except pydantic.ValidationError:
        return False
    return True


class _Client:
    """What the agent may ask of llmrun: permissions (rejected unless tools are allowed) and
    session updates. File-system and terminal requests are refused: they were not offered."""

    def __init__(self, connection: AcpConnection) -> None:
        self.connection = connection

    async def request_permission(
        self, options: list[schema.PermissionOption], session_id: str, tool_call: schema.ToolCallUpdate, **_: Any
    ) -> schema.RequestPermissionResponse:
        allow = self.connection.allow_tools
        kinds = ("allow_once", "allow_always") if allow else ("reject_once", "reject_always")
        chosen = next((o for o in options if o.kind in kinds), None)
        if not allow:
            self.connection.emit_event(
                AgentEvent(
                    kind="permission_denied",
                    id=tool_call.tool_call_id,
                    name=tool_call.title or tool_call.kind,
                    input=tool_call.raw_input,
                    is_error=True,
                )
            )
        outcome: Any = (
            schema.AllowedOutcome(outcome="selected", option_id=chosen.option_id)
            if chosen is not None
            else schema.DeniedOutcome(outcome="cancelled")
        )
        return schema.RequestPermissionResponse(outcome=outcome)

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.connection.on_update(update)


class AcpConnection(WarmConnection):
    def __init__(
        self,
        *args: Any,
        profile: AcpProfile,
        cwd: str,
        allow_tools: bool,
        system: str | None,
        model: str | None = None,
        set_model: bool = False,
    ) -> None:
        super().__init__(*args)
        self.profile = profile
        self.cwd = cwd
        self.allow_tools = allow_tools
        self.system = None if profile.system_prompt_at_start else system
        self.model = model
        self.set_model = set_model
        self.reported_model: str | None = None
        self._conn: Any = None
        self._prompt: asyncio.Future[None] | None = None
        self._usage_so_far = Usage()
        self._cost: float | None = None
        self._last_update = 0.0
        self._answer: list[str] = []
        self._update_usage: Usage | None = None

    # --- start ---------------------------------------------------------------------------

    async def handshake(self) -> None:
        client: Any = _Client(self)  # implements the part of acp.Client that an agent may call here
        self._conn = acp.connect_to_agent(client, _Lines(self))
        hello = await self._call(
            self._conn.initialize(
                protocol_version=acp.PROTOCOL_VERSION,
                client_capabilities=schema.ClientCapabilities(
                    fs=schema.FileSystemCapabilities(read_text_file=False, write_text_file=False), terminal=False
                ),
                client_info=schema.Implementation(name="llmrun", version=__version__),
            )
        )
        if self.resume:
            if not (hello.agent_capabilities and hello.agent_capabilities.load_session):
                raise SessionNotFound(f"{self.display_name} cannot load an earlier session over ACP")
            try:
                opened = await self._call(self._conn.load_session(cwd=self.cwd, session_id=self.resume, mcp_servers=[]))
            except RunnerError as exc:
                if exc.retryable or isinstance(exc, AuthenticationError):
                    raise
                raise SessionNotFound(f"{self.display_name} cannot load session {self.resume}: {exc}") from None
            self.session_id = self.resume
            await self._history_replayed()
        else:
            opened = await self._call(self._conn.new_session(cwd=self.cwd, mcp_servers=[]))
            self.session_id = opened.session_id
        if not self.allow_tools:
            await self._lock_down(opened)
        if self.model and self.set_model:
            await self._choose_model(opened)

    async def _history_replayed(self) -> None:
        """Let the agent finish replaying the loaded conversation as updates (some send it
        after their answer to `session/load`), so none of it is taken for the next answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HISTORY_REPLAY_LIMIT
        while loop.time() < deadline and loop.time() - self._last_update < HISTORY_QUIET:
            await asyncio.sleep(HISTORY_QUIET / 3)

    async def _lock_down(self, opened: Any) -> None:
        """Choose the agent's read-only mode, where it has one."""
        modes = getattr(opened, "modes", None)
        available = [m.id for m in modes.available_modes] if modes is not None else []
        for wanted in self.profile.read_only_modes:
            if wanted in available:
                await self._call(
                    self._conn.set_session_mode(session_id=self.session_id, mode_id=wanted), reply_matters=False
                )
                return
        for option in getattr(opened, "config_options", None) or []:
            root = getattr(option, "root", option)
            if getattr(root, "category", None) != "mode":
                continue
            values = [getattr(o, "value", None) for o in getattr(root, "options", None) or []]
            for wanted in self.profile.read_only_modes:
                match = next((v for v in values if isinstance(v, str) and v.rsplit("#", 1)[-1] == wanted), None)
                if match is not None:
                    await self._call(
                        self._conn.set_config_option(config_id=root.id, session_id=self.session_id, value=match),
                        reply_matters=False,
                    )
                    return

    async def _choose_model(self, opened: Any) -> None:
        options = [getattr(option, "root", option) for option in getattr(opened, "config_options", None) or []]
        # The option named "model" first: some agents (cline) list a provider option of the
        # same category before it.
        models = sorted((o for o in options if getattr(o, "category", None) == "model"), key=lambda o: o.id != "model")
        if models:
            await self._call(
                self._conn.set_config_option(config_id=models[0].id, session_id=self.session_id, value=self.model),
                reply_matters=False,
            )

    async def _call(self, request: Any, *, reply_matters: bool = True) -> Any:
        """One JSON-RPC request; its error becomes the typed error it means, and a reply
        that does not fit the protocol an OutputParseError (unless only success matters)."""
        try:
            return await request
        except pydantic.ValidationError as exc:
            if not reply_matters:
                return None
            raise OutputParseError(f"{self.display_name} answered outside the protocol: {exc}") from None
        except acp.RequestError as exc:
            error = error_for(exc.code, str(exc), exc.data)
            if type(error) is RunnerError and _SESSION.search(f"{exc} {exc.data}"):
                error = SessionNotFound(f"{self.display_name} lost its session: {error}")
            raise error from None
        except ConnectionError:
            raise self.exit_error() from None

    # --- turns ---------------------------------------------------------------------------

    async def send_turn(self, request: ChatRequest) -> None:
        if request.json_schema is not None:
            raise UnsupportedFeature("structured output needs a one-shot run, not a warm session")
        text = flatten_conversation(request.messages)
        if self.system and self.turns_sent == 0 and not self.resume:
            text = with_system_prompt(text, self.system)
        blocks: list[Any] = [acp.text_block(text)]
        for message in request.messages:
            for image in message.images:
                if image.data is None:
                    raise UnsupportedFeature("a warm session takes images as data, not URLs")
                blocks.append(acp.image_block(image.data, image.media_type or "image/png"))
        self._prompt = asyncio.ensure_future(self._run_prompt(blocks))

    async def _run_prompt(self, blocks: list[Any]) -> None:
        try:
            result = await self._call(self._conn.prompt(session_id=self.session_id, prompt=blocks))
        except RunnerError as exc:
            self.emit(exc)
            return
        raw = result.model_dump(by_alias=True, exclude_none=True)
        usage = self._turn_usage(result, raw)
        answer, self._answer = "".join(self._answer), []
        if self.profile.error_in_answer is not None and (error := self.profile.error_in_answer(answer)):
            self.emit(error)
            return
        self.emit(
            ChatChunk(
                finish_reason=STOP_REASONS.get(result.stop_reason, "stop"),
                usage=usage,
                session_id=self.session_id,
                model=self.reported_model or self.model,
                cost_usd=self._cost,
            )
        )
        self._cost = None

    def _turn_usage(self, result: Any, raw: dict[str, Any]) -> Usage | None:
        usage = self.profile.usage_from_result(raw) if self.profile.usage_from_result is not None else None
        usage, self._update_usage = usage or self._update_usage, None
        if usage is None and result.usage is not None:
            usage = Usage(
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
                cache_read_tokens=result.usage.cached_read_tokens or 0,
                cache_write_tokens=result.usage.cached_write_tokens or 0,
                reasoning_tokens=result.usage.thought_tokens or 0,
            )
        if usage is None or not self.profile.cumulative_usage:
            return usage
        before, self._usage_so_far = self._usage_so_far, usage
        return Usage(
            input_tokens=max(0, usage.input_tokens - before.input_tokens),
            output_tokens=max(0, usage.output_tokens - before.output_tokens),
            cache_read_tokens=max(0, usage.cache_read_tokens - before.cache_read_tokens),
            cache_write_tokens=max(0, usage.cache_write_tokens - before.cache_write_tokens),
            reasoning_tokens=max(0, usage.reasoning_tokens - before.reasoning_tokens),
        )

    def on_update(self, update: Any) -> None:
        """A `session/update`: text, thoughts and tool activity of the turn in flight."""
        self._last_update = asyncio.get_running_loop().time()
        kind = getattr(update, "session_update", None)
        if kind == "agent_message_chunk":
            self._note_usage(update.field_meta)
            text = _text_of(update.content)
            if text and self.profile.notice is not None and (event := self.profile.notice(text)):
                self.emit_event(event)
            elif text:
                self._answer.append(text)
                self.emit(ChatChunk(delta=text))
        elif kind == "agent_thought_chunk":
            if text := _text_of(update.content):
                self.emit(ChatChunk(thinking=text))
        elif kind == "tool_call":
            self.emit_event(
                AgentEvent(kind="tool_use", id=update.tool_call_id, name=update.title, input=update.raw_input)
            )
        elif kind == "tool_call_update" and update.status in ("completed", "failed"):
            self.emit_event(
                AgentEvent(
                    kind="tool_result",
                    id=update.tool_call_id,
                    output=update.raw_output,
                    is_error=update.status == "failed",
                )
            )
        elif kind == "usage_update" and update.cost is not None and update.cost.currency.upper() == "USD":
            self._cost = as_number(update.cost.amount)
        # Plans, commands, mode and session-info updates say nothing about the answer.

    def _note_usage(self, meta: dict[str, Any] | None) -> None:
        """Some agents (qwen) send a turn's usage in the `_meta` of an empty message chunk."""
        usage = (meta or {}).get("usage")
        if isinstance(usage, dict) and ("inputTokens" in usage or "outputTokens" in usage):
            self._update_usage = Usage(
                input_tokens=as_count(usage.get("inputTokens")) or 0,
                output_tokens=as_count(usage.get("outputTokens")) or 0,
                cache_read_tokens=as_count(usage.get("cachedReadTokens")) or 0,
                reasoning_tokens=as_count(usage.get("thoughtTokens")) or 0,
            )

    def emit_event(self, event: AgentEvent) -> None:
        self.emit(ChatChunk(agent_event=event))

    async def interrupt(self) -> None:
        if self._conn is None or not self.alive or self.session_id is None:
            return
        with contextlib.suppress(Exception):  # a tool that has gone ends the turn by its exit
            await self._conn.cancel(session_id=self.session_id)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await super().close()
        if self._prompt is not None and not self._prompt.done():
            self._prompt.cancel()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _text_of(content: Any) -> str:
    return content.text if getattr(content, "type", None) == "text" and isinstance(content.text, str) else ""


def acp_connection(
    runner: CliRunner,
    invocation: Invocation,
    settings: SessionSettings,
    resume: str | None,
    profile: AcpProfile,
    **quirks: Any,
) -> AcpConnection:
    """The warm connection of an ACP runner, from the invocation that starts its agent."""
    return AcpConnection(
        runner,
        invocation,
        settings,
        resume,
        profile=profile,
        cwd=os.path.abspath(settings.cwd or os.getcwd()),
        allow_tools=settings.allow_tools,
        system=settings.request([]).system_prompt(),
        # The session's model, else the configured one; None leaves the agent's own choice.
        model=runner.model_for(settings.request([])),
        **quirks,
    )
