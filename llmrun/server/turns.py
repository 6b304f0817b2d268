"""One request's run: a slot, the conversation's tool session, the runner (or tool emulation).

Everything a run holds (its slot, its conversation's lock, its tool process) is released
when the run's generator ends, whether it completed, failed or was closed because the
client went away. A conversation's session mapping is written only after a run completed.

Which stored conversation a request continues, if any, is decided in conversations.py; a
new one is stored under its history once its first turn has succeeded.

On a runner with a warm mode, a conversation's turns go to its warm session (server/warm.py),
one live tool process sent only the new messages; a client that goes away mid-turn
interrupts the turn and leaves the process for the next one. Requests with tools or a
JSON schema, and turns the warm pool has no room for, run one-shot, resuming the tool's
session by id: the mapping is written after warm turns too, so either way works.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ..errors import SessionNotFound, UnsupportedFeature
from ..prompting import new_turns
from ..runners.base import Runner
from ..types import ChatChunk, ChatRequest, ChatResponse, Message, ToolCall
from .common import printable
from .conversations import Conversation, answer_of
from .limits import Busy, Limiter
from .runners import RunnerPool, Target
from .sessions import SessionStore, StoredSession
from .settings import ServerSettings
from .warm import Shape, WarmEntry, WarmPool

log = logging.getLogger("llmrun.server")

# Key of a new conversation's warm session until its first answer names the conversation.
PROVISIONAL = "new:"


@dataclass
class Turn:
    target: Target
    request: ChatRequest
    conversation: Conversation
    stream: bool
    key: str | None = None
    """The stored conversation this turn continues, if any (see server/conversations.py)."""

    @property
    def runner(self) -> Runner:
        return self.target.runner


class Answer:
    """What a turn answered, gathered from its chunks as they pass."""

    def __init__(self) -> None:
        self.chunks = 0
        self.text: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.session_id: str | None = None

    def add(self, chunk: ChatChunk) -> None:
        self.chunks += 1
        self.text.append(chunk.delta)
        if chunk.tool_call is not None:
            self.tool_calls.append(chunk.tool_call)
        self.session_id = chunk.session_id or self.session_id

    def message(self) -> Message:
        return Message.assistant("".join(self.text), tool_calls=self.tool_calls or None)


@dataclass(frozen=True)
class WarmPlan:
    """Which tool session a warm turn continues, and what that session holds."""

    resume: str | None
    held: int
    cwd: str | None
    earlier: int
    """Messages of the request before its new ones."""

    @property
    def replay(self) -> bool:
        """The turn sends a history that no tool session holds."""
        return self.resume is None and self.earlier > 0


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


class RunObserver(Protocol):
    """Watches every turn: counts, times and traces it (server/metrics.py)."""

    def stream(self, turn: Turn, chunks: AsyncGenerator[ChatChunk, None]) -> AsyncGenerator[ChatChunk, None]: ...
    def complete(self, turn: Turn, response: Awaitable[ChatResponse]) -> Awaitable[ChatResponse]: ...


class Engine:
    def __init__(
        self, settings: ServerSettings, pool: RunnerPool, limiter: Limiter, store: SessionStore, warm: WarmPool
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.limiter = limiter
        self.store = store
        self.warm = warm
        self._conversation_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self.observer: RunObserver | None = None

    # --- admission -------------------------------------------------------------------------

    def prepare(self, request: ChatRequest, model: str, *, conversation: Conversation, stream: bool) -> Turn:
        """Resolve the model and apply the server's policy; raises before anything runs."""
        target = self.pool.resolve(model)
        if request.tools and self.settings.tools == "reject":
            raise UnsupportedFeature(
                "this server refuses requests with tools (it was started with --tools reject)",
                runner=target.runner_name,
            )
        if request.tools:  # malformed tool schemas and tool_choice are refused before a slot is taken
            _emulation().plan_tools(request, target.runner_name)
        request = request.model_copy(
            update={
                "model": target.model,
                "allow_tools": self.settings.allow_tools,
                "strict_params": request.strict_params or self.settings.strict_params,
            }
        )
        return Turn(target, request, conversation, stream, conversation.lookup(target.runner_name, request))

    @contextlib.asynccontextmanager
    async def _conversation(self, turn: Turn) -> AsyncIterator[None]:
        """Turns of one conversation run one after another: each resumes what the last left."""
        if turn.key is None:
            yield
            return
        key = (turn.runner.name, turn.key)
        lock, users = self._conversation_locks.get(key, (asyncio.Lock(), 0))
        self._conversation_locks[key] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self.settings.queue_timeout)
            except asyncio.TimeoutError:
                raise Busy(
                    "the conversation is still busy with an earlier turn",
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
        if turn.key is None or not runner.capabilities.sessions:
            return request, None
        stored = self.store.get(runner.name, turn.key)
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

    def _commit(
        self, turn: Turn, sent: ChatRequest, resumed: StoredSession | None, session_id: str | None, answer: Message
    ) -> None:
        if not session_id or not turn.runner.capabilities.sessions:
            return
        conversation = sent.conversation()
        sent_turns = new_turns(conversation) if resumed is not None else conversation
        held = (resumed.messages if resumed is not None else 0) + len(sent_turns) + 1
        self._store(turn, answer, StoredSession(session_id, held, sent.cwd or os.getcwd()))

    def _store(self, turn: Turn, answer: Message, session: StoredSession) -> str:
        """Keep the conversation under the key its next turn will look up; returns that key."""
        key = turn.conversation.after(turn.runner.name, turn.request, answer)
        self.store.put(turn.runner.name, key, session)
        if turn.key is not None and turn.key != key:
            # The conversation moved on: a client sending the older history starts afresh.
            self.store.delete(turn.runner.name, turn.key)
        return key

    # --- running ---------------------------------------------------------------------------

    def _source(self, runner: Runner, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        if request.tools:
            stream_with_tools = cast(
                Callable[[Runner, ChatRequest], AsyncGenerator[ChatChunk, None]], _emulation().stream_with_tools
            )
            return stream_with_tools(runner, request)
        return runner.stream(request)

    def stream(self, turn: Turn) -> AsyncGenerator[ChatChunk, None]:
        """The run's chunks; the slot and the process live exactly as long as this generator."""
        run = self._run(turn)
        return run if self.observer is None else self.observer.stream(turn, run)

    async def _run(self, turn: Turn) -> AsyncGenerator[ChatChunk, None]:
        started = time.monotonic()
        runner = turn.runner
        if turn.request.tools:
            _emulation()  # fail before taking a slot when there is no emulation
        async with self._admitted(turn):
            warm = await self._warm_checkout(turn) if self.warm.serves(runner, turn.request) else None
            try:
                run = self._warm(turn, *warm) if warm is not None else self._cold(turn)
                async with contextlib.aclosing(run) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                if warm is not None:
                    entry = warm[0]
                    if (entry.conversation or "").startswith(PROVISIONAL):
                        entry.role = "one-shot"  # its first turn failed: no client can reach it
                    self.warm.checkin(entry)
        log.info("turn done: runner=%s %.0f ms", runner.name, (time.monotonic() - started) * 1000)

    async def _cold(self, turn: Turn) -> AsyncGenerator[ChatChunk, None]:
        """A one-shot run of the tool, resuming the conversation's tool session by id."""
        request, resumed = self._resume(turn)
        self._log_start(turn, request)
        while True:
            answer = Answer()
            try:
                async with contextlib.aclosing(self._source(turn.runner, request)) as chunks:
                    async for chunk in chunks:
                        answer.add(chunk)
                        yield chunk
            except SessionNotFound:
                if resumed is None or answer.chunks:
                    raise
                request, resumed = self._forget(turn)
                continue
            break
        self._commit(turn, request, resumed, answer.session_id, answer.message())

    # --- warm sessions ---------------------------------------------------------------------

    def _warm_plan(self, turn: Turn) -> WarmPlan:
        """The tool session to continue, judged as `_resume` judges it: an edited history starts afresh."""
        runner, request = turn.runner, turn.request
        conversation = request.conversation()
        earlier = len(conversation) - len(new_turns(conversation))
        if turn.key is not None:
            live = self.warm.find(runner.name, turn.key)
            stored = self.store.get(runner.name, turn.key) if live is None else None
            if live is not None and earlier in (0, live.held):
                return WarmPlan(live.session.id, live.held, request.cwd or live.shape.cwd, earlier)
            if stored is not None and runner.capabilities.sessions and earlier in (0, stored.messages):
                kept = stored.cwd if stored.cwd and os.path.isdir(stored.cwd) else None
                return WarmPlan(stored.session_id, stored.messages, request.cwd or kept, earlier)
            if live is not None or stored is not None:
                log.info("conversation history changed (%d earlier messages): new session", earlier)
        return WarmPlan(None, 0, request.cwd, earlier)

    async def _warm_checkout(self, turn: Turn) -> tuple[WarmEntry, WarmPlan] | None:
        plan = self._warm_plan(turn)
        entry = await self.warm.checkout(
            turn.runner,
            Shape.of(turn.runner, turn.request, plan.cwd),
            # A new conversation gets a provisional key until its first answer gives it one.
            conversation=turn.key or f"{PROVISIONAL}{uuid.uuid4().hex}",
            resume=plan.resume,
            held=plan.held,
            replay=plan.replay,
        )
        return (entry, plan) if entry is not None else None

    async def _warm(self, turn: Turn, entry: WarmEntry, plan: WarmPlan) -> AsyncGenerator[ChatChunk, None]:
        """The turn through a warm session, which stays for the conversation's next turn."""
        self._log_start(turn, turn.request, warm=True, resumed=plan.resume is not None)
        while True:
            session = entry.session
            begun = session.turns > 0 or session.settings.resume is not None
            answer = Answer()
            try:
                async with contextlib.aclosing(session.stream(turn.request)) as chunks:
                    async for chunk in chunks:
                        answer.add(chunk)
                        yield chunk
            except SessionNotFound:
                if plan.resume is None or answer.chunks or turn.key is None:
                    raise
                log.info("tool session of a conversation is gone; replaying its history")
                self.store.delete(turn.runner.name, turn.key)
                plan = WarmPlan(None, 0, plan.cwd, plan.earlier)
                await self.warm.renew(entry, None, 0, start=False)
                continue
            break
        conversation = turn.request.conversation()
        entry.held += (len(new_turns(conversation)) if begun else len(conversation)) + 1
        session_id = entry.session.id
        if session_id and turn.runner.capabilities.sessions:
            stored = StoredSession(session_id, entry.held, entry.shape.cwd or os.getcwd())
            entry.conversation = self._store(turn, answer.message(), stored)
        else:
            entry.conversation = turn.conversation.after(turn.runner.name, turn.request, answer.message())

    async def complete(self, turn: Turn) -> ChatResponse:
        if turn.request.tools and self.observer is not None:  # other turns are watched in stream()
            return await self.observer.complete(turn, self._complete(turn))
        return await self._complete(turn)

    async def _complete(self, turn: Turn) -> ChatResponse:
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
            self._commit(turn, request, resumed, response.session_id, answer_of(response))
        log.info("turn done: runner=%s %.0f ms", turn.runner.name, (time.monotonic() - started) * 1000)
        return response

    def _forget(self, turn: Turn) -> tuple[ChatRequest, None]:
        """The tool no longer has the session: drop the mapping and send the whole history."""
        assert turn.key is not None
        log.info("tool session of a conversation is gone; replaying its history")
        self.store.delete(turn.runner.name, turn.key)
        return turn.request, None

    def _log_start(self, turn: Turn, request: ChatRequest, *, warm: bool = False, resumed: bool = False) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "turn: runner=%s model=%s stream=%s tools=%d warm=%s resumed=%s",
            printable(turn.runner.name),
            printable(request.model or "(default)"),
            turn.stream,
            len(request.tools or []),
            warm,
            resumed or request.session_id is not None,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("prompt: %s", [m.model_dump() for m in request.messages])
