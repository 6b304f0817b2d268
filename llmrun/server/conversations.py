"""Which conversation a request continues, decided so that no client can reach another's.

A stateless API sends the whole history with every turn. A request continues a stored
conversation only when

- it sends that conversation's whole content (its system prompt, every message and every
  answer) followed by new turns: the history before the new turns is digested and looked
  up; or
- it names the conversation with `X-Llmrun-Session`, an id of the client's choosing.

Both keys are scoped to the API key the request was made with, so a client with another
key reaches neither. End-user fields such as OpenAI's `user` and Anthropic's
`metadata.user_id` name a person, not a conversation, and are not used. A request that
matches nothing starts a new tool session; after its turn, the conversation is stored under
the digest of its history plus the answer, which is what the client's next turn will send.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..prompting import new_turns
from ..types import ChatRequest, ChatResponse, ImagePart, Message

MAX_SESSION_NAME = 256


@dataclass(frozen=True)
class Conversation:
    """How one request's turn is tied to the turns before it."""

    scope: str
    """Who may continue it: a fingerprint of the API key, or "" on a server without one."""
    named: str | None = None
    """Key of a conversation named with X-Llmrun-Session."""

    def lookup(self, runner: str, request: ChatRequest) -> str | None:
        """The key of the conversation this request continues; None for a new one."""
        if self.named is not None:
            return self.named
        before = _history_before_new_turns(request)
        return history_key(self.scope, runner, request.system_prompt(), before) if before else None

    def after(self, runner: str, request: ChatRequest, answer: Message) -> str:
        """The key the conversation goes on under once `answer` has been given to `request`."""
        if self.named is not None:
            return self.named
        history = [*request.conversation(), answer]
        return history_key(self.scope, runner, request.system_prompt(), history)


def scope_of(api_key: str | None) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:32] if api_key else ""


def for_request(scope: str, session_name: str | None) -> Conversation:
    """The request's conversation: named by the header when it has one, else by its history."""
    name = (session_name or "").strip()[:MAX_SESSION_NAME]
    if not name:
        return Conversation(scope)
    return Conversation(scope, "id:" + _digest([scope, name]))


def answer_of(response: ChatResponse) -> Message:
    """The assistant message a client sends back for this answer in its next turn."""
    return Message.assistant(response.content, tool_calls=response.tool_calls or None)


def history_key(scope: str, runner: str, system: str | None, messages: list[Message]) -> str:
    return "h:" + _digest([scope, runner, _text(system or ""), [_canonical(m) for m in messages]])


def _history_before_new_turns(request: ChatRequest) -> list[Message]:
    conversation = request.conversation()
    return conversation[: len(conversation) - len(new_turns(conversation))]


def _canonical(message: Message) -> list[Any]:
    """What identifies a message, tolerant of how clients re-serialise it: whitespace runs,
    the ids llmrun gave tool calls, and the key order of their arguments do not count."""
    images = [_image(p) for p in message.images]
    calls = [[c.name, json.dumps(c.arguments, sort_keys=True, ensure_ascii=False)] for c in message.tool_calls or []]
    return [message.role, _text(message.text), images, calls, message.tool_call_id or ""]


def _image(part: ImagePart) -> str:
    return hashlib.sha256((part.data or part.url or "").encode()).hexdigest()


def _text(text: str) -> str:
    return " ".join(text.split())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()
