"""Settings: flags over `LLMRUN_*` environment variables over the TOML config file.

The file lives at `$LLMRUN_CONFIG`, else `$XDG_CONFIG_HOME/llmrun/config.toml` (default
`~/.config/llmrun/config.toml`):

    runner = "claude_code"          # default runner for `llmrun chat`

    [runners.claude_code]
    binary = "/opt/claude/bin/claude"
    default_model = "opus"
    timeout = 600                   # hard limit, seconds
    stall_timeout = 120             # silence limit, seconds
    extra_args = ["--effort", "low"]
    env = { CLAUDE_CODE_MAX_RETRIES = "1" }

Per runner the environment may override: `LLMRUN_<NAME>_BIN`, `LLMRUN_<NAME>_MODEL`,
`LLMRUN_<NAME>_TIMEOUT`, `LLMRUN_<NAME>_STALL_TIMEOUT` (NAME upper-cased, e.g. CLAUDE_CODE).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


def config_path() -> Path:
    if explicit := os.environ.get("LLMRUN_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "llmrun" / "config.toml"


@dataclass
class RunnerSettings:
    binary: str | None = None
    default_model: str | None = None
    timeout: float | None = None
    stall_timeout: float | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


# Keys that a [runners.NAME] table of a name that is not built in may hold besides those of
# RunnerSettings: with a `command` they define a runner (checked in llmrun.runners.configured).
DEFINITION_KEYS = ("command", "output", "jsonl", "models", "version_command", "display_name", "install_hint")

# Top-level keys of the file and what each must be.
TOP_LEVEL_KEYS = {
    "runner": "a runner name (string)",
    "runners": "a table of runner tables",
    "server": "a table of `llmrun serve` settings",
    "routes": 'tables [routes.NAME] with try = ["RUNNER/MODEL", ...]',
    "log": "true or false: whether `llmrun chat` logs its turns (`llmrun logs`)",
}


def load_file(path: Path | None = None) -> dict[str, Any]:
    """The parsed file ({} when there is none), its top level checked."""
    path = path or config_path()
    if not path.is_file():
        if path.exists():
            raise ConfigError(f"{path}: the config file is not a regular file")
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    check_top_level(data, path)
    return data


def check_top_level(data: dict[str, Any], path: Path) -> None:
    """Catch typos and wrong kinds at the top of the file (a typo would otherwise be ignored)."""
    if unknown := sorted(set(data) - set(TOP_LEVEL_KEYS)):
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if "runner" in data and not isinstance(data["runner"], str):
        raise ConfigError(f"{path}: runner: expected {TOP_LEVEL_KEYS['runner']}, got {data['runner']!r}")
    if "log" in data and not isinstance(data["log"], bool):
        raise ConfigError(f"{path}: log: expected {TOP_LEVEL_KEYS['log']}, got {data['log']!r}")
    if "server" in data and not isinstance(data["server"], dict):
        raise ConfigError(f"{path}: server: expected {TOP_LEVEL_KEYS['server']}, e.g. [server]")
    runners = data.get("runners", {})
    if not isinstance(runners, dict):
        raise ConfigError(f"{path}: runners: expected {TOP_LEVEL_KEYS['runners']}, e.g. [runners.claude_code]")
    for name, table in runners.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: runners.{name}: expected a table, e.g. [runners.{name}]")


def check_runner_tables(data: dict[str, Any], path: Path, known: list[str], aliases: dict[str, str]) -> None:
    """Every [runners.NAME] table must name a known runner (an alias there would be ignored),
    and so must the default `runner = "..."` unless it names a route."""
    check_default_runner(data, path, known, aliases)
    for name in data.get("runners", {}):
        if name not in known:
            proper = aliases.get(name)
            raise ConfigError(
                f"{path}: [runners.{name}]: unknown runner {name!r}; expected one of {', '.join(known)}",
                hint=f"name the table [runners.{proper}]"
                if proper
                else "`llmrun runners` lists the runners; a table with a `command` defines a runner of your own",
            )


def check_default_runner(data: dict[str, Any], path: Path, known: list[str], aliases: dict[str, str]) -> None:
    """`runner = "..."` names a runner, an alias, or a route (several runners, a [routes.NAME]).
    Not checked while $LLMRUN_RUNNER overrides it: that is the way around a wrong one."""
    name = data.get("runner")
    if (
        os.environ.get("LLMRUN_RUNNER")
        or not isinstance(name, str)
        or not name.strip()
        or "," in name
        or name.strip() in (data.get("routes") or {})
    ):
        return
    key = name.strip().lower()
    if key in known or key in aliases or key.replace("-", "_") in known:
        return
    from .registry import runner_suggestions

    close = runner_suggestions(name, known)
    raise ConfigError(
        f"{path}: runner = {name!r}: unknown runner; known runners: {', '.join(known)}",
        hint=f"did you mean {close}? `llmrun runners` lists the runners"
        if close
        else "`llmrun runners` lists the runners",
    )


def defined_runner_tables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The [runners.NAME] tables that define a runner of their own: those with a `command`."""
    tables: dict[str, Any] = data.get("runners", {})
    return {name: table for name, table in tables.items() if isinstance(table, dict) and "command" in table}


def runner_settings(name: str, data: dict[str, Any] | None = None) -> RunnerSettings:
    """The settings of one runner, file first, environment over it."""
    path = config_path()
    data = load_file(path) if data is None else data
    table = data.get("runners", {}).get(name, {})
    where = f"{path}: [runners.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    known = set(RunnerSettings.__dataclass_fields__)
    if not _is_builtin(name):
        known |= set(DEFINITION_KEYS)
    elif "command" in table:
        raise ConfigError(f"{where} command: {name} is a built-in runner; a runner of your own needs another name")
    if unknown := sorted(set(table) - known):
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
    settings = RunnerSettings()
    for key in ("binary", "default_model"):
        if key in table:
            settings.__dict__[key] = _expect(table[key], str, f"{where} {key}", "a string")
    for key in ("timeout", "stall_timeout"):
        if key in table:
            settings.__dict__[key] = _seconds(table[key], f"{where} {key}")
    if "extra_args" in table:
        args = table["extra_args"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where} extra_args: expected a list of strings")
        settings.extra_args = list(args)
    if "env" in table:
        env = table["env"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{where} env: expected a table of strings")
        settings.env = dict(env)

    for key in ENV_OVERRIDES:
        var = env_var(name, key)
        if value := os.environ.get(var):
            settings.__dict__[key] = _seconds(value, var) if key in ("timeout", "stall_timeout") else value
    return settings


# Settings the environment can override, and the suffix of their variable.
ENV_OVERRIDES = {"binary": "BIN", "default_model": "MODEL", "timeout": "TIMEOUT", "stall_timeout": "STALL_TIMEOUT"}


def env_var(runner: str, key: str) -> str:
    """The variable that overrides one setting of a runner, e.g. LLMRUN_CLAUDE_CODE_BIN."""
    return f"LLMRUN_{runner.upper()}_{ENV_OVERRIDES[key]}"


def _is_builtin(name: str) -> bool:
    from .registry import BUILTIN  # at call time: the registry is the one list of built-in runners

    return name in BUILTIN


def _expect(value: Any, kind: type, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}: expected a positive number of seconds, got {value!r}")
    return seconds
