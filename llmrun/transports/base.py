"""A live tool process that answers turn after turn: what a warm session talks to.

`WarmConnection` owns one interactive child from `process.spawn` (the process layer still
does all spawning and killing) and a reader task over its stdout. A protocol module
(stream-json input, ACP) subclasses it: it says how to greet the tool, how to send a turn
and how to interrupt one, and turns the tool's messages into the turn's queue of chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .. import process
from ..errors import ProcessFailed, RunnerError, RunnerTimeout
from ..sessions import TurnItem
from ..types import ChatRequest

if TYPE_CHECKING:
    from ..runners.base import CliRunner
    from ..sessions import SessionSettings

# A tool's start-up can take many seconds on a busy machine (opencode took 18); the
# handshake gets this long unless the session's hard timeout says otherwise.
OPEN_TIMEOUT = 120.0

_T = TypeVar("_T")


def warm_argv(
    argv: list[str], mode: list[str], *, drop: tuple[str, ...] = (), drop_with_value: tuple[str, ...] = ()
) -> list[str]:
    """A one-shot command line made into the warm mode's: `mode` right after the executable,
    and without the one-shot flags (`--flag` or `--flag=...` in `drop`; the flags in
    `drop_with_value` together with the argument after them). Whatever else the runner and
    the user put there (model, lockdown, extra_args) stays, wherever it stood."""
    kept = [argv[0], *mode]
    skip_value = False
    for arg in argv[1:]:
        if skip_value:
            skip_value = False
        elif arg in drop_with_value:
            skip_value = True
        elif arg not in drop and not arg.startswith(tuple(flag + "=" for flag in drop)):
            kept.append(arg)
    return kept


class WarmConnection(ABC):
    def __init__(
        self, runner: CliRunner, invocation: process.Invocation, settings: SessionSettings, resume: str | None
    ) -> None:
        invocation.interactive = True
        invocation.stdin = None
        self.invocation = invocation
        self.runner = runner.name
        self.display_name = runner.display_name
        self._error_for_exit = runner.error_for_exit
        self.resume = resume
        self.session_id: str | None = resume
        # A hard limit on the session's turns bounds its start too.
        self.open_timeout = settings.timeout or OPEN_TIMEOUT
        self._spawned: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Future[None] | None = None
        self.child: process.Child | None = None
        self.queue: asyncio.Queue[TurnItem] | None = None
        """The queue of the turn in flight; None between turns."""
        self.turns_sent = 0
        self.gone = False
        """The tool's output has ended: it exited, or is about to."""

    # --- what a protocol provides --------------------------------------------------------

    @abstractmethod
    async def handshake(self) -> None:
        """Greet the tool and open (or load) its session; sets `session_id` when known."""

    @abstractmethod
    async def send_turn(self, request: ChatRequest) -> None:
        """Send the turn's new messages; answers go to `self.queue` via `emit`."""

    @abstractmethod
    async def interrupt(self) -> None: ...

    def on_exit(self) -> None:  # noqa: B027 - hook
        """The tool exited (or closed its output); called once, before the turn is failed."""

    # --- shared --------------------------------------------------------------------------

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        self._spawned = stack
        limits = process.Limits(stall_timeout=None, timeout=None)
        self.child = await stack.enter_async_context(process.spawn(self.invocation, limits))
        try:
            await self.within_open_timeout(self.handshake())
        except RunnerError as exc:
            raise self.with_process(exc) from None

    async def within_open_timeout(self, step: Awaitable[_T]) -> _T:
        """Run a start-up step; the tool exiting or overrunning the start-up time fails it."""
        assert self.child is not None
        work: asyncio.Future[_T] = asyncio.ensure_future(step)
        exited: asyncio.Future[int] = asyncio.ensure_future(asyncio.shield(self.child.exited))
        try:
            waiting: set[asyncio.Future[Any]] = {work, exited}
            done, _ = await asyncio.wait(waiting, timeout=self.open_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if work in done:
            return work.result()
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        if exited in done or not self.alive:
            raise self.exit_error()
        raise RunnerTimeout(f"{self.display_name} did not start within {self.open_timeout:g} s")

    async def begin_turn(self, request: ChatRequest) -> asyncio.Queue[TurnItem]:
        queue: asyncio.Queue[TurnItem] = asyncio.Queue()
        self.queue = queue
        try:
            await self.send_turn(request)
        except RunnerError as exc:
            self.queue = None
            raise self.with_process(exc) from None
        self.turns_sent += 1
        return queue

    def read_with(self, reader: Coroutine[Any, Any, None]) -> None:
        """Run the protocol's reader of `lines()` for as long as the connection lives."""
        self._reader = asyncio.ensure_future(reader)

    def emit(self, item: TurnItem) -> None:
        """Hand a chunk (or the error that ends the turn) to the turn in flight."""
        if isinstance(item, RunnerError):
            item = self.with_process(item)
        if self.queue is not None:
            self.queue.put_nowait(item)
            if isinstance(item, RunnerError) or item.is_final:
                self.queue = None

    async def lines(self) -> AsyncGenerator[str, None]:
        """The tool's stdout lines for as long as it runs; its end fails the turn in flight."""
        assert self.child is not None
        try:
            async with contextlib.aclosing(self.child.lines()) as lines:
                async for line in lines:
                    yield line
        except RunnerError as exc:  # a line over the cap: the stream cannot be trusted further
            self.emit(exc)
            return
        self.gone = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.child.exited), 5.0)
        self.on_exit()
        self.emit(self.exit_error())

    def exit_error(self) -> RunnerError:
        code = self.child.returncode if self.child is not None else None
        stderr = self.child.stderr_tail() if self.child is not None else ""
        if code is not None and code != 0 and self._error_for_exit is not None:
            return self.with_process(self._error_for_exit(code, stderr))
        said = f" with code {code}" if code is not None else ""
        return self.with_process(ProcessFailed(f"{self.display_name} exited{said} in the middle of the session"))

    def with_process(self, error: RunnerError) -> RunnerError:
        child = self.child
        return error.with_process(
            runner=self.runner,
            exit_code=child.returncode if child is not None else None,
            stderr=child.stderr_tail() if child is not None else "",
        )

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.returncode is None and not self.gone

    def pids(self) -> list[int]:
        if self.child is None or not self.alive:
            return []
        return process.group_members(self.child.pid)

    async def close(self) -> None:
        """Stop the tool: its whole process group goes, whatever state it is in."""
        stack, self._spawned = self._spawned, None
        if self.queue is not None:
            self.emit(ProcessFailed(f"{self.display_name} was stopped"))
        if stack is not None:
            await stack.aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
