"""The ASGI response of a run: JSON or SSE, with the client's disconnect cancelling the run.

The run (slot, tool process, chunks) lives in one task, which also writes the response,
so the generator and the process it started are owned, started and closed by the same
task. A second task only waits for the client to go away. Whichever finishes first ends
the other, and both are awaited, so no exception is left unretrieved.

Until the first chunk exists nothing has been sent, so a failure before it (bad model,
queue full, tool not logged in) is a proper HTTP status with the API's error body;
after it, the failure is the API's error event and the stream ends. A stream whose tool
stays silent longer than a grace sends its status and headers anyway, then a keep-alive
at an interval until the first chunk: clients that give up on a silent connection (a
headers timeout, a read timeout) then wait for a tool that thinks for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Union

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..errors import LlmrunError
from ..types import ChatChunk, ChatResponse
from .common import ShuttingDown

log = logging.getLogger("llmrun.server")


class Output(Protocol):
    """What an API dialect renders (see openai_api.Output and anthropic_api.Output)."""

    media_type: str
    """Content type of a stream (SSE, or NDJSON for the Ollama API)."""

    def error(self, exc: LlmrunError) -> tuple[int, dict[str, Any], dict[str, str]]: ...
    def body(self, response: ChatResponse) -> dict[str, Any]: ...
    def start(self) -> bytes: ...
    def chunk(self, chunk: ChatChunk) -> bytes: ...
    def finish(self) -> bytes: ...
    def error_event(self, exc: LlmrunError) -> bytes: ...
    def keepalive(self) -> bytes:
        """Bytes the API's clients read as nothing, sent while the tool is silent before its first chunk."""
        ...


@dataclass(frozen=True)
class Pace:
    """When a silent stream opens anyway, and how often it then says it is alive."""

    grace: float
    interval: float


class Inflight:
    """The runs being answered, so that a shutdown can wait for them and then cancel them."""

    def __init__(self) -> None:
        self.runs: set[RunResponse] = set()
        self.changed = asyncio.Event()
        self.draining = False

    def add(self, run: RunResponse) -> None:
        self.runs.add(run)

    def discard(self, run: RunResponse) -> None:
        self.runs.discard(run)
        self.changed.set()

    async def _wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.runs:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    async def drain(self, deadline: float, cleanup: float = 10.0) -> None:
        """Let runs finish for `deadline` seconds, then cancel the rest and wait for their cleanup."""
        self.draining = True
        if self.runs:
            log.info("shutting down: waiting up to %g s for %d run(s)", deadline, len(self.runs))
        if await self._wait_empty(deadline):
            return
        log.warning("shutting down: cancelling %d run(s) still going", len(self.runs))
        for run in list(self.runs):
            run.stop()
        await self._wait_empty(cleanup)


def error_json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    response = Response(
        json.dumps(body, ensure_ascii=False).encode(), status_code=status, media_type="application/json"
    )
    for name, value in headers.items():
        response.headers[name] = value
    return response


AnswerHeader = Callable[[Union[ChatChunk, ChatResponse, None]], Union[str, None]]
"""A header computed when the head is sent, from what of the answer exists then: its first
chunk (a stream), the whole response, or nothing (an error, or a stream opened while silent);
None leaves it out."""


