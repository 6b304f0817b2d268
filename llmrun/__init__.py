"""llmrun: the AI command-line tools you already have, behind one provider interface.

    from llmrun import get_runner, ChatRequest, Message
    runner = get_runner("claude_code")
    response = await runner.complete(ChatRequest(messages=[Message.user("hi")], model="sonnet"))

Names are imported on first use, so `import llmrun` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_TYPES = (
    "AgentEvent",
    "Capabilities",
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "HealthReport",
    "ImagePart",
    "Message",
    "ModelInfo",
    "RunnerMetadata",
    "TextPart",
    "ToolCall",
    "ToolSpec",
    "Usage",
)
_ERRORS = (
    "LlmrunError",
    "ConfigError",
    "RunnerNotFound",
    "RunnerError",
    "BinaryNotFound",
    "AuthenticationError",
    "RateLimitError",
    "ServiceUnavailable",
    "ModelNotFound",
    "ContextLengthExceeded",
    "SessionNotFound",
    "RunnerTimeout",
    "ProcessFailed",
    "OutputParseError",
    "StructuredOutputError",
    "OutputTooLarge",
    "Cancelled",
    "UnsupportedFeature",
    "InvalidRequest",
    "Overloaded",
)
_EXPORTS: dict[str, str] = {
    "get_runner": "registry",
    "get_runner_class": "registry",
    "runner_names": "registry",
    "Runner": "runners.base",
    "CliRunner": "runners.base",
    "Parser": "runners.base",
    "Invocation": "process",
    "Limits": "process",
    "chat_with_tools": "tool_emulation",
    "stream_with_tools": "tool_emulation",
    "fan_out": "fanout",
    "Route": "routing",
    "CoolDown": "routing",
    "usage_totals": "totals",
    "UsageTotals": "totals",
    **dict.fromkeys(_TYPES, "types"),
    **dict.fromkeys(_ERRORS, "errors"),
}

__all__ = [
    "complete",
    "get_runner",
    "get_runner_class",
    "runner_names",
    "Runner",
    "CliRunner",
    "Parser",
    "Invocation",
    "Limits",
    "chat_with_tools",
    "stream_with_tools",
    "fan_out",
    "Route",
    "CoolDown",
    "usage_totals",
    "UsageTotals",
    *_TYPES,
    *_ERRORS,
]

if TYPE_CHECKING:
    from .errors import *  # noqa: F403
    from .fanout import fan_out
    from .process import Invocation, Limits
    from .registry import get_runner, get_runner_class, runner_names
    from .routing import CoolDown, Route
    from .runners.base import CliRunner, Parser, Runner
    from .tool_emulation import chat_with_tools, stream_with_tools
    from .totals import UsageTotals, usage_totals
    from .types import *  # noqa: F403


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def complete(runner: str, prompt: Any, **fields: Any) -> Any:
    """Run one prompt to completion without an event loop of your own.

        llmrun.complete("claude_code", "Say hi", model="sonnet", system="Be terse")

    `prompt` is a string or a ChatRequest; `fields` are ChatRequest fields. Returns a
    ChatResponse; raises an LlmrunError subclass on failure.
    """
    import asyncio

    from .registry import get_runner
    from .types import ChatRequest

    request = prompt if isinstance(prompt, ChatRequest) else ChatRequest.of(str(prompt), **fields)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(get_runner(runner).complete(request))
    raise RuntimeError("llmrun.complete() is for code without an event loop; use `await runner.complete()`")
