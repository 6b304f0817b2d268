"""The real tools with a warm mode, each with the loopback mock it talks to and how it is
pointed there: shared by tests/test_real_warm.py and bench/warm.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mock_gemini import MockGemini
from mock_openai_chat import MockOpenAIChat
from mock_responses import MockResponses, codex_provider_args
from mockapi import MockAnthropic
from mockserver import LoopbackMock
from realcli import (
    claude_env,
    cline_env,
    codex_env,
    copilot_env,
    droid_env,
    gemini_env,
    kilo_env,
    opencode_env,
    qwen_env,
    vibe_env,
)

__all__ = ["WARM_TOOLS", "WarmTool"]


@dataclass(frozen=True)
class WarmTool:
    runner: str
    binary: str
    mock: Callable[[], LoopbackMock]
    env: Callable[[Path, Any], dict[str, str]]
    """The tool's environment, given a throwaway home directory and the mock."""
    settings: Callable[[Any], dict[str, Any]] = lambda api: {}
    """The runner's settings, given the mock (codex is pointed at it by `-c` options)."""

    def __str__(self) -> str:
        return self.runner


WARM_TOOLS = [
    WarmTool("claude_code", "claude", MockAnthropic, lambda home, api: claude_env(home, api.url)),
    WarmTool(
        "codex",
        "codex",
        MockResponses,
        lambda home, api: codex_env(home),
        lambda api: {"extra_args": codex_provider_args(api.url)},
    ),
    WarmTool(
        "gemini",
        "gemini",
        MockGemini,
        # As root llmrun bounds gemini's retries itself (its defaults file); else the settings do.
        lambda home, api: gemini_env(home, api.url, max_attempts=None if os.geteuid() == 0 else 1),
    ),
    WarmTool(
        "qwen",
        "qwen",
        MockOpenAIChat,
        lambda home, api: qwen_env(home, api.base_url),
        lambda api: {"extra_args": ["--auth-type", "openai"]},
    ),
    WarmTool(
        "copilot",
        "copilot",
        MockOpenAIChat,
        lambda home, api: copilot_env(home, api.base_url, cache_dir=home / "cache"),
    ),
    WarmTool("opencode", "opencode", MockOpenAIChat, lambda home, api: opencode_env(home, api.base_url)),
    WarmTool("cline", "cline", MockOpenAIChat, lambda home, api: cline_env(home, api.base_url)),
    WarmTool("kilo", "kilo", MockOpenAIChat, lambda home, api: kilo_env(home, api.base_url)),
    WarmTool(
        "droid",
        "droid",
        MockOpenAIChat,
        lambda home, api: droid_env(home, api.base_url),
        lambda api: {"default_model": "custom:mock-model"},
    ),
    WarmTool("vibe", "vibe", MockOpenAIChat, lambda home, api: vibe_env(home, api.base_url)),
]
