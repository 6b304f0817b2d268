"""Conversations held by one tool: what `runner.session()` returns.

A `Session` sends each turn's new messages to the same conversation of the tool. Where the
tool has a warm mode (Claude Code's stream-json input, the Agent Client Protocol), one tool
process lives for the whole session and later turns skip the tool's start-up. Elsewhere
each turn starts the tool afresh and resumes its session by id, or replays the history.
Both keep one contract, so a caller never has to ask which kind it holds.

Every turn ends in exactly one way: a last chunk with `finish_reason` (`"cancelled"` after
`interrupt()`), or a typed error. A turn's chunks travel through a queue that the tool's
side fills, so a turn can be timed, interrupted or abandoned without tearing the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

from .errors import InvalidRequest, ProcessFailed, RunnerError, RunnerTimeout, UnsupportedFeature
from .prompting import new_turns
from .types import SAMPLING_PARAMETERS, ChatChunk, ChatRequest, ChatResponse, Message

if TYPE_CHECKING:
    from .runners.base import Runner
    from .transports.base import WarmConnection

Prompt = Union[str, ChatRequest]
TurnItem = Union[ChatChunk, RunnerError]
"""What a turn's queue carries: chunks, ended by one with finish_reason or by an error."""

# After interrupt(), how long the tool may take to end its turn before its process is killed.
INTERRUPT_GRACE = 10.0


@dataclass
class SessionSettings:
    """What stays the same for every turn of a session."""

    model: str | None = None
    system: str | None = None
    cwd: str | None = None
    resume: str | None = None
    """The tool's session id to continue."""
    allow_tools: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    """Hard limit on each turn, in seconds."""
    stall_timeout: float | None = None
    """Limit on silence within a turn; the runner's own default when None."""

    def request(self, messages: list[Message], **fields: Any) -> ChatRequest:
        return ChatRequest(
            messages=messages,
            model=self.model,
            system=self.system,
            cwd=self.cwd,
            allow_tools=self.allow_tools,
            options=dict(self.options),
            timeout=self.timeout,
            stall_timeout=self.stall_timeout,
            **fields,
        )


@dataclass
class _Turn:
    started: float
    timeout: float | None
    stall_timeout: float | None
    last_output: float
    interrupted_at: float | None = None
    text: list[str] = field(default_factory=list)