class RunResponse(Response):
    """Answers one request by running `stream()` (SSE) or `complete()` (one JSON body)."""

    def __init__(
        self,
        output: Output,
        inflight: Inflight,
        *,
        stream: Callable[[], AsyncGenerator[ChatChunk, None]] | None = None,
        complete: Callable[[], Awaitable[ChatResponse]] | None = None,
        headers: Mapping[str, str | AnswerHeader] | None = None,
        pace: Pace | None = None,
    ) -> None:
        super().__init__(status_code=200)
        assert (stream is None) != (complete is None)
        self.output = output
        self.inflight = inflight
        self._stream = stream
        self._complete = complete
        self._extra = dict(headers or {})
        self._answer: ChatChunk | ChatResponse | None = None  # what the answer-made headers are made of
        self._pace = pace
        self._writing = asyncio.Lock()  # held by the keep-alive task while it writes
        self._started = False  # response head sent
        self._finished = False  # last body byte sent
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None
        self._keeping_alive: asyncio.Task[None] | None = None  # a silent stream's keep-alives, after the grace

    def stop(self) -> None:
        """Cancel the run because the server is shutting down."""
        self._stopping = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        worker = asyncio.ensure_future(self._work(send))
        self._worker = worker
        gone = asyncio.ensure_future(_client_gone(receive))
        self.inflight.add(self)
        try:
            await asyncio.wait({worker, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done() and not self._finished:
                worker.cancel()  # the client went away mid-run
        finally:
            gone.cancel()
            if not worker.done():
                worker.cancel()  # we are being cancelled ourselves
            results = await asyncio.gather(worker, gone, return_exceptions=True)
            self.inflight.discard(self)
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            log.error("a run failed unexpectedly", exc_info=failure)
        if self._stopping and not self._finished:
            with contextlib.suppress(Exception):
                await self._fail(send, ShuttingDown("the server is shutting down; the run was cancelled"))

    # --- the run ---------------------------------------------------------------------------

    async def _work(self, send: Send) -> None:
        if self._stream is not None:
            await self._run_stream(send, self._stream)
        else:
            assert self._complete is not None
            await self._run_complete(send, self._complete)

    async def _run_complete(self, send: Send, complete: Callable[[], Awaitable[ChatResponse]]) -> None:
        try:
            response = await complete()
        except LlmrunError as exc:
            await self._fail(send, exc)
            return
        except Exception as exc:
            log.error("a run failed unexpectedly", exc_info=exc)
            await self._fail(send, LlmrunError("internal error in llmrun's server"))
            return
        body = json.dumps(self.output.body(response), ensure_ascii=False).encode()
        self._answer = response
        await self._head(send, 200, [(b"content-type", b"application/json")])
        await self._body(send, body, more=False)

    async def _run_stream(self, send: Send, stream: Callable[[], AsyncGenerator[ChatChunk, None]]) -> None:
        output = self.output
        async with contextlib.aclosing(stream()) as chunks:
            # A timer, not a task: most streams have their first chunk before the grace ends.
            grace = None
            if self._pace is not None:
                grace = asyncio.get_running_loop().call_later(self._pace.grace, self._begin_keep_alive, send)
            first: ChatChunk | None = None
            failure: LlmrunError | None = None
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                pass
            except LlmrunError as exc:
                failure = exc
            except Exception as exc:
                log.error("a run failed unexpectedly", exc_info=exc)
                failure = LlmrunError("internal error in llmrun's server")
            finally:
                if grace is not None:
                    grace.cancel()
                if self._keeping_alive is not None:
                    await self._stop_keeping_alive(self._keeping_alive)
            if failure is not None:
                await self._fail(send, failure)
                return
            if not self._started:
                self._answer = first
                await self._open(send)
            if first is not None:
                await self._body(send, output.chunk(first))
            try:
                async for chunk in chunks:
                    data = output.chunk(chunk)
                    if data:
                        await self._body(send, data)
                tail = output.finish()
            except LlmrunError as exc:
                tail = output.error_event(exc)
            except Exception as exc:
                log.error("a run failed unexpectedly", exc_info=exc)
                tail = output.error_event(LlmrunError("internal error in llmrun's server"))
        await self._body(send, tail, more=False)

    async def _open(self, send: Send) -> None:
        head = [(b"content-type", self.output.media_type.encode()), (b"cache-control", b"no-cache")]
        await self._head(send, 200, [*head, (b"x-accel-buffering", b"no")])
        await self._body(send, self.output.start())

    def _begin_keep_alive(self, send: Send) -> None:
        self._keeping_alive = asyncio.ensure_future(self._keep_alive(send))

    async def _keep_alive(self, send: Send) -> None:
        """Open a stream that is still silent after the grace, then keep it alive until cancelled."""
        assert self._pace is not None
        async with self._writing:
            await self._open(send)
        while True:
            await asyncio.sleep(self._pace.interval)
            async with self._writing:
                await self._body(send, self.output.keepalive())

    async def _stop_keeping_alive(self, task: asyncio.Future[None]) -> None:
        # Cancelled only between two of its writes, so that no write is cut in half.
        async with self._writing:
            task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            # A write failed: the client is gone, which the disconnect watcher reports.
            log.debug("a keep-alive could not be sent: %s", task.exception())

    # --- writing ---------------------------------------------------------------------------

    async def _head(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._started = True
        extra = [(k, v if isinstance(v, str) else v(self._answer)) for k, v in self._extra.items()]
        headers = [*headers, *((k.lower().encode(), v.encode()) for k, v in extra if v is not None)]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, send: Send, data: bytes, *, more: bool = True) -> None:
        if not more:
            self._finished = True
        await send({"type": "http.response.body", "body": data, "more_body": more})

    async def _fail(self, send: Send, exc: LlmrunError) -> None:
        if not self._started:
            status, body, headers = self.output.error(exc)
            raw = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in headers.items()]
            await self._head(send, status, raw)
            await self._body(send, json.dumps(body, ensure_ascii=False).encode(), more=False)
        elif not self._finished:
            await self._body(send, self.output.error_event(exc), more=False)


async def _client_gone(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
