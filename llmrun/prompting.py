"""Turning a conversation into the one prompt text that a one-shot CLI run takes.

Runners use the tool's own session mechanism when a request names a session; otherwise a
multi-turn history goes through `flatten_conversation`, the one place that decides how
earlier turns are presented, so every tool sees history the same way. A tool with no
place for a system prompt gets it through `with_system_prompt`.
"""

from __future__ import annotations

import json

from .types import ChatRequest, Message, ToolCall

_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}

# The tool-calling convention (see tool_emulation): history shows calls and results in the
# same form the model is asked to write, so its own earlier turns read as examples.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def flatten_conversation(messages: list[Message]) -> str:
    """The prompt for a conversation (system messages excluded; those go to the system prompt).

    What follows the last assistant turn is the new input (a question, or tool results
    perhaps followed by one) and is passed as it is. Earlier turns, if any, become a
    transcript before it, with an instruction to answer only the new input.
    """
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        return ""
    latest = new_turns(turns) or turns[-1:]
    earlier = turns[: len(turns) - len(latest)]
    new_input = "\n\n".join(_render(m) for m in latest)
    if not earlier:
        return new_input
    lines = ["<conversation_so_far>"]
    for message in earlier:
        lines.append(f"[{_label(message)}]")
        lines.append(_render(message))
    lines.append("</conversation_so_far>")
    lines.append("")
    what = "message" if len(latest) == 1 else "messages"
    lines.append(f"Continue this conversation. Reply to the following {what} only:")
    lines.append("")
    lines.append(new_input)
    return "\n".join(lines)


def with_system_prompt(prompt: str, system: str | None) -> str:
    """The prompt with the system prompt in front, for tools that have no place for one.

    The model then sees it inside the user's turn, marked as the instructions to follow.
    """
    if not system:
        return prompt
    return f"<system_instructions>\n{system}\n</system_instructions>\n\n{prompt}"


def prompt_for(request: ChatRequest) -> str:
    """The prompt of a request: the whole conversation, or only the new turns of a resumed session."""
    return flatten_conversation(new_turns(request.messages) if request.session_id else request.messages)


def new_turns(messages: list[Message]) -> list[Message]:
    """The messages after the last assistant turn: what a resumed session has not seen yet."""
    turns = [m for m in messages if m.role != "system"]
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "assistant":
            return turns[index + 1 :]
    return turns


def _label(message: Message) -> str:
    return _ROLE_LABELS.get(message.role, message.role)


def tool_call_block(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def tool_result_block(message: Message) -> str:
    attributes = f" id={json.dumps(message.tool_call_id or '')}"
    if message.name:
        attributes += f" name={json.dumps(message.name)}"
    return f"<tool_result{attributes}>\n{message.text}\n</tool_result>"


def _render(message: Message) -> str:
    if message.role == "tool":
        return tool_result_block(message)
    blocks = [tool_call_block(call) for call in message.tool_calls or []]
    return "\n".join([message.text, *blocks] if message.text else blocks)
