"""One request's run: a slot, the conversation's tool session, the runner (or tool emulation).

Everything a run holds (its slot, its conversation's lock, its tool process) is released
when the run's generator ends, whether it completed, failed or was closed because the
client went away. A conversation's session mapping is written only after a run completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from ..errors import SessionNotFound, UnsupportedFeature
from ..prompting import new_turns
from ..runners.base import Runner
from ..types import ChatChunk, ChatRequest, ChatResponse
from .limits import Busy, Limiter
from .runners import RunnerPool, Target
from .sessions import SessionStore, StoredSession
from .settings import ServerSettings

log = logging.getLogger("llmrun.server")

MAX_CONVERSATION_ID = 256


@dataclass
class Turn:
    target: Target
    request: ChatRequest
    conversation: str | None
    stream: bool

    @property
    def runner(self) -> Runner:
        return self.target.runner


def _emulation() -> Any:
    try:
        return importlib.import_module("llmrun.tool_emulation")
    except ModuleNotFoundError as exc:
        if exc.name != "llmrun.tool_emulation":
            raise
        raise UnsupportedFeature(
            "this llmrun has no tool emulation yet, so requests with tools cannot be served",
            hint="start the server with `--tools reject` to refuse them explicitly",
        ) from None


class Engine:
    def __init__(self, settings: ServerSettings, pool: RunnerPool, limiter: Limiter, store: SessionStore) -> None:
        self.settings = settings
        self.pool = pool
        self.limiter = limiter
        self.store = store
        self._conversation_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    # --- admission -------------------------------------------------------------------------

    def prepare(self, request: ChatRequest, model: str, *, conversation: str | None, stream: bool) -> Turn:
        """Resolve the model and apply the server's policy; raises before anything runs."""
        target = self.pool.resolve(model)
        if request.tools and self.settings.tools == "reject":
            raise UnsupportedFeature(
                "this server refuses requests with tools (it was started with --tools reject)",
                runner=target.runner_name,
            )
        if conversation is not None:
            conversation = conversation.strip()[:MAX_CONVERSATION_ID] or None
        request = request.model_copy(update={"model": target.model, "allow_tools": self.settings.allow_tools})
        return Turn(target, request, conversation, stream)

    @contextlib.asynccontextmanager
    async def _conversation(self, turn: Turn) -> AsyncIterator[None]:
        """Turns of one conversation run one after another: each resumes what the last left."""
        if turn.conversation is None:
            yield
            return
        key = (turn.runner.name, turn.conversation)
        lock, users = self._conversation_locks.get(key, (asyncio.Lock(), 0))
        self._conversation_locks[key] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self.settings.queue_timeout)
            except asyncio.TimeoutError:
                raise Busy(
                    f"conversation {turn.conversation!r} is still busy with an earlier turn",
                    runner=turn.runner.name,
                    retry_after=self.limiter.retry_after(),
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._conversation_locks[key]
            if users <= 1:
                del self._conversation_locks[key]
            else:
                self._conversation_locks[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def _admitted(self, turn: Turn) -> AsyncIterator[None]:
        async with self._conversation(turn), self.limiter.slot(turn.runner.name):
            yield

    # --- sessions --------------------------------------------------------------------------

    def _resume(self, turn: Turn) -> tuple[ChatRequest, StoredSession | None]:
        """The request to send: resuming the conversation's tool session when its history fits."""
        runner, request = turn.runner, turn.request
        if turn.conversation is None or not runner.capabilities.sessions:
            return request, None
        stored = self.store.get(runner.name, turn.conversation)
        if stored is None:
            return request, None
        conversation = request.conversation()
        before = len(conversation) - len(new_turns(conversation))
        # A client either sends only the new turn (stateful) or its whole history, which must
        # then be what the session holds; an edited or shortened history starts afresh.
        if before not in (0, stored.messages):
            log.info(
                "conversation history changed (%d messages, session holds %d): new session", before, stored.messages
            )
            return request, None
        update: dict[str, Any] = {"session_id": stored.session_id}
        if stored.cwd and request.cwd is None and os.path.isdir(stored.cwd):
            update["cwd"] = stored.cwd
        return request.model_copy(update=update), stored

    def _commit(self, turn: Turn, sent: ChatRequest, resumed: StoredSession | None, session_id: str | None) -> None:
        if turn.conversation is None or not session_id or not turn.runner.capabilities.sessions:
            return
        conversation = sent.conversation()
        sent_turns = new_turns(conversation) if resumed is not None else conversation
        held = (resumed.messages if resumed is not None else 0) + len(sent_turns) + 1
        self.store.put(turn.runner.name, turn.conversation, StoredSession(session_id, held, sent.cwd or os.getcwd()))

    # --- running ---------------------------------------------------------------------------

    def _source(self, runner: Runner, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        if request.tools:
            stream_with_tools = cast(
                Callable[[Runner, ChatRequest], AsyncGenerator[ChatChunk, None]], _emulation().stream_with_tools
            )
            return stream_with_tools(runner, request)
        return runner.stream(request)

    async def stream(self, turn: Turn) -> AsyncGenerator[ChatChunk, None]:
        """The run's chunks; the slot and the process live exactly as long as this generator."""
        started = time.monotonic()
        runner = turn.runner
        if turn.request.tools:
            _emulation()  # fail before taking a slot when there is no emulation
        async with self._admitted(turn):
            request, resumed = self._resume(turn)
            self._log_start(turn, request)
            while True:
                session_id: str | None = None
                yielded = False
                try:
                    async with contextlib.aclosing(self._source(runner, request)) as chunks:
                        async for chunk in chunks:
                            session_id = chunk.session_id or session_id
                            yielded = True
                            yield chunk
                except SessionNotFound:
                    if resumed is None or yielded:
                        raise
                    request, resumed = self._forget(turn)
                    continue
                break
            self._commit(turn, request, resumed, session_id)
        log.info("turn done: runner=%s %.0f ms", runner.name, (time.monotonic() - started) * 1000)

    async def complete(self, turn: Turn) -> ChatResponse:
        started = time.monotonic()
        if not turn.request.tools:
            chunks = []
            async with contextlib.aclosing(self.stream(turn)) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
            duration = int((time.monotonic() - started) * 1000)
            return ChatResponse.from_chunks(chunks, runner=turn.runner.name, duration_ms=duration)
        chat_with_tools = cast(Callable[[Runner, ChatRequest], Awaitable[ChatResponse]], _emulation().chat_with_tools)
        async with self._admitted(turn):
            request, resumed = self._resume(turn)
            self._log_start(turn, request)
            try:
                response = await chat_with_tools(turn.runner, request)
            except SessionNotFound:
                if resumed is None:
                    raise
                request, resumed = self._forget(turn)
                response = await chat_with_tools(turn.runner, request)
            self._commit(turn, request, resumed, response.session_id)
        log.info("turn done: runner=%s %.0f ms", turn.runner.name, (time.monotonic() - started) * 1000)
        return response

    def _forget(self, turn: Turn) -> tuple[ChatRequest, None]:
        """The tool no longer has the session: drop the mapping and send the whole history."""
        assert turn.conversation is not None
        log.info("tool session of a conversation is gone; replaying its history")
        self.store.delete(turn.runner.name, turn.conversation)
        return turn.request, None

    def _log_start(self, turn: Turn, request: ChatRequest) -> None:
        log.info(
            "turn: runner=%s model=%s stream=%s tools=%d resumed=%s",
            turn.runner.name,
            request.model or "(default)",
            turn.stream,
            len(request.tools or []),
            request.session_id is not None,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("prompt: %s", [m.model_dump() for m in request.messages])
