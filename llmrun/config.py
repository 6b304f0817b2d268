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


def load_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc


def runner_settings(name: str, data: dict[str, Any] | None = None) -> RunnerSettings:
    """The settings of one runner, file first, environment over it."""
    path = config_path()
    data = load_file(path) if data is None else data
    table = data.get("runners", {}).get(name, {})
    where = f"{path}: [runners.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    known = set(RunnerSettings.__dataclass_fields__)
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

    prefix = f"LLMRUN_{name.upper()}_"
    if value := os.environ.get(prefix + "BIN"):
        settings.binary = value
    if value := os.environ.get(prefix + "MODEL"):
        settings.default_model = value
    for key, var in (("timeout", "TIMEOUT"), ("stall_timeout", "STALL_TIMEOUT")):
        if value := os.environ.get(prefix + var):
            settings.__dict__[key] = _seconds(value, prefix + var)
    return settings


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
