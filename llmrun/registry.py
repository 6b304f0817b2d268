"""Runner names and aliases → runner classes, loaded only when asked for.

Built-in runners are listed here by module path so that looking one up imports only that
runner. Other packages add runners through the entry-point group `llmrun.runners`
(name = runner name, value = `package.module:RunnerClass`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import RunnerNotFound

if TYPE_CHECKING:
    from .runners.base import Runner

ENTRY_POINT_GROUP = "llmrun.runners"

BUILTIN: dict[str, str] = {
    "claude_code": "llmrun.runners.claude_code:ClaudeCodeRunner",
    "codex": "llmrun.runners.codex:CodexRunner",
    "gemini": "llmrun.runners.gemini:GeminiRunner",
    "qwen": "llmrun.runners.qwen:QwenRunner",
}

ALIASES: dict[str, str] = {
    "claude": "claude_code",
    "claude-code": "claude_code",
    "openai-codex": "codex",
    "codex-cli": "codex",
    "gemini-cli": "gemini",
    "gemini_cli": "gemini",
    "qwen_code": "qwen",
    "qwen-code": "qwen",
}


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key.replace("-", "_") if key.replace("-", "_") in BUILTIN else key)


def runner_names() -> list[str]:
    """Every known runner: built in first, then those that plugins provide."""
    return list(BUILTIN) + sorted(n for n in _entry_points() if n not in BUILTIN)


def get_runner_class(name: str) -> type[Runner]:
    key = canonical_name(name)
    if key in BUILTIN:
        module, _, attr = BUILTIN[key].partition(":")
        cls: type[Runner] = getattr(importlib.import_module(module), attr)
        return cls
    plugins = _entry_points()
    if key in plugins:
        loaded: type[Runner] = plugins[key].load()
        return loaded
    known = ", ".join(runner_names())
    raise RunnerNotFound(f"unknown runner {name!r}; known runners: {known}", hint="see `llmrun runners`")


def get_runner(name: str, **settings: Any) -> Runner:
    """A runner instance by name or alias; settings override the config file and environment."""
    return get_runner_class(name)(**settings)
