"""Claude Code's streaming input: one `claude -p --input-format stream-json` process per session.

Each turn is a `user` message written as one JSON line on stdin; the tool answers with the
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
from ..runners.base import json_object
from ..runners.stream_json import StreamJsonParser
from ..types import ChatRequest
from .base import WarmConnection


class StreamJsonInput(WarmConnection):
    def __init__(self, *args: Any, new_parser: Callable[[], StreamJsonParser], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_parser = new_parser
        self._parser: StreamJsonParser | None = None
        self._reader: asyncio.Future[None] | None = None
        self._cost_so_far = 0.0

    async def handshake(self) -> None:
        # The tool says nothing until it is sent a message; reading starts now so that
        # nothing it prints (or its early exit) is missed.
        self._reader = asyncio.ensure_future(self._read())

    async def send_turn(self, request: ChatRequest) -> None:
        if request.json_schema is not None:
            raise UnsupportedFeature("structured output needs a one-shot run, not a warm session")
        self._parser = self.new_parser()
        message = {
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": flatten_conversation(request.messages)}]},
            "parent_tool_use_id": None,
            "session_id": self.session_id or "default",
        }
        assert self.child is not None
        await self.child.send(_line(message))

    async def interrupt(self) -> None:
        if self.child is None or not self.alive:
            return
        request = {
            "type": "control_request",
            "request_id": f"req_{uuid.uuid4().hex[:12]}",
            "request": {"subtype": "interrupt"},
        }
        with contextlib.suppress(Exception):  # a tool that has gone ends the turn by its exit
            await self.child.send(_line(request))

    async def _read(self) -> None:
        async for line in self.lines():
            parser = self._parser
            if parser is None:
                continue  # between turns (a control_response, say): nothing to answer
            event = json_object(line)
            if event is not None and event.get("type") in ("control_response", "control_request"):
                continue
            for chunk in parser.feed(line):
                if chunk.cost_usd is not None:
                    chunk = chunk.model_copy(update={"cost_usd": self._turn_cost(chunk.cost_usd)})
                self.emit(chunk)
            if parser.finished:
                self._parser = None
                self.session_id = parser.session_id or self.session_id
                if parser.error is not None:
                    self.emit(parser.error)

    def _turn_cost(self, total: float) -> float:
        """The tool reports the cost of its whole process so far; a turn costs the difference."""
        cost = max(0.0, total - self._cost_so_far)
        self._cost_so_far = total
        return cost

    def on_exit(self) -> None:
        self._parser = None

    async def close(self) -> None:
        await super().close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()
