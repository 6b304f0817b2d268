"""The stream-json event dialect of Claude Code, which Qwen Code speaks too.

One JSON object per line: `system` (init, status, api_retry), `stream_event` wrapping the
raw Anthropic streaming events (with `--include-partial-messages`), `assistant` (one line
per content block, whole), `user` (tool results) and a final `result` with usage, cost
and errors. Text is streamed from the deltas; the whole `assistant` block that follows
is used only when no delta for it came, so nothing is emitted twice.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from ..errors import (
    AuthenticationError,
    ContextLengthExceeded,
    ModelNotFound,
    RateLimitError,
    RunnerError,
    ServiceUnavailable,
    SessionNotFound,
)
from ..types import AgentEvent, ChatChunk, FinishReason, ImagePart, Usage
from .base import (
    Parser,
    as_count,
    as_dict,
    as_list,
    as_number,
    as_text,
    delta_chunk,
    json_object,
    json_text,
    line_shape,
)

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_CONTEXT = re.compile(r"prompt is too long|context (length|window)|too many tokens", re.I)
_MODEL = re.compile(r"model.*(not found|not exist|may not exist|not available)|selected model", re.I)
_UNREACHABLE = re.compile(r"unable to connect|connection (refused|error)|fetch failed|ENOTFOUND|ECONNREFUSED", re.I)

# A text delta of the answer exactly as claude prints it.
CLAUDE_TEXT_DELTA = line_shape(
    '{"type":"stream_event","event":{"type":"content_block_delta","index":<int>,"delta":{"type":"text_delta",'
    '"text":"<text>"}},"session_id":"<id>","parent_tool_use_id":null,"uuid":"<id>"}'
)


class StreamJsonParser(Parser):
    """Parses one run's stream-json output."""

    login_hint: str | None = None
    fast_line: ClassVar[re.Pattern[str] | None] = CLAUDE_TEXT_DELTA
    """A line that is certainly a top-level text delta, its text in group 1: read without
    decoding the rest (a few hundred thousand a second in a long answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None
        self.model: str | None = None
        self.sent_text = False
        self._message_id: str | None = None
        self._streamed: set[tuple[str | None, str]] = set()  # (message id, block type) sent as deltas
        self._assistant_error: str | None = None
        self._last_text_message: str | None = None

    def feed(self, line: str) -> list[ChatChunk]:
        if self.fast_line is not None and (match := self.fast_line.fullmatch(line)) and (text := json_text(match[1])):
            return self._stream_text(text)
        event = json_object(line)
        if event is None:
            return self._not_an_object(line)
        kind = event.get("type")
        if kind == "stream_event":
            return self._stream_event(event)
        if kind == "assistant":
            return self._assistant(event)
        if kind == "user":
            return self._user(event)
        if kind == "system":
            return self._system(event)
        if kind == "result":
            return self._result(event)
        return []  # unknown event types are expected as tools evolve

    def _not_an_object(self, line: str) -> list[ChatChunk]:
        return []  # noise on stdout, skipped

    # --- events --------------------------------------------------------------------------

    def _system(self, event: dict[str, Any]) -> list[ChatChunk]:
        subtype = event.get("subtype")
        if subtype == "init":
            self.session_id = as_text(event.get("session_id")) or self.session_id
            return []
        if subtype == "api_retry":
            status = event.get("error_status")
            message = (
                f"retry {event.get('attempt')}/{event.get('max_retries')} after {status} {event.get('error') or ''}"
            )
            return [ChatChunk(agent_event=AgentEvent(kind="retry", message=message.strip()))]
        return []

    def _stream_event(self, event: dict[str, Any]) -> list[ChatChunk]:
        if event.get("parent_tool_use_id"):
            return []  # a sub-agent's stream, not the answer
        inner = event.get("event")
        if not isinstance(inner, dict):
            return []
        kind = inner.get("type")
        if kind == "message_start":
            message = as_dict(inner.get("message"))
            self._message_id = as_text(message.get("id"))
            self._note_model(message.get("model"))
        elif kind == "content_block_delta":
            delta = as_dict(inner.get("delta"))
            if delta.get("type") == "text_delta" and (text := as_text(delta.get("text"))):
                return self._stream_text(text)
            if delta.get("type") == "thinking_delta" and (thinking := as_text(delta.get("thinking"))):
                self._streamed.add((self._message_id, "thinking"))
                return [ChatChunk(thinking=thinking)]
        return []

    def _assistant(self, event: dict[str, Any]) -> list[ChatChunk]:
        if event.get("parent_tool_use_id"):
            return []
        if event.get("error"):
            # A synthetic message carrying an error text; the `result` line says the rest.
            self._assistant_error = str(event["error"])
            return []
        message = as_dict(event.get("message"))
        self._note_model(message.get("model"))
        message_id = as_text(message.get("id"))
        chunks: list[ChatChunk] = []
        for block in as_list(message.get("content")):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            text = as_text(block.get(kind)) if kind in ("text", "thinking") else None  # the block's own key
            if text and (message_id, kind) not in self._streamed:
                chunks.append(self._text(message_id, text) if kind == "text" else ChatChunk(thinking=text))
            elif kind == "tool_use":
                name, tool_input = as_text(block.get("name")), block.get("input")
                use = AgentEvent(kind="tool_use", id=as_text(block.get("id")), name=name, input=tool_input)
                chunks.append(ChatChunk(agent_event=use))
        return chunks

    def _user(self, event: dict[str, Any]) -> list[ChatChunk]:
        content = as_dict(event.get("message")).get("content")
        if event.get("parent_tool_use_id") or not isinstance(content, list):
            return []
        return [
            ChatChunk(
                agent_event=AgentEvent(
                    kind="tool_result",
                    id=as_text(block.get("tool_use_id")),
                    output=block.get("content"),
                    is_error=bool(block.get("is_error")),
                )
            )
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def _result(self, event: dict[str, Any]) -> list[ChatChunk]:
        self.finished = True
        self.session_id = as_text(event.get("session_id")) or self.session_id
        if event.get("is_error") or str(event.get("subtype", "")).startswith("error"):
            self.error = self.error_from_result(event)
            return []
        chunks: list[ChatChunk] = []
        result = event.get("result")
        if not self.sent_text and isinstance(result, str) and result:
            chunks.append(ChatChunk(delta=result))  # the tool printed no message events
        for denial in as_list(event.get("permission_denials")):
            if isinstance(denial, dict):
                chunks.append(
                    ChatChunk(
                        agent_event=AgentEvent(
                            kind="permission_denied",
                            id=as_text(denial.get("tool_use_id")),
                            name=as_text(denial.get("tool_name")),
                            input=denial.get("tool_input"),
                            is_error=True,
                        )
                    )
                )
        chunks.append(
            ChatChunk(
                finish_reason=STOP_REASONS.get(str(event.get("stop_reason")), "stop"),
                usage=self.usage_from(as_dict(event.get("usage"))),
                session_id=self.session_id,
                model=self.model,
                cost_usd=as_number(event.get("total_cost_usd")),
            )
        )
        return chunks

    # --- helpers a tool may refine -------------------------------------------------------

    def _stream_text(self, text: str) -> list[ChatChunk]:
        """A text delta of the answer (not a sub-agent's)."""
        self._streamed.add((self._message_id, "text"))
        return [self._text(self._message_id, text)]

    def _text(self, message_id: str | None, text: str) -> ChatChunk:
        # Text of a later message (the answer after a tool ran) starts a new paragraph.
        if self.sent_text and message_id != self._last_text_message:
            text = "\n\n" + text
        self.sent_text = True
        self._last_text_message = message_id
        return delta_chunk(text)

    def _note_model(self, model: Any) -> None:
        if isinstance(model, str) and model and not model.startswith("<"):
            self.model = model

    @staticmethod
    def usage_from(usage: dict[str, Any]) -> Usage:
        def count(key: str) -> int:
            return as_count(usage.get(key)) or 0

        return Usage(
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cache_read_tokens=count("cache_read_input_tokens"),
            cache_write_tokens=count("cache_creation_input_tokens"),
        )

    def error_from_result(self, event: dict[str, Any]) -> RunnerError:
        """The typed error for a failed `result`, from the HTTP status and the tool's words."""
        errors = event.get("errors")
        text = (
            as_text(event.get("result"))
            or ("; ".join(map(str, errors)) if isinstance(errors, list) else "")
            or str(event.get("subtype") or "the tool reported an error")
        )
        status = event.get("api_error_status")
        status = status if isinstance(status, int) else None
        flag = self._assistant_error or ""
        if status in (401, 403) or flag == "authentication_failed" or "not logged in" in text.lower():
            return AuthenticationError(text, hint=self.login_hint)
        if status == 429 or flag == "rate_limit":
            return RateLimitError(text)
        if (
            (status is not None and status >= 500)
            or flag in ("server_error", "overloaded")
            or _UNREACHABLE.search(text)
        ):
            return ServiceUnavailable(text)
        if "no conversation found" in text.lower():
            return SessionNotFound(text)
        if _CONTEXT.search(text):
            return ContextLengthExceeded(text)
        if status == 404 or _MODEL.search(text):
            return ModelNotFound(text)
        return RunnerError(text)


def user_line(text: str, images: list[ImagePart], session_id: str | None, *, runner: str) -> bytes:
    """One `user` message of stream-json input (`--input-format stream-json`): the images as
    base64 image blocks (as the Messages API takes them), then the text."""
    content: list[dict[str, Any]] = []
    if images:
        from ..images import image_data

        for image in images:
            media_type, data = image_data(image, runner)
            content.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
    content.append({"type": "text", "text": text})
    message = {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": session_id or "default",
    }
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()
