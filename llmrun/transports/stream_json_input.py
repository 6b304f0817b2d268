"""Claude Code's streaming input: one `claude --input-format stream-json` process per session.

The session opens with an `initialize` control request, which the tool answers once it is
ready. Each turn is a `user` message written as one JSON line on stdin; the tool answers with the
same stream-json events as a one-shot run, ending the turn with a `result` event, and
keeps the conversation in memory for the next line. An interrupt is a `control_request`
of subtype `interrupt`, answered by a `control_response`; the turn then ends with its
`result` as usual. A fresh parser reads each turn, so a turn parses exactly like a
one-shot run. The `result`'s cost counts every turn of the process, its usage only the
turn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import UnsupportedFeature
from ..prompting import flatten_conversation
from ..runners.base import as_dict, json_object
from ..runners.stream_json import StreamJsonParser, user_line
from ..types import ChatRequest
from .base import WarmConnection


class StreamJsonInput(WarmConnection):
    def __init__(self, *args: Any, new_parser: Callable[[], StreamJsonParser]) -> None:
        super().__init__(*args)
        self.new_parser = new_parser
        self._parser: StreamJsonParser | None = None
        self._ready: asyncio.Future[None] | None = None
        self._requests = 0
        self._initialize_id = ""
        self._cost_so_far = 0.0

    async def handshake(self) -> None:
        # The tool answers an `initialize` control request once it is ready to take a
        # message, so a pre-warmed session is ready when start() returns, not merely spawned.
        self.read_with(self._read())
        self._ready = asyncio.get_running_loop().create_future()
        assert self.child is not None
        await self.child.send(_line(self._control("initialize", hooks=None)))
        await self._ready

    def _control(self, subtype: str, **fields: Any) -> dict[str, Any]:
        self._requests += 1
        request_id = f"req_{self._requests}_{uuid.uuid4().hex[:8]}"
        if subtype == "initialize":
            self._initialize_id = request_id
        return {"type": "control_request", "request_id": request_id, "request": {"subtype": subtype, **fields}}

    async def send_turn(self, request: ChatRequest) -> None:
        if request.json_schema is not None:
            raise UnsupportedFeature("structured output needs a one-shot run, not a warm session")
        images = [image for message in request.messages for image in message.images]
        line = user_line(flatten_conversation(request.messages), images, self.session_id, runner=self.runner)
        self._parser = self.new_parser()
        assert self.child is not None
        await self.child.send(line)

    async def interrupt(self) -> None:
        if self.child is None or not self.alive:
            return
        with contextlib.suppress(Exception):  # a tool that has gone ends the turn by its exit
            await self.child.send(_line(self._control("interrupt")))

    async def _read(self) -> None:
        async for line in self.lines():
            event = json_object(line)
            kind = event.get("type") if event is not None else None
            if kind == "control_response":
                self._answered(event or {})
                continue
            parser = self._parser
            if parser is None or kind == "control_request":
                continue  # between turns, or a request of the tool's own that llmrun does not serve
            for chunk in parser.feed(line):
                if chunk.cost_usd is not None:
                    chunk = chunk.model_copy(update={"cost_usd": self._turn_cost(chunk.cost_usd)})
                self.emit(chunk)
            if parser.finished:
                self._parser = None
                self.session_id = parser.session_id or self.session_id
                if parser.error is not None:
                    self.emit(parser.error)

    def _answered(self, event: dict[str, Any]) -> None:
        """A control response: the one to `initialize` says the tool is ready, whatever its
        subtype (a tool too old to know `initialize` still says so by answering)."""
        response = as_dict(event.get("response"))
        if response.get("request_id") == self._initialize_id and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _turn_cost(self, total: float) -> float:
        """The tool reports the cost of its whole process so far; a turn costs the difference."""
        cost = max(0.0, total - self._cost_so_far)
        self._cost_so_far = total
        return cost

    def on_exit(self) -> None:
        self._parser = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(self.exit_error())
            self._ready.exception()  # seen here: a start already given up on must not log it


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()
