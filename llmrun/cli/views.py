"""`llmrun runners`, `models`, `health` and `config show`: gathering and printing."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import render, selection
from .chat import run_interruptible

if TYPE_CHECKING:
    from rich.table import Table

    from ..runners.base import Runner
    from ..types import Capabilities, HealthReport, ModelInfo

STATUS_STYLE = {"ok": "green", "not_installed": "dim", "unauthenticated": "yellow", "outdated": "yellow"}


def checked(names: Sequence[str], *, probe: bool = False, what: str = "checking") -> list[HealthReport]:
    """Health of the named runners, in parallel, with a progress line on a terminal."""
    err = sys.stderr
    spinner = render.Spinner(err, what) if render.isatty(err) else None
    total = len(names)

    def progress(waiting: list[str]) -> None:
        if spinner is not None:
            spinner.label = f"{what} {', '.join(waiting)} ({total - len(waiting)} of {total} done)"

    async def gather() -> list[HealthReport]:
        if spinner is not None:
            spinner.start()
        try:
            return await selection.check_all(names, probe=probe, on_progress=progress)
        finally:
            if spinner is not None:
                spinner.stop()

    return run_interruptible(gather())


# --- runners --------------------------------------------------------------------------------


def capability_words(caps: Capabilities) -> list[str]:
    """Short names of what a runner can do, for the table."""
    words = ["tokens" if caps.token_streaming else "stream" if caps.streaming else "whole"]
    for flag, word in (
        (caps.thinking, "thinking"),
        (caps.agent_tools, "tools"),
        (caps.sessions, "sessions"),
        (caps.usage, "usage"),
        (caps.cost, "cost"),
        (caps.json_schema, "schema"),
        (caps.images, "images"),
        (caps.model_discovery, "discovery"),
    ):
        if flag:
            words.append(word)
    return words


def aliases_of(runner: Runner) -> list[str]:
    from .. import registry

    table: dict[str, str] = getattr(registry, "ALIASES", {})
    names = list(runner.aliases) + [alias for alias, name in table.items() if name == runner.name]
    return list(dict.fromkeys(names))


def runner_rows() -> list[dict[str, Any]]:
    """One object per known runner: what it is, and whether it is installed and logged in."""
    from ..parameters import how_honoured
    from ..registry import get_runner, runner_names

    names = runner_names()
    reports = checked(names, what="checking")
    rows = []
    for name, report in zip(names, reports, strict=True):
        try:
            runner: Runner | None = get_runner(name)
        except Exception:  # reported by its health check
            runner = None
        rows.append(
            {
                "name": name,
                "display_name": runner.display_name if runner else name,
                "aliases": aliases_of(runner) if runner else [],
                "installed": report.status != "not_installed",
                "binary": report.binary,
                "command": (getattr(runner, "binary_override", None) or runner.binary) if runner else None,
                "version": report.version,
                "authenticated": report.authenticated,
                "status": report.status,
                "default_model": runner.default_model if runner else None,
                "capabilities": runner.capabilities.model_dump() if runner else {},
                "parameters": how_honoured(runner) if runner else {},
                "cannot_lock_down": runner.cannot_lock_down if runner else "",
                "message": report.message,
                "hint": report.hint,
            }
        )
    return rows


def print_runners(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from ..types import Capabilities

    table = _table("Runner", "Tool", "Installed", "Version", "Logged in", "Default model", "Can do")
    for row in rows:
        installed = row["installed"]
        name = row["name"] + (f"\n[dim]{', '.join(row['aliases'])}[/]" if row["aliases"] else "")
        version = _escape(row["version"] or "-")
        if row["status"] in ("outdated", "error"):
            version += f" [yellow]({row['status']})[/]"
        caps = ", ".join(capability_words(Capabilities(**row["capabilities"]))) if row["capabilities"] else ""
        table.add_row(
            name,
            row["display_name"],
            "[green]yes[/]" if installed else "[dim]no[/]",
            version,
            _yes_no(row["authenticated"]) if installed else "[dim]-[/]",
            _escape(row["default_model"] or "-"),
            caps,
        )
    out = render.console(sys.stdout)
    out.print(table)
    if gaps := [(row["name"], row["cannot_lock_down"]) for row in rows if row["cannot_lock_down"]]:
        out.print("Not locked down by llmrun:")
        for name, gap in gaps:
            out.print(f"  {name}: {gap}", markup=False)
    fixes = [(row["name"], row["hint"]) for row in rows if row["status"] != "ok" and row["hint"]]
    if fixes:
        out.print("To fix:")
        for name, hint in fixes:
            out.print(f"  {name}: {hint}", markup=False)


def _yes_no(value: bool | None) -> str:
    return "[dim]?[/]" if value is None else "[green]yes[/]" if value else "[yellow]no[/]"


def _table(*columns: str) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


# --- models ---------------------------------------------------------------------------------


def model_list(names: Sequence[str]) -> list[ModelInfo]:
    from ..registry import get_runner

    runners = [get_runner(name) for name in names]

    async def gather() -> list[list[ModelInfo]]:
        return list(await asyncio.gather(*(r.available_models() for r in runners)))

    return [model for models in run_interruptible(gather()) for model in models]


def print_models(models: list[ModelInfo], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([m.model_dump() for m in models], indent=2))
        return
    table = _table("Runner", "Model", "Aliases", "Source", "Default")
    for model in models:
        table.add_row(
            model.runner,
            _escape(model.id),
            _escape(", ".join(model.aliases)),
            "[cyan]discovered[/]" if model.source == "discovered" else "built in",
            "[green]*[/]" if model.is_default else "",
        )
    render.console(sys.stdout).print(table)


# --- health ---------------------------------------------------------------------------------


def print_health(reports: list[HealthReport], *, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([r.model_dump() for r in reports], indent=2))
    elif fmt == "github":
        for report in reports:
            print(github_line(report))
    else:
        table = _table("Runner", "Status", "Version", "Logged in", "Latency", "Details")
        for r in reports:
            style = STATUS_STYLE.get(r.status, "red")
            details = _escape(r.message) + (f"\n[dim]hint: {_escape(r.hint)}[/]" if r.hint and not r.ok else "")
            table.add_row(
                r.runner,
                f"[{style}]{r.status}[/]",
                _escape(r.version or "-"),
                _yes_no(r.authenticated) if r.status != "not_installed" else "[dim]-[/]",
                f"{r.latency_ms} ms" if r.latency_ms is not None else "-",
                details,
            )
        render.console(sys.stdout).print(table)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def github_line(report: HealthReport) -> str:
    """A GitHub Actions workflow command: an error annotation for a runner that is not ok."""
    version = f" {report.version}" if report.version else ""
    if report.ok:
        latency = f", {report.latency_ms} ms" if report.latency_ms is not None else ""
        return f"{report.runner}: ok{version}{latency}"
    message = f"{report.runner}{version}: {report.status}: {report.message}"
    if report.hint:
        message += f". Fix: {report.hint}"
    return f"::error title={_gh_property('llmrun health: ' + report.runner)}::{_gh_data(message)}"


def github_error(title: str, message: str) -> str:
    return f"::error title={_gh_property(title)}::{_gh_data(message)}"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


# --- config ---------------------------------------------------------------------------------


def effective_config() -> dict[str, Any]:
    """The settings in effect per runner (file, then environment over it) and where each comes from."""
    import os

    from ..config import ENV_OVERRIDES, config_path, env_var, load_file, runner_settings
    from ..registry import get_runner_class, runner_names

    selection.check_config()
    path = config_path()
    data = load_file(path)
    names = runner_names()
    tables: dict[str, Any] = data.get("runners", {})
    if env_runner := os.environ.get("LLMRUN_RUNNER"):
        runner: dict[str, Any] = {"value": env_runner, "source": "env LLMRUN_RUNNER"}
    elif "runner" in data:
        runner = {"value": data["runner"], "source": "file"}
    else:
        runner = {"value": None, "source": "the first ready runner of: " + ", ".join(names)}
    runners: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for name in names:
        settings = runner_settings(name, data)
        try:
            cls: Any = get_runner_class(name)
        except Exception:  # a broken plugin: its own settings are still worth showing
            cls = None
        table = tables.get(name, {})
        runners[name] = {
            "binary": settings.binary or getattr(cls, "binary", None) or None,
            "default_model": settings.default_model or getattr(cls, "default_model", None),
            "timeout": settings.timeout,
            "stall_timeout": settings.stall_timeout or getattr(cls, "default_stall_timeout", None),
            "extra_args": settings.extra_args,
            "env": settings.env,
        }

        def source(key: str, name: str = name, table: Any = table) -> str:
            if key in ENV_OVERRIDES and os.environ.get(env_var(name, key)):
                return f"env {env_var(name, key)}"
            return "file" if key in table else "default"

        sources[name] = {key: source(key) for key in runners[name]}
    return {
        "config_file": str(path),
        "config_file_exists": path.is_file(),
        "runner": runner,
        "runners": runners,
        "sources": sources,
    }


def config_toml(config: dict[str, Any]) -> str:
    """The effective settings as a TOML file, each value commented with where it comes from."""
    exists = "" if config["config_file_exists"] else " (not found)"
    lines = [
        "# llmrun settings in effect: the config file, then LLMRUN_* variables over it.",
        f"# config file: {config['config_file']}{exists}",
        "",
    ]
    runner = config["runner"]
    if runner["value"] is None:
        lines.append(f"# runner: not set; `llmrun chat` uses {runner['source']}")
    else:
        lines.append(_toml_line("runner", runner["value"], runner["source"]))
    for name, settings in config["runners"].items():
        lines += ["", f"[runners.{name}]"]
        for key, value in settings.items():
            source = config["sources"][name][key]
            if value is None:
                lines.append(f"# {key}: not set" + (" (no hard limit)" if key == "timeout" else ""))
            else:
                lines.append(_toml_line(key, value, source))
    return "\n".join(lines) + "\n"


def _toml_line(key: str, value: Any, source: str) -> str:
    return f"{(key + ' = ' + _toml_value(value)):<44} # {source}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)
