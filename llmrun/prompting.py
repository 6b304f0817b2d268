"""Turning a conversation into the one prompt text that a one-shot CLI run takes.

Runners use the tool's own session mechanism when a request names a session; otherwise a
multi-turn history goes through `flatten_conversation`, the one place that decides how
earlier turns are presented, so every tool sees history the same way.
"""

from __future__ import annotations

import json

from .types import Message

_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}


def flatten_conversation(messages: list[Message]) -> str:
    """The prompt for a conversation (system messages excluded; those go to the system prompt).

    A single user message is passed as it is. Longer histories become a transcript of the
    earlier turns followed by the final message, with an instruction to answer only that.
    """
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        return ""
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].text
    *earlier, last = turns
    lines = ["<conversation_so_far>"]
    for message in earlier:
        lines.append(f"[{_label(message)}]")
        lines.append(_render(message))
    lines.append("</conversation_so_far>")
    lines.append("")
    lines.append("Continue this conversation. Reply to the following message only:")
    lines.append("")
    lines.append(_render(last))
    return "\n".join(lines)


def new_turns(messages: list[Message]) -> list[Message]:
    """The messages after the last assistant turn: what a resumed session has not seen yet."""
    turns = [m for m in messages if m.role != "system"]
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "assistant":
            return turns[index + 1 :]
    return turns


def _label(message: Message) -> str:
    label = _ROLE_LABELS.get(message.role, message.role)
    if message.role == "tool" and message.tool_call_id:
        label += f" ({message.tool_call_id})"
    return label


def _render(message: Message) -> str:
    text = message.text
    for call in message.tool_calls or []:
        text += f"\n<tool_call id={call.id!r} name={call.name!r}>{json.dumps(call.arguments)}</tool_call>"
    return text
