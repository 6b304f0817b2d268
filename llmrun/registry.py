"""Runner names and aliases → runner classes, loaded only when asked for.

Built-in runners are listed here by module path so that looking one up imports only that
runner. Other packages add runners through the entry-point group `llmrun.runners`
(name = runner name, value = `package.module:RunnerClass`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import LlmrunError, ModelNotFound, RunnerNotFound

if TYPE_CHECKING:
    from .runners.base import Runner

ENTRY_POINT_GROUP = "llmrun.runners"

BUILTIN: dict[str, str] = {
    "claude_code": "llmrun.runners.claude_code:ClaudeCodeRunner",
    "codex": "llmrun.runners.codex:CodexRunner",
    "gemini": "llmrun.runners.gemini:GeminiRunner",
    "qwen": "llmrun.runners.qwen:QwenRunner",
    "copilot": "llmrun.runners.copilot:CopilotRunner",
    "opencode": "llmrun.runners.opencode:OpencodeRunner",
    "llm": "llmrun.runners.llm:LlmRunner",
    "ollama": "llmrun.runners.ollama:OllamaRunner",
    "cursor_agent": "llmrun.runners.cursor_agent:CursorAgentRunner",
    "cline": "llmrun.runners.cline:ClineRunner",
    "kilo": "llmrun.runners.kilo:KiloRunner",
    "continue": "llmrun.runners.continue_cli:ContinueRunner",
    "droid": "llmrun.runners.droid:DroidRunner",
    "vibe": "llmrun.runners.vibe:VibeRunner",
    "aider": "llmrun.runners.aider:AiderRunner",
    "kimi": "llmrun.runners.kimi:KimiRunner",
    "gptme": "llmrun.runners.gptme:GptmeRunner",
    "goose": "llmrun.runners.goose:GooseRunner",
    "kiro": "llmrun.runners.kiro:KiroRunner",
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
    "github-copilot": "copilot",
    "github_copilot": "copilot",
    "copilot-cli": "copilot",
    "opencode-ai": "opencode",
    "open-code": "opencode",
    "open_code": "opencode",
    "llm-cli": "llm",
    "llm_cli": "llm",
    "cursor-agent": "cursor_agent",
    "cursor": "cursor_agent",
    "cline-cli": "cline",
    "kilocode": "kilo",
    "kilo-code": "kilo",
    "kilo_code": "kilo",
    "cn": "continue",
    "continue-cli": "continue",
    "continue_cli": "continue",
    "factory": "droid",
    "factory-droid": "droid",
    "mistral-vibe": "vibe",
    "mistral_vibe": "vibe",
    "aider-chat": "aider",
    "kimi-cli": "kimi",
    "kimi_cli": "kimi",
    "goose-cli": "goose",
    "kiro-cli": "kiro",
    "kiro_cli": "kiro",
}


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _configured() -> dict[str, type[Runner]]:
    """Runners defined in the config file: its [runners.NAME] tables that have a `command`."""
    from .config import config_path, defined_runner_tables, load_file

    path = config_path()
    data = load_file(path)
    if not defined_runner_tables(data):
        return {}  # nothing defined there: the machinery stays unloaded
    from .runners.configured import runner_classes

    taken = {**{name: name for name in (*BUILTIN, *_entry_points())}, **ALIASES}
    return runner_classes(data, path, taken)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    snake = key.replace("-", "_")
    if key in ALIASES or snake in BUILTIN:
        return ALIASES.get(key, snake)
    # Only for a name that is not built in is the config file read: "-" finds "_" there too.
    return snake if snake != key and snake in _configured() else key


def runner_names() -> list[str]:
    """Every known runner: built in first, then those that plugins provide, then the config file's."""
    names = list(BUILTIN) + sorted(n for n in _entry_points() if n not in BUILTIN)
    return names + [n for n in _configured() if n not in names]


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
    configured = _configured()
    if key in configured:
        return configured[key]
    names = runner_names()
    hint = "see `llmrun runners`"
    if close := runner_suggestions(name, names):
        hint = f"did you mean {close}? {hint}"
    raise RunnerNotFound(f"unknown runner {name!r}; known runners: {', '.join(names)}", hint=hint)


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """The candidates that look like a misspelling of `word`, closest first."""
    import difflib  # only for a name not found

    by_key = {candidate.lower(): candidate for candidate in candidates}
    return [by_key[key] for key in difflib.get_close_matches(word.strip().lower(), by_key, n=3, cutoff=0.6)]


def runner_suggestions(name: str, names: Iterable[str]) -> str:
    """`'claude' or 'kimi'`: the runners a mistyped name may have meant, each once, spelled as
    the closest of its name and aliases; empty when nothing is close."""
    known = list(names)
    runner_of = {**{n: n for n in known}, **{alias: runner for alias, runner in ALIASES.items() if runner in known}}
    closest: dict[str, str] = {}
    for match in close_matches(name, runner_of):
        closest.setdefault(runner_of[match], match)
    return " or ".join(f"{match!r}" for match in closest.values())


def get_runner(name: str, **settings: Any) -> Runner:
    """A runner instance by name or alias; settings override the config file and environment."""
    return get_runner_class(name)(**settings)


async def model_suggestions(runner: Runner, model: str) -> str:
    """`'sonnet' or 'opus'`: the models of the runner a mistyped model name may have meant.
    Only a suggestion: a name the runner does not list may still be one the tool knows."""
    try:
        models = await runner.available_models()
    except LlmrunError:
        models = runner.known_models()
    model_of = {name: m.id for m in models for name in (m.id, *m.aliases)}
    closest: dict[str, str] = {}
    for match in close_matches(model, model_of):
        closest.setdefault(model_of[match], match)
    return " or ".join(f"{match!r}" for match in closest.values())


async def with_model_suggestion(exc: ModelNotFound, runner: Runner, model: str | None) -> ModelNotFound:
    """The error, its hint led by "did you mean ..." when the runner knows a model close to `model`."""
    if model and (close := await model_suggestions(runner, model)):
        exc.hint = "\n".join(part for part in (f"did you mean {close}?", exc.hint) if part)
    return exc
