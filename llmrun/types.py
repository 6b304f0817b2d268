"""The data llmrun passes around: requests, responses, stream chunks, health reports.

Every runner speaks these types, whatever its tool prints. Field names follow the
OpenAI/Anthropic vocabulary where one exists, and `to_openai()` gives the OpenAI Chat
Completions shapes for callers that already speak that dialect.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import totals
from .errors import InvalidRequest

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "cancelled"]
HealthStatus = Literal["ok", "not_installed", "unauthenticated", "outdated", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- messages -----------------------------------------------------------------------------


class TextPart(_Model):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Model):
    """An image given by URL (http(s) or data:) or as base64 data with its media type.

    A URL other than data: (or a path) is for local callers: the daemon takes images from
    its clients as data only (llmrun/server/attachments.py)."""

    type: Literal["image"] = "image"
    url: str | None = None
    data: str | None = None
    media_type: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image needs exactly one of `url` or `data`")
        return self


ContentPart = Union[TextPart, ImagePart]


class ToolSpec(_Model):
    """A function the caller offers to the model (OpenAI `tools[].function`)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(_Model):
    """A call of a caller's function, decided by the model."""

    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(_Model):
    role: Role
    content: str | list[ContentPart] = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str, *, images: list[ImagePart] | None = None) -> Message:
        if images:
            return cls(role="user", content=[TextPart(text=text), *images])
        return cls(role="user", content=text)

    @classmethod
    def assistant(cls, text: str, *, tool_calls: list[ToolCall] | None = None) -> Message:
        return cls(role="assistant", content=text, tool_calls=tool_calls)

    @classmethod
    def tool(cls, result: str, *, tool_call_id: str, name: str | None = None) -> Message:
        return cls(role="tool", content=result, tool_call_id=tool_call_id, name=name)

    @property
    def text(self) -> str:
        """The text of the message, image parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if isinstance(p, ImagePart)]


# --- request ------------------------------------------------------------------------------

SESSION_ID_MAX_LENGTH = 256
"""Far above any tool's ids (uuids, ULIDs, `ses_...`); a longer one is not an id."""


def check_session_id(session_id: str, *, runner: str | None = None) -> str:
    """The id, if it can be handed to a tool; else InvalidRequest.

    Ids reach the tool's command line, so one that starts with "-" could be read as an
    option there (`--last` resumes another conversation, some flags lift the sandbox).
    Empty ids, whitespace, control characters and absurd lengths are refused as well.
    """
    if not session_id:
        problem = "is empty"
    elif len(session_id) > SESSION_ID_MAX_LENGTH:
        problem = f"is longer than {SESSION_ID_MAX_LENGTH} characters"
    elif session_id.startswith("-"):
        problem = 'starts with "-", so a tool could read it as an option'
    elif not session_id.isprintable() or " " in session_id:
        problem = "holds whitespace or control characters"
    else:
        return session_id
    shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
    raise InvalidRequest(f"session id {shown!r} {problem}", runner=runner)


SAMPLING_PARAMETERS = (
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
)
"""The request's fields that tune the model's sampling (see llmrun/parameters.py)."""


class ChatRequest(_Model):
    messages: list[Message]
    model: str | None = None
    """Model name or alias as the tool knows it; None means the runner's default."""
    system: str | None = None
    """System prompt; joined after any system messages in `messages`."""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    """Stop sequences: the answer ends before the first one (llmrun enforces this for every runner)."""
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    strict_params: bool = False
    """Refuse (UnsupportedFeature) a sampling parameter the runner cannot honour, rather than
    running without it and saying so in the response's `warnings`."""
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    json_schema: dict[str, Any] | None = None
    session_id: str | None = None
    """The tool's own session to resume; the runner then sends only the new turn. An id
    that a tool could take for an option, or that holds whitespace or control characters,
    is refused (InvalidRequest, see `check_session_id`). The daemon never takes one from a
    client: it resumes only ids its tools reported."""
    cwd: str | None = None
    timeout: float | None = None
    """Hard limit on the whole run, in seconds."""
    stall_timeout: float | None = None
    """Limit on silence: no output from the tool for this many seconds ends the run."""
    allow_tools: bool = False
    """Let the tool use its own agent tools (shell, file edits). Off by default."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Runner-specific options (see each runner's docstring)."""

    @field_validator("session_id")
    @classmethod
    def _safe_session_id(cls, session_id: str | None) -> str | None:
        return None if session_id is None else check_session_id(session_id)

    @classmethod
    def of(cls, prompt: str, **fields: Any) -> ChatRequest:
        return cls(messages=[Message.user(prompt)], **fields)

    def system_prompt(self) -> str | None:
        """System messages and `system`, joined; None when there are none."""
        parts = [m.text for m in self.messages if m.role == "system" and m.text]
        if self.system:
            parts.append(self.system)
        return "\n\n".join(parts) if parts else None

    def conversation(self) -> list[Message]:
        """The messages without the system ones."""
        return [m for m in self.messages if m.role != "system"]


# --- results ------------------------------------------------------------------------------


class Usage(_Model):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    @model_validator(mode="after")
    def _total(self) -> Usage:
        if not self.total_tokens:
            self.total_tokens = (
                self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
            )
        return self

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens + self.cache_read_tokens + self.cache_write_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


AgentEventKind = Literal["tool_use", "tool_result", "retry", "permission_denied", "notice"]


