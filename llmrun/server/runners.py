"""Which runner and model a request's `model` names, and the runner instances the server keeps.

`model` may be `RUNNER/MODEL`, `RUNNER:MODEL`, a bare runner name or alias (its default
model), an alias from `[server.aliases]`, or a model id or alias one runner knows (e.g.
`claude-haiku-4-5-20251001`, which is how clients that send real model names get through).
Several of these separated by commas (`claude_code/sonnet,gemini/flash`), or the name of a
`[routes.NAME]` of the config file, make a route: a runner that asks them in order (llmrun/routing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import registry
from ..errors import (
    BinaryNotFound,
    ConfigError,
    InvalidRequest,
    LlmrunError,
    ModelNotFound,
    RunnerNotFound,
    UnsupportedFeature,
)
from ..routing import CoolDown, is_route, route_of, route_tables
from ..runners.base import Runner


@dataclass(frozen=True)
class Target:
    runner: Runner
    model: str | None
    """The model to ask the tool for; None means the runner's default."""
    requested: str
    """The model string as the client sent it, echoed back in responses."""

    @property
    def runner_name(self) -> str:
        return self.runner.name


class RunnerPool:
    """One instance per runner, made on first use; `extra` adds or replaces runners by name.

    `routes` are the `[routes.NAME]` tables (the config file's when None). Every route of the
    pool shares one CoolDown, so a target that said "too many requests" rests for all requests."""

    def __init__(
        self,
        aliases: Mapping[str, str] | None = None,
        extra: Mapping[str, Runner] | None = None,
        *,
        blocked: Mapping[str, str] | None = None,
        routes: Mapping[str, Any] | None = None,
    ) -> None:
        self.aliases = dict(aliases or {})
        self.extra = dict(extra or {})
        self.blocked = dict(blocked or {})
        """Runner name → why this server cannot use it."""
        self._made: dict[str, Runner] = {}
        if routes is None:
            from ..config import load_file

            routes = load_file().get("routes", {})
        self.route_config: dict[str, Any] = {"routes": routes}
        self.routes = route_tables(self.route_config)  # checked when the server starts, not at a request
        self.cool_down = CoolDown()

    def names(self) -> list[str]:
        names = list(self.extra)
        names += [n for n in registry.runner_names() if n not in self.extra and n not in self.blocked]
        return names

    def get(self, name: str) -> Runner:
        key = name.strip().lower()
        for runner_name, runner in self.extra.items():
            if key == runner_name or key in runner.aliases:
                return runner
        canonical = registry.canonical_name(key)
        if canonical in self.extra:
            return self.extra[canonical]
        if canonical in self.blocked:
            raise UnsupportedFeature(self.blocked[canonical], runner=canonical)
        if canonical not in self._made:
            try:
                self._made[canonical] = registry.get_runner(canonical)
            except LlmrunError:
                raise
            except Exception as exc:
                # A broken runner module or plugin must not take the other runners down with it.
                raise ConfigError(f"runner {canonical!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        return self._made[canonical]

    def installed(self, runner: Runner) -> bool:
        resolve = getattr(runner, "resolve_binary", None)
        if resolve is None:
            return True  # not a command-line runner: nothing to find on PATH
        try:
            resolve()
        except BinaryNotFound:
            return False
        return True

    def resolve(self, model: str | None) -> Target:
        requested = (model or "").strip()
        if not requested:
            raise InvalidRequest("`model` is required: RUNNER/MODEL, RUNNER:MODEL, a runner name or an alias")
        spec = self.aliases.get(requested, requested)
        if is_route(spec, self.routes):
            route = route_of(spec, config=self.route_config, get_runner=self.get, cool_down=self.cool_down)
            return Target(route, None, requested)
        for sep in ("/", ":"):
            if sep in spec:
                name, _, model_name = spec.partition(sep)
                try:
                    return Target(self.get(name), model_name.strip() or None, requested)
                except RunnerNotFound:
                    continue
        try:
            return Target(self.get(spec), None, requested)
        except RunnerNotFound:
            pass
        for name in self.names():
            try:
                runner = self.get(name)
            except LlmrunError:
                continue
            if any(spec in (info.id, *info.aliases) for info in runner.known_models()):
                return Target(runner, spec, requested)
        raise ModelNotFound(
            f"unknown model {requested!r}: name it RUNNER/MODEL (e.g. claude_code/sonnet), RUNNER:MODEL, "
            f"a runner ({', '.join(self.names())}) or an alias ({', '.join(self.aliases) or 'none configured'})"
        )
