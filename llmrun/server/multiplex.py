"""An OpenAI Chat Completions request with a list `model`: every model asked at once.

    {"model": ["claude_code", "gemini/flash"], "messages": [...]}
    → {"object": "chat.completion.multiplex", "id", "created", "summary",
       "responses": [{"object": "chat.completion", ...}, {"model": "gemini/flash", "error": {...}}]}

as embacle answers such a request (its entries are flatter: provider, content, error). Each
model is one turn of the engine, so the server's limits hold for each; they run at once, and
a model that fails is an entry with the error (status 200 for the whole) while the others
answer. Every entry has `duration_ms`. Streaming is refused: the chunks of several answers
cannot share one stream of `chat.completion.chunk` events that clients would read right.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest, LlmrunError
from ..types import ChatResponse
from . import openai_api
from .conversations import Conversation
from .response import RunResponse

if TYPE_CHECKING:
    from .app import ServerState

log = logging.getLogger("llmrun.server")

MAX_MODELS = 8
"""More at once would only wait in the server's queue."""


class Multiplex(openai_api.Output):
    """The models' turns run at once (`complete`), then one body with an entry per model.

    It runs under RunResponse like any other answer, so that a client that goes away, or a
    server that shuts down, cancels every turn (and stops every tool)."""

    def __init__(self, state: ServerState, parsed: openai_api.Parsed, conversation: Conversation) -> None:
        super().__init__(parsed.model)
        self.state = state
        self.parsed = parsed
        self.conversation = conversation
        self.entries: list[dict[str, Any]] = []

    async def complete(self) -> ChatResponse:
        """Run every model's turn; the entries are kept for `body` (the response returned is empty)."""
        self.entries = list(await asyncio.gather(*(self._entry(model) for model in self.parsed.models)))
        return ChatResponse()

    async def _entry(self, model: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            turn = self.state.engine.prepare(self.parsed.request, model, conversation=self.conversation, stream=False)
            response = await self.state.engine.complete(turn)
            entry = openai_api.Output(model).body(response)  # a chat.completion of its own id
        except LlmrunError as exc:
            entry = {"model": model, **openai_api.error_body(exc)}
        except Exception as exc:
            log.error("a run failed unexpectedly", exc_info=exc)
            entry = {"model": model, **openai_api.error_body(LlmrunError("internal error in llmrun's server"))}
        entry["duration_ms"] = int((time.monotonic() - started) * 1000)
        return entry

    def body(self, response: ChatResponse) -> dict[str, Any]:
        failed = [entry["model"] for entry in self.entries if "error" in entry]
        summary = f"{len(self.entries) - len(failed)} of {len(self.entries)} models answered"
        if failed:
            summary += f"; failed: {', '.join(failed)}"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.multiplex",
            "created": self.created,
            "summary": summary,
            "responses": self.entries,
        }


def answer(state: ServerState, parsed: openai_api.Parsed, conversation: Conversation) -> RunResponse:
    """The response to a request whose `model` is a list."""
    if parsed.stream:
        raise InvalidRequest(
            "streaming is not supported when `model` is a list: the answers of several models cannot "
            "share one stream of chat.completion.chunk events; send `stream: false` to get every answer "
            "in one chat.completion.multiplex, or one streaming request per model"
        )
    if len(parsed.models) > MAX_MODELS:
        raise InvalidRequest(f"`model` lists {len(parsed.models)} models; at most {MAX_MODELS} can be asked at once")
    output = Multiplex(state, parsed, conversation)
    return RunResponse(output, state.inflight, complete=output.complete)