class AgentEvent(_Model):
    """Something the tool did on its own while answering: ran a tool, retried, was denied."""

    kind: AgentEventKind
    id: str | None = None
    name: str | None = None
    input: Any = None
    output: Any = None
    is_error: bool = False
    message: str | None = None


class ChatChunk(_Model):
    """One piece of a streamed answer. The last chunk carries finish_reason and usage."""

    delta: str = ""
    thinking: str = ""
    tool_call: ToolCall | None = None
    agent_event: AgentEvent | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    session_id: str | None = None
    model: str | None = None
    cost_usd: float | None = None
    runner: str | None = None
    """The runner that answered, where it is not the one asked (a route hands on to its targets)."""
    warnings: list[str] = Field(default_factory=list)
    """What the caller should know about the answer, e.g. a route's targets that failed before it."""

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None

    def to_openai(
        self,
        *,
        id: str | None = None,
        model: str | None = None,
        created: int | None = None,
        tool_index: int | None = None,
    ) -> dict[str, Any]:
        """This chunk as an OpenAI `chat.completion.chunk`. A chunk does not know how many tool
        calls came before its own: a stream's caller numbers them (`tool_index`, from 0), or
        every call gets index 0 and a client merges them into one."""
        delta: dict[str, Any] = {}
        if self.delta:
            delta["content"] = self.delta
        if self.thinking:
            delta["reasoning_content"] = self.thinking
        if self.tool_call is not None:
            delta["tool_calls"] = [_openai_tool_call(self.tool_call, index=tool_index or 0)]
        out: dict[str, Any] = {
            "id": id or _completion_id(),
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model or self.model or "",
            "choices": [{"index": 0, "delta": delta, "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


class ChatResponse(_Model):
    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    agent_events: list[AgentEvent] = Field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    model: str | None = None
    """The model the tool reports it used (may differ from the alias asked for)."""
    runner: str = ""
    session_id: str | None = None
    cost_usd: float | None = None
    duration_ms: int = 0
    """Wall time of the run as llmrun measured it, process start to exit."""
    warnings: list[str] = Field(default_factory=list)
    """What the caller should know about the answer, e.g. a route's targets that failed before it."""

    @classmethod
    def from_chunks(cls, chunks: list[ChatChunk], *, runner: str = "", duration_ms: int = 0) -> ChatResponse:
        final = next((c for c in reversed(chunks) if c.is_final), None)
        model = next((c.model for c in reversed(chunks) if c.model), None)
        response = cls(
            content="".join(c.delta for c in chunks),
            thinking="".join(c.thinking for c in chunks),
            tool_calls=[c.tool_call for c in chunks if c.tool_call is not None],
            agent_events=[c.agent_event for c in chunks if c.agent_event is not None],
            finish_reason=(final.finish_reason if final and final.finish_reason else "stop"),
            usage=(final.usage if final and final.usage else Usage()),
            model=model,
            runner=next((c.runner for c in reversed(chunks) if c.runner), None) or runner,
            session_id=next((c.session_id for c in reversed(chunks) if c.session_id), None),
            cost_usd=final.cost_usd if final else None,
            duration_ms=duration_ms,
            warnings=[warning for c in chunks for warning in c.warnings],
        )
        totals.record(response.usage, response.cost_usd)  # the one place every gathered run passes
        return response

    def to_openai(self, *, id: str | None = None, created: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.thinking:
            message["reasoning_content"] = self.thinking
        if self.tool_calls:
            message["tool_calls"] = [_openai_tool_call(c) for c in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": id or _completion_id(),
            "object": "chat.completion",
            "created": created or int(time.time()),
            "model": self.model or "",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage.to_openai(),
        }


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _openai_tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }
    if index is not None:
        out["index"] = index
    return out


# --- what a runner is and can do ----------------------------------------------------------


class Capabilities(_Model):
    streaming: bool = True
    """Answers arrive as a stream of chunks (possibly whole messages)."""
    token_streaming: bool = False
    """Chunks are token-level deltas, not whole messages."""
    thinking: bool = False
    agent_tools: bool = False
    """The tool has agent tools of its own (shell, edits) that `allow_tools` can enable."""
    sessions: bool = False
    """The tool keeps sessions that a later request can resume by id."""
    warm: bool = False
    """`runner.session()` keeps one tool process alive for the whole conversation; otherwise
    each turn starts the tool afresh and resumes its session (or replays the history)."""
    system_prompt: bool = True
    images: bool = False
    json_schema: bool = False
    usage: bool = False
    cost: bool = False
    model_discovery: bool = False
    """`available_models()` can ask the tool for its models."""
    prompt_via_stdin: bool = True
    """False when the tool takes the prompt only in argv (limited to 128 KiB per argument)."""


class ModelInfo(_Model):
    id: str
    runner: str
    name: str | None = None
    aliases: list[str] = Field(default_factory=list)
    source: Literal["builtin", "discovered"] = "builtin"
    is_default: bool = False


class RunnerMetadata(_Model):
    name: str
    display_name: str
    binary: str
    aliases: list[str]
    default_model: str | None
    capabilities: Capabilities
    models: list[ModelInfo]
    cannot_lock_down: str = ""
    """What of the tool's own agent llmrun cannot switch off; empty when everything can be."""


class HealthReport(_Model):
    runner: str
    status: HealthStatus
    binary: str | None = None
    """The resolved path of the executable."""
    version: str | None = None
    authenticated: bool | None = None
    latency_ms: int | None = None
    """Time of the checks, or of the probe prompt when `probe=True`."""
    message: str = ""
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
