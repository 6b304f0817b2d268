"""The `[server.aliases]` of the config file, for the command as for the daemon.

`fast = "claude_code/haiku"` lets `llmrun chat -r fast` ask claude_code with the model
haiku, as a client of the daemon asks with `"model": "fast"`. An alias's value is
RUNNER/MODEL, RUNNER:MODEL, a runner name, or a route (`a/m,b`, a `[routes.NAME]`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from ..errors import ConfigError


def configured_aliases(data: dict[str, Any] | None = None) -> dict[str, str]:
    """The aliases of the config file, checked as the daemon checks them."""
    from ..config import config_path, load_file

    if data is None:
        data = load_file()
    server = data.get("server", {})
    aliases = server.get("aliases", {}) if isinstance(server, dict) else {}
    if not isinstance(aliases, dict) or not all(isinstance(value, str) for value in aliases.values()):
        raise ConfigError(
            f'{config_path()}: [server] aliases: expected a table of strings, e.g. fast = "claude_code/haiku"'
        )
    return {str(name): value for name, value in aliases.items()}


def resolve_alias(spec: str | None, model: str | None) -> tuple[str | None, str | None]:
    """(runner spec, model) for a `-r` value: an alias becomes its runner and model (a model
    given with -m wins); anything else is returned as it is."""
    if spec is None:
        return spec, model
    target = configured_aliases().get(spec.strip())
    if target is None:
        return spec, model
    if "," in target:
        return target, model  # a route names each target's model itself
    for sep in ("/", ":"):
        if sep in target:
            runner, _, alias_model = target.partition(sep)
            return runner.strip(), model or alias_model.strip() or None
    return target.strip(), model


def split_target(target: str) -> tuple[str, str | None]:
    """(runner, model) of an alias's value, for listing; a route is shown whole."""
    if "," not in target:
        for sep in ("/", ":"):
            if sep in target:
                runner, _, model = target.partition(sep)
                return runner.strip(), model.strip() or None
    return target.strip(), None


def aliases(as_json: bool = typer.Option(False, "--json", help="Print a JSON object, alias -> target.")) -> None:
    """The aliases of the config file's [server.aliases], for `llmrun chat -r ALIAS` and the daemon's clients."""
    from .app import reporting

    with reporting(as_json=as_json):
        from ..config import config_path

        known = configured_aliases()
        if as_json:
            print(json.dumps(known, indent=2))
            return
        if not known:
            print(f"no aliases in {config_path()}", file=sys.stderr)
            print('llmrun: hint: add them under [server.aliases], e.g. fast = "claude_code/haiku"', file=sys.stderr)
            return
        width = max(len(name) for name in known)
        for name, target in known.items():
            runner, model = split_target(target)
            shown = target if "," in target else f"{runner}" + (f"  (model {model})" if model else "")
            print(f"{name:<{width}}  {shown}")
