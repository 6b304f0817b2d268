"""Which runner and model a request's `model` names, and the runner instances the server keeps.

`model` may be `RUNNER/MODEL`, `RUNNER:MODEL`, a bare runner name or alias (its default
model), an alias from `[server.aliases]`, or a model id or alias one runner knows (e.g.
`claude-haiku-4-5-20251001`, which is how clients that send real model names get through).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    """One instance per runner, made on first use; `extra` adds or replaces runners by name."""

    def __init__(
        self,
        aliases: Mapping[str, str] | None = None,
        extra: Mapping[str, Runner] | None = None,
        *,
        blocked: Mapping[str, str] | None = None,
    ) -> None:
        self.aliases = dict(aliases or {})
        self.extra = dict(extra or {})
        self.blocked = dict(blocked or {})
        """Runner name → why this server cannot use it."""
        self._made: dict[str, Runner] = {}

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
