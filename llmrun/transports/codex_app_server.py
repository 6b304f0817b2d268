"""OpenAI Codex's app server (`codex app-server`): JSON-RPC over stdio, for warm sessions.

Messages are JSON-RPC 2.0 without the `jsonrpc` member, one per line. llmrun greets the
server (`initialize`, then the `initialized` notification), opens a thread (`thread/start`,
or `thread/resume` to continue one) and sends each turn as `turn/start`. The turn streams
as notifications: `item/agentMessage/delta` for text, `item/reasoning/*Delta` for thoughts,
`item/completed` for whole items, `thread/tokenUsage/updated` (its `last` is the turn's
usage) and `error`, and ends with `turn/completed` (status `completed`, `interrupted` or
`failed`). `turn/interrupt` stops a turn. The server can ask for approvals; with the thread's
approval policy `never` it should not, and if it does llmrun declines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import ProcessFailed, RunnerError, SessionNotFound, UnsupportedFeature
from ..prompting import flatten_conversation
from ..runners.base import as_count, as_dict, as_list, as_text, json_object
from ..types import AgentEvent, ChatChunk, ChatRequest, Usage
from .base import WarmConnection

# What the server may ask of a client, and llmrun's answer to each: no approval is given.
DECLINED: dict[str, dict[str, Any]] = {
    "item/commandExecution/requestApproval": {"decision": "decline"},
    "item/fileChange/requestApproval": {"decision": "decline"},
    "execCommandApproval": {"decision": "denied"},
    "applyPatchApproval": {"decision": "denied"},
}
REASONING_DELTAS = ("item/reasoning/textDelta", "item/reasoning/summaryTextDelta")


class CodexAppServer(WarmConnection):
    def __init__(
        self,
        *args: Any,
        thread: dict[str, Any],
        error_from_message: Callable[[str], RunnerError],
    ) -> None:
        super().__init__(*args)
        self.thread = thread
        """`thread/start` parameters: cwd, model, sandbox, approval policy."""
        self.error_from_message = error_from_message
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._turn_id: str | None = None
        self._streamed: set[str] = set()  # items whose text came as deltas
        self._usage: Usage | None = None
        self._error: RunnerError | None = None
        self.model: str | None = None

    # --- JSON-RPC --------------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.child is not None
        await self.child.send((json.dumps(message, ensure_ascii=False) + "\n").encode())

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        request_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            await self._send({"method": method, "id": request_id, "params": params})
            return await answer
        finally:
            self._pending.pop(request_id, None)

    async def _read(self) -> None:
        async for line in self.lines():
            message = json_object(line)
            if message is None:
                continue
            method = message.get("method")
            if method is None and "id" in message:
                self._answered(message)
            elif not isinstance(method, str):
                continue  # not JSON-RPC
            elif "id" in message:
                reply = DECLINED.get(method)
                response: dict[str, Any] = (
                    {"result": reply} if reply else {"error": {"code": -32601, "message": "not offered"}}
                )
                with contextlib.suppress(RunnerError):
                    await self._send({"id": message["id"], **response})
            else:
                self._notified(method, as_dict(message.get("params")))
        gone = self.exit_error()
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(gone)

    def _answered(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            return  # not one of llmrun's requests, whose ids are numbers
        answer = self._pending.get(request_id)
        if answer is None or answer.done():
            return
        error = message.get("error")
        if isinstance(error, dict):
            answer.set_exception(self.error_from_message(str(error.get("message") or error)))
        else:
            answer.set_result(message.get("result"))

    # --- start ---------------------------------------------------------------------------

    async def handshake(self) -> None:
        self.read_with(self._read())
        hello = {"clientInfo": {"name": "llmrun", "title": None, "version": __version__}}
        await self.request("initialize", hello)
        await self._send({"method": "initialized"})
        if self.resume:
            try:
                opened = await self.request("thread/resume", {**self.thread, "threadId": self.resume})
            except RunnerError as exc:
                if exc.retryable:
                    raise
                raise SessionNotFound(f"codex cannot resume thread {self.resume}: {exc}") from None
        else:
            opened = await self.request("thread/start", {**self.thread, "ephemeral": False})
        thread = as_dict(as_dict(opened).get("thread"))
        self.session_id = as_text(thread.get("id")) or self.resume
        self.model = as_text(as_dict(opened).get("model")) or self.thread.get("model")

    # --- turns ---------------------------------------------------------------------------

    async def send_turn(self, request: ChatRequest) -> None:
        if request.json_schema is not None or any(m.images for m in request.messages):
            raise UnsupportedFeature("structured output and images need a one-shot codex run")
        self._turn_id, self._usage, self._error = None, None, None
        self._streamed.clear()
        text = flatten_conversation(request.messages)
        started = await self.request(
            "turn/start",
            {"threadId": self.session_id, "input": [{"type": "text", "text": text, "text_elements": []}]},
        )
        self._turn_id = as_text(as_dict(as_dict(started).get("turn")).get("id")) or self._turn_id

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        delta = as_text(params.get("delta"))
        if method == "item/agentMessage/delta" and delta:
            self._streamed.add(str(params.get("itemId")))
            self.emit(ChatChunk(delta=delta))
        elif method in REASONING_DELTAS and delta:
            self._streamed.add(str(params.get("itemId")))
            self.emit(ChatChunk(thinking=delta))
        elif method == "item/completed":
            self._item(as_dict(params.get("item")))
        elif method == "turn/started":
            self._turn_id = as_text(as_dict(params.get("turn")).get("id")) or self._turn_id
        elif method == "thread/tokenUsage/updated":
            last = as_dict(params.get("tokenUsage")).get("last")
            if isinstance(last, dict):
                self._usage = _usage(last)
        elif method == "error":
            error = as_dict(params.get("error"))
            if not params.get("willRetry"):
                self._error = self.error_from_message(str(error.get("message") or "codex reported an error"))
            else:
                self.emit(ChatChunk(agent_event=AgentEvent(kind="retry", message=str(error.get("message")))))
        elif method == "turn/completed":
            self._completed(as_dict(params.get("turn")))

    def _item(self, item: dict[str, Any]) -> None:
        """A finished item: its text when it came whole, a tool's run as events."""
        kind, item_id = item.get("type"), str(item.get("id"))
        if kind == "agentMessage" and item_id not in self._streamed and (text := as_text(item.get("text"))):
            self.emit(ChatChunk(delta=text))
        elif kind == "reasoning" and item_id not in self._streamed:
            summary = "".join(part for part in as_list(item.get("summary")) if isinstance(part, str))
            if summary:
                self.emit(ChatChunk(thinking=summary))
        elif kind in ("commandExecution", "fileChange", "mcpToolCall", "webSearch"):
            name = str(item.get("command") or item.get("tool") or kind)
            self.emit(ChatChunk(agent_event=AgentEvent(kind="tool_use", id=item_id, name=name, input=item)))

    def _completed(self, turn: dict[str, Any]) -> None:
        status = turn.get("status")
        if status == "failed":
            error = turn.get("error") or {}
            message = str(error.get("message") or "") if isinstance(error, dict) else ""
            self.emit(self._error or self.error_from_message(message or "the codex turn failed"))
            return
        self.emit(
            ChatChunk(
                finish_reason="cancelled" if status == "interrupted" else "stop",
                usage=self._usage,
                session_id=self.session_id,
                model=self.model,
            )
        )

    async def interrupt(self) -> None:
        if not self.alive or self.session_id is None or self._turn_id is None:
            return
        params = {"threadId": self.session_id, "turnId": self._turn_id}
        with contextlib.suppress(RunnerError):  # a server that has gone ends the turn by its exit
            await self._send({"method": "turn/interrupt", "id": next(self._ids), "params": params})

    async def close(self) -> None:
        await super().close()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ProcessFailed("codex was stopped"))


def _usage(last: dict[str, Any]) -> Usage:
    def count(key: str) -> int:
        return as_count(last.get(key)) or 0

    # As in OpenAI's usage, the input count includes the cached and cache-written tokens.
    cached, written = count("cachedInputTokens"), count("cacheWriteInputTokens")
    return Usage(
        input_tokens=max(0, count("inputTokens") - cached - written),
        output_tokens=count("outputTokens"),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=count("reasoningOutputTokens"),
    )
