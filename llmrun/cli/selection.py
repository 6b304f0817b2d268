"""Which runner a command uses, and health checks of several runners at once.

The default runner is the first of these that is set: `--runner`, `$LLMRUN_RUNNER`, the
config file's `runner`, else the first runner in `runner_names()` order (built-in runners:
claude_code, codex, gemini, qwen; then plugins) that is installed and logged in, or failing
that, the first installed one whose tool cannot tell whether it is logged in.

The tools' versions, logins and model lists are taken from llmrun/check_cache.py where it
has them (`refresh` checks again); a probe always checks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import AuthenticationError, BinaryNotFound, ConfigError, InvalidRequest, LlmrunError, RunnerError

if TYPE_CHECKING:
    from ..runners.base import Runner
    from ..types import ChatRequest, HealthReport


def check_config() -> None:
    """Stop on a config file with a mistake anywhere, before any runner is used."""
    from .. import registry
    from ..config import check_runner_tables, config_path, load_file

    path = config_path()
    data = load_file(path)
    if "runners" not in data and "runner" not in data:
        return  # nothing to check, and the runners' plugins (entry points) stay unscanned
    names = registry.runner_names()
    aliases = {alias: registry.canonical_name(alias) for alias in getattr(registry, "ALIASES", {})}
    check_runner_tables(data, path, names, aliases)


def configured_runner() -> str | None:
    """The runner named by the environment or the config file, if any."""
    if name := os.environ.get("LLMRUN_RUNNER"):
        return name
    from ..config import load_file

    configured = load_file().get("runner")
    return configured if isinstance(configured, str) and configured else None


async def check(name: str, *, probe: bool = False) -> HealthReport:
    """One runner's health; a runner that cannot even be loaded is reported, not raised."""
    from ..registry import get_runner
    from ..types import HealthReport

    try:
        runner = get_runner(name)
    except ConfigError:
        raise
    except Exception as exc:  # a broken plugin must not hide the other runners
        return HealthReport(runner=name, status="error", message=f"cannot load the runner: {exc}")
    return await runner.health(probe=probe)


async def check_all(
    names: Sequence[str],
    *,
    probe: bool = False,
    refresh: bool = False,
    on_progress: Callable[[list[str]], None] | None = None,
) -> list[HealthReport]:
    """Health of every named runner, checked in parallel, in the order given."""
    from .. import check_cache

    with check_cache.used(refresh=refresh or probe):  # each task keeps the context it is made in
        tasks = [asyncio.ensure_future(check(name, probe=probe)) for name in names]
    pending = set(tasks)
    try:
        while pending:
            if on_progress is not None:
                on_progress([name for name, task in zip(names, tasks, strict=True) if task in pending])
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        return [task.result() for task in tasks]
    finally:
        await _cancel(tasks)


async def detect_runner(on_progress: Callable[[list[str]], None] | None = None) -> str:
    """The first runner, in registry order, that is installed and logged in.

    When the cache remembers the checks, the runners are looked at one by one, so only those
    before the answer are loaded. Otherwise all are checked at once, but only those before
    the answer are waited for; the rest are cancelled (their check processes killed). A
    runner whose login cannot be checked is taken only when none further down is known to be
    logged in. When what the cache remembered leaves none usable, the tools are checked
    again (a login since then counts).
    """
    from .. import check_cache

    with check_cache.used() as cache:
        try:
            return await _detect(on_progress)
        except RunnerError:
            if not cache.remembered:
                raise
    with check_cache.used(refresh=True):
        return await _detect(on_progress)


async def _detect(on_progress: Callable[[list[str]], None] | None) -> str:
    from .. import check_cache
    from ..registry import runner_names

    names = runner_names()
    try:
        with check_cache.remembered_only():
            return await _first_ready(names, check, on_progress)
    except check_cache.NotRemembered:
        pass
    tasks = {name: asyncio.ensure_future(check(name)) for name in names}
    try:
        return await _first_ready(names, lambda name: tasks[name], on_progress)
    finally:
        await _cancel(list(tasks.values()))


async def _first_ready(
    names: Sequence[str],
    report_of: Callable[[str], Awaitable[HealthReport]],
    on_progress: Callable[[list[str]], None] | None,
) -> str:
    reports: list[HealthReport] = []
    unsure: str | None = None  # the first one that is ok but cannot tell whether it is logged in
    for name in names:
        if on_progress is not None:
            on_progress([name])
        report = await report_of(name)
        if report.ok and report.authenticated is not False:
            if report.authenticated:
                return name
            unsure = unsure or name
        reports.append(report)
    if unsure is not None:
        return unsure
    raise no_usable_runner(reports)


async def _cancel(tasks: Sequence[asyncio.Future[HealthReport]]) -> None:
    for task in tasks:
        task.cancel()
    # Waited for so that each cancelled check has killed its process before we go on.
    await asyncio.gather(*tasks, return_exceptions=True)


def no_usable_runner(reports: list[HealthReport]) -> LlmrunError:
    """One error that says what is installed, what is logged out, and how to fix it."""
    missing = [r for r in reports if r.status == "not_installed"]
    logged_out = [r for r in reports if r.status == "unauthenticated"]
    broken = [r for r in reports if r.status not in ("not_installed", "unauthenticated", "ok")]
    parts = []
    if logged_out:
        parts.append("logged out: " + ", ".join(r.runner for r in logged_out))
    if broken:
        parts.append("; ".join(f"{r.runner} {r.status}: {r.message}" for r in broken))
    if missing:
        parts.append("not installed: " + ", ".join(r.runner for r in missing))
    message = "no runner is ready to use (" + "; ".join(parts) + ")"
    fixes = [f"{r.runner}: {r.hint}" for r in (*logged_out, *broken) if r.hint]
    if not logged_out and not broken:
        fixes += [f"{r.runner}: {r.hint}" for r in missing if r.hint]
    elif missing:
        fixes.append("or install another tool: `llmrun runners` shows how")
    fixes.append("or name a runner with --runner NAME, $LLMRUN_RUNNER or `runner = ...` in the config file")
    hint = "\n".join(fixes)
    if not logged_out and not broken:
        return BinaryNotFound(message, hint=hint)
    if logged_out and not broken:
        return AuthenticationError(message, hint=hint)
    return RunnerError(message, hint=hint)


def check_request(request: ChatRequest) -> None:
    """Refuse, before any tool is checked, a request that no runner could take."""
    prompt = request.messages[-1]
    if not (prompt.text.strip() or prompt.images):
        raise InvalidRequest(
            "the request has no message to send", hint='give it as the argument, or pipe it: echo "..." | llmrun chat'
        )


def installed_runner_names() -> list[str]:
    """Runners whose tool is found, in registry order; no process is started."""
    from ..registry import get_runner, runner_names
    from ..runners.base import CliRunner

    found = []
    for name in runner_names():
        try:
            runner = get_runner(name)
        except ConfigError:
            raise
        except Exception:
            found.append(name)  # let the health check report what is wrong with it
            continue
        if isinstance(runner, CliRunner):
            try:
                runner.resolve_binary()
            except BinaryNotFound:
                continue
        found.append(name)
    return found


def load(name: str) -> Runner:
    from ..registry import get_runner

    return get_runner(name)