class Session(ABC):
    """One conversation with one tool. Use as `async with runner.session(...) as session:`."""

    warm: ClassVar[bool] = False

    def __init__(self, runner: Runner, settings: SessionSettings) -> None:
        self.runner = runner
        self.settings = settings
        self.id: str | None = settings.resume
        """The tool's own session id, once known: `runner.session(resume=id)` continues it."""
        self.turns = 0
        self._lock = asyncio.Lock()
        self._turn: _Turn | None = None
        self._queue: asyncio.Queue[TurnItem] | None = None
        self._settling: asyncio.Future[None] | None = None
        self._closed = False

    # --- the contract --------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - only warm sessions have something to start
        """Start the tool now rather than at the first turn (pre-warming)."""

    def stream(self, prompt: Prompt) -> AsyncGenerator[ChatChunk, None]:
        """The answer to one turn, chunk by chunk; the last chunk has finish_reason."""
        request = self._request_for(prompt)
        return self._with_parameters(request, self._turn_chunks(request))

    def _with_parameters(
        self, request: ChatRequest, chunks: AsyncGenerator[ChatChunk, None]
    ) -> AsyncGenerator[ChatChunk, None]:
        """The turn with its sampling parameters applied (runs of the tool apply them themselves)."""
        return chunks

    async def _turn_chunks(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        async with self._lock:
            if self._closed:
                raise InvalidRequest("the session is closed", runner=self.runner.name)
            await self._settle()
            turn = _Turn(0.0, request.timeout, self._stall_timeout(request), 0.0)
            self._turn = turn  # from here on, interrupt() applies to this turn
            try:
                queue = await self._begin(request)
            except BaseException:
                self._turn = None
                raise
            # A tool's start-up has its own limit: the turn's limits count from here.
            turn.started = turn.last_output = time.monotonic()
            self._queue = queue
            if turn.interrupted_at is not None:
                turn.interrupted_at = turn.started
                await self._stop_turn()  # interrupted while the tool was starting
            ended = False
            answered = False
            try:
                while True:
                    item = await self._next(queue, turn)
                    if isinstance(item, RunnerError) and not answered and await self._restarted(item):
                        queue = await self._begin(request)  # it died between turns: start afresh, resumed
                        self._queue = queue
                        continue
                    answered = True
                    if isinstance(item, RunnerError):
                        ended = True
                        if turn.interrupted_at is None:
                            raise item
                        item = ChatChunk(finish_reason="cancelled")  # the tool reported the cancel as an error
                    if item.session_id:
                        self.id = item.session_id
                    if item.is_final:
                        ended = True
                        if turn.interrupted_at is not None:
                            item = item.model_copy(update={"finish_reason": "cancelled"})
                        self.turns += 1
                        self._turn_done(request, "".join(turn.text))
                    elif item.delta:
                        turn.text.append(item.delta)
                    yield item
                    if ended:
                        return
            finally:
                self._turn = self._queue = None
                if not ended:
                    self._abandon(queue)

    async def complete(self, prompt: Prompt) -> ChatResponse:
        started = time.monotonic()
        async with aclosing(self.stream(prompt)) as chunks:
            collected = [chunk async for chunk in chunks]
        duration = int((time.monotonic() - started) * 1000)
        return ChatResponse.from_chunks(collected, runner=self.runner.name, duration_ms=duration)

    async def interrupt(self) -> None:
        """Stop the answer in flight: the turn ends with finish_reason "cancelled"; the
        conversation (and, for a warm session, the process) stays for the next turn."""
        turn = self._turn
        if turn is None or turn.interrupted_at is not None:
            return
        turn.interrupted_at = time.monotonic()
        if self._queue is not None:  # else the turn is still starting: stopped once it has begun
            await self._stop_turn()

    async def aclose(self) -> None:
        """End the session; no process of it is left running."""
        self._closed = True
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.wait([self._settling])
        await self._shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    def pids(self) -> list[int]:
        """The tool processes this session holds alive right now."""
        return []

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- what each kind provides ---------------------------------------------------------

    @abstractmethod
    async def _begin(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        """Send the turn; its chunks (or an error) arrive in the returned queue."""

    @abstractmethod
    async def _stop_turn(self) -> None:
        """Ask the tool to end the turn in flight (interrupt)."""

    @abstractmethod
    def _abandon(self, queue: asyncio.Queue[TurnItem]) -> None:
        """The caller left mid-turn: end the turn without losing the conversation."""

    @abstractmethod
    async def _kill(self) -> None:
        """Stop the tool process now (a hung turn); the next turn starts afresh."""

    @abstractmethod
    async def _shutdown(self) -> None: ...

    def _stall_timeout(self, request: ChatRequest) -> float | None:
        return None

    async def _restarted(self, error: RunnerError) -> bool:
        """Whether the turn's first answer, `error`, means the process it was sent to had died
        before it; the session is then ready to send the turn again to a new process."""
        return False

    def _turn_done(self, request: ChatRequest, answer: str) -> None:  # noqa: B027 - hook
        """A turn completed with this answer."""

    # --- shared machinery ----------------------------------------------------------------

    def _request_for(self, prompt: Prompt) -> ChatRequest:
        """The turn's request: the session's settings, and the messages not yet sent."""
        if isinstance(prompt, str):
            messages = [Message.user(prompt)]
            limits: dict[str, Any] = {}
        else:
            if prompt.tools:
                raise UnsupportedFeature(
                    "a session does not take client-defined tools; use tool emulation on the runner",
                    runner=self.runner.name,
                )
            # A caller may send its whole history each turn; the tool already holds all but
            # the new part once the conversation has begun.
            begun = self.turns > 0 or self.settings.resume is not None
            messages = new_turns(prompt.messages) if begun else prompt.conversation()
            limits = {
                key: value
                for key in ("timeout", "stall_timeout", "json_schema", "strict_params", *SAMPLING_PARAMETERS)
                if (value := getattr(prompt, key)) is not None
            }
        if not any(m.text.strip() or m.images for m in messages):
            raise InvalidRequest("the turn has no new message to send", runner=self.runner.name)
        request = self.settings.request(messages)
        return request.model_copy(update=limits) if limits else request

    async def _next(self, queue: asyncio.Queue[TurnItem], turn: _Turn) -> TurnItem:
        """The turn's next item, or the end a limit imposes."""
        while True:
            timeout, expiry = self._wait_limit(turn)
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except asyncio.TimeoutError:
                if expiry == "recheck":
                    continue  # interrupt() came while waiting; wait again under its grace
                await self._kill()
                if expiry == "interrupt":
                    return ChatChunk(finish_reason="cancelled")
                if expiry == "hard":
                    return RunnerTimeout(
                        f"the turn exceeded its {turn.timeout:g} s time limit", runner=self.runner.name
                    )
                return RunnerTimeout(f"no output for {turn.stall_timeout:g} s (stall timeout)", runner=self.runner.name)
            turn.last_output = time.monotonic()
            return item

    def _wait_limit(self, turn: _Turn) -> tuple[float | None, str]:
        now = time.monotonic()
        limits: list[tuple[float, str]] = []
        if turn.stall_timeout is not None:
            limits.append((turn.last_output + turn.stall_timeout - now, "stall"))
        if turn.timeout is not None:
            limits.append((turn.started + turn.timeout - now, "hard"))
        if turn.interrupted_at is not None:
            limits.append((turn.interrupted_at + INTERRUPT_GRACE - now, "interrupt"))
        else:
            limits.append((1.0, "recheck"))  # so an interrupt() starts its grace promptly
        remaining, expiry = min(limits)
        return max(0.0, remaining), expiry

    async def _settle(self) -> None:
        """Wait for an abandoned turn to be wound up before the next one starts."""
        if self._settling is not None:
            await asyncio.wait([self._settling])  # its outcome, even a cancellation, is not ours
            self._settling = None


class ResumingSession(Session):
    """A session over one-shot runs: each turn starts the tool, which resumes its session
    by id where it keeps sessions; otherwise the history is sent again with each turn."""

    warm = False

    def __init__(self, runner: Runner, settings: SessionSettings) -> None:
        super().__init__(runner, settings)
        self.history: list[Message] = []
        self._pump: asyncio.Future[None] | None = None

    async def _begin(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        queue: asyncio.Queue[TurnItem] = asyncio.Queue()
        if self.runner.capabilities.sessions and self.id:
            request = request.model_copy(update={"session_id": self.id})
        elif self.history:
            request = request.model_copy(update={"messages": [*self.history, *request.messages]})
        self._pump = asyncio.ensure_future(self._run(request, queue))
        return queue

    async def _run(self, request: ChatRequest, queue: asyncio.Queue[TurnItem]) -> None:
        try:
            async with aclosing(self.runner.stream(request)) as chunks:
                async for chunk in chunks:
                    queue.put_nowait(chunk)
        except RunnerError as exc:
            queue.put_nowait(exc)

    def _turn_done(self, request: ChatRequest, answer: str) -> None:
        if not (self.runner.capabilities.sessions and self.id):
            self.history += [*request.messages, Message.assistant(answer)]

    async def _stop_turn(self) -> None:
        await self._kill()  # a one-shot run has no gentler stop; the tool's session keeps what it saved
        if self._queue is not None:
            self._queue.put_nowait(ChatChunk(finish_reason="cancelled"))

    def _abandon(self, queue: asyncio.Queue[TurnItem]) -> None:
        if self._pump is not None:
            self._pump.cancel()  # closing the run kills its process
            self._settling = self._pump

    async def _kill(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _shutdown(self) -> None:
        await self._kill()


class WarmSession(Session):
    """A session with one live tool process, started at the first turn (or by `start()`)
    and restarted, resuming the tool's session, if it died between turns."""

    warm = True

    def __init__(self, runner: Runner, settings: SessionSettings) -> None:
        super().__init__(runner, settings)
        self._connection: WarmConnection | None = None
        self._fresh = True

    async def start(self) -> None:
        async with self._lock:
            await self._settle()
            await self._connected()

    def pids(self) -> list[int]:
        return self._connection.pids() if self._connection is not None else []

    async def _connected(self) -> WarmConnection:
        connection = self._connection
        if connection is not None and connection.alive:
            return connection
        if connection is not None:
            self._connection = None
            await connection.close()  # reap what is left of the dead one
        connection = self.runner.warm_connection(self.settings, resume=self.id)
        self._connection = connection  # so that aclose() during the start stops it too
        try:
            await connection.open()
        except BaseException:
            self._connection = None
            await connection.close()
            raise
        self.id = connection.session_id or self.id
        return connection

    async def _begin(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        if request.messages and any(m.images for m in request.messages) and not self.runner.capabilities.images:
            raise UnsupportedFeature(f"{self.runner.display_name} does not take images", runner=self.runner.name)
        connection = await self._connected()
        self._fresh = connection.turns_sent == 0
        try:
            return await connection.begin_turn(request)
        except ProcessFailed:
            if self._fresh:
                raise
        # The tool died between turns and its input is closed: start afresh, resumed.
        await self._kill()
        connection = await self._connected()
        self._fresh = True
        return await connection.begin_turn(request)

    async def _restarted(self, error: RunnerError) -> bool:
        connection = self._connection
        if self._fresh or connection is None or not connection.gone:
            return False
        await self._kill()
        return True

    def _stall_timeout(self, request: ChatRequest) -> float | None:
        return request.stall_timeout or getattr(self.runner, "stall_timeout", None)

    def _with_parameters(
        self, request: ChatRequest, chunks: AsyncGenerator[ChatChunk, None]
    ) -> AsyncGenerator[ChatChunk, None]:
        # The process was started before this turn: only what llmrun enforces can apply.
        from .parameters import enforced

        return enforced(self.runner, request, chunks, honoured={})

    async def _stop_turn(self) -> None:
        if self._connection is not None:
            await self._connection.interrupt()

    def _abandon(self, queue: asyncio.Queue[TurnItem]) -> None:
        self._settling = asyncio.ensure_future(self._wind_up(queue))

    async def _wind_up(self, queue: asyncio.Queue[TurnItem]) -> None:
        """Interrupt the abandoned turn and read it to its end, so the next turn starts clean."""
        connection = self._connection
        if connection is None or not connection.alive:
            return
        try:
            await connection.interrupt()
            deadline = time.monotonic() + INTERRUPT_GRACE
            while True:
                item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                if isinstance(item, RunnerError) or item.is_final:
                    return
        except (asyncio.TimeoutError, RunnerError):
            await self._kill()
        except asyncio.CancelledError:
            await self._kill()
            raise

    async def _kill(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _shutdown(self) -> None:
        await self._kill()
