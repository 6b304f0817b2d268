"""`llmrun runners`, `models`, `health` and `config show`: gathering and printing."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import check_cache
from . import render, selection
from .chat import run_interruptible

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..runners.base import Runner
    from ..types import Capabilities, HealthReport, ModelInfo

STATUS_STYLE = {"ok": "green", "not_installed": "dim", "unauthenticated": "yellow", "outdated": "yellow"}


def checked(
    names: Sequence[str], *, probe: bool = False, what: str = "checking", refresh: bool = False
) -> list[HealthReport]:
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
            return await selection.check_all(names, probe=probe, refresh=refresh, on_progress=progress)
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


def runner_rows(*, refresh: bool = False) -> list[dict[str, Any]]:
    """One object per known runner: what it is, and whether it is installed and logged in."""
    from ..parameters import how_honoured
    from ..registry import get_runner, runner_names

    names = runner_names()
    reports = checked(names, what="checking", refresh=refresh)
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
                # None: no model configured, the tool's own choice applies (what it resolves
                # to, where the tool's settings say so, is tool_default_model).
                "default_model": runner.default_model if runner else None,
                "tool_default_model": runner.tool_default_model() if runner and not runner.default_model else None,
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

    # Installed and version share a column, so that the table fits 100 columns.
    table = _table("Runner", "Tool", "Installed", "Logged in", "Default model", "Can do")
    # Long names wrap (aliases one a line), so that "Can do" keeps room for a few words a line.
    table.columns[1].max_width = 14
    table.columns[4].max_width = 16
    for row in rows:
        installed = row["installed"]
        name = "\n".join([row["name"], *(f"[dim]{alias}[/]" for alias in row["aliases"])])
        version = _escape(row["version"] or "yes") if installed else "[dim]no[/]"
        if row["status"] in ("outdated", "error"):
            version += f" [yellow]({row['status']})[/]"
        caps = ", ".join(capability_words(Capabilities(**row["capabilities"]))) if row["capabilities"] else ""
        table.add_row(
            name,
            row["display_name"],
            version,
            _yes_no(row["authenticated"]) if installed else "[dim]-[/]",
            default_model_cell(row) if row["capabilities"] else "-",  # no capabilities: the runner failed to load
            caps,
        )
    out = render.console(sys.stdout)
    out.print(table)
    if gaps := [(row["name"], row["cannot_lock_down"]) for row in rows if row["cannot_lock_down"]]:
        out.print("Not locked down by llmrun:")
        for name, gap in gaps:
            print_note(out, f"{name}: {gap}")
    fixes = [(row["name"], row["hint"]) for row in rows if row["status"] != "ok" and row["hint"]]
    if fixes:
        out.print("To fix:")
        for name, hint in fixes:
            print_note(out, f"{name}: {hint}")


def print_note(out: Console, text: str) -> None:
    """An indented line, wrapped at the console's width with its continuation indented further."""
    import textwrap

    lines = textwrap.wrap(text, width=out.width, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
    out.print("\n".join(lines), markup=False, soft_wrap=True)


TOOL_DEFAULT = "the tool's default"


def default_model_cell(row: dict[str, Any]) -> str:
    """The configured model, else the tool's own default and, where its settings say, which."""
    if row["default_model"]:
        return _escape(row["default_model"])
    resolved = row.get("tool_default_model")
    # Short, so that the narrow column does not wrap it.
    return "tool's default" + (f"\n[dim]{_escape(resolved)}[/]" if resolved else "")


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


def model_list(names: Sequence[str], *, refresh: bool = False) -> list[ModelInfo]:
    from ..registry import get_runner

    runners = [get_runner(name) for name in names]

    async def gather() -> list[list[ModelInfo]]:
        with check_cache.used(refresh=refresh):
            return list(await asyncio.gather(*(r.available_models(refresh=refresh) for r in runners)))

    return [model for models in run_interruptible(gather()) for model in models]


# A runner that lists more models than this shows only the first SHOWN_MODELS of them.
MAX_MODELS = 25
SHOWN_MODELS = 20


def print_models(
    models: list[ModelInfo], *, as_json: bool, names: Sequence[str] = (), every: bool = False, show_all: bool = False
) -> None:
    """The models as a table; of the runners asked about (`names`) each without models says why,
    or for `every` runner one line names them. Long lists are cut short unless `show_all`."""
    if as_json:
        print(json.dumps([m.model_dump() for m in models], indent=2))
        return
    by_runner: dict[str, list[ModelInfo]] = {}
    for model in models:
        by_runner.setdefault(model.runner, []).append(model)
    table = _table("Runner", "Model", "Aliases", "Source", "Default")
    for runner, listed in by_runner.items():
        shown = listed if show_all or len(listed) <= MAX_MODELS else shown_models(listed)
        for model in shown:
            table.add_row(
                runner,
                _escape(model.id),
                _escape(", ".join(model.aliases)),
                "[cyan]discovered[/]" if model.source == "discovered" else "built in",
                "[green]*[/]" if model.is_default else "",
            )
        if len(shown) < len(listed):
            table.add_row(runner, f"[dim]{len(listed) - len(shown)} more; --all shows them[/]", "", "", "")
    out = render.console(sys.stdout)
    if models:
        out.print(table)
    if unlisted := [name for name in names if name not in by_runner]:
        if every:
            out.print(f"No models listed by: {', '.join(unlisted)} (`llmrun models -r NAME` says why)", markup=False)
        else:
            for name in unlisted:
                out.print(why_no_models(name), markup=False)
    if unset := tool_defaults(list(dict.fromkeys(model.runner for model in models))):
        out.print(f"No model configured, so {TOOL_DEFAULT} applies (set one with -m or LLMRUN_<NAME>_MODEL):")
        for name, resolved in unset:
            out.print(f"  {name}: {TOOL_DEFAULT}" + (f" ({resolved})" if resolved else ""), markup=False)


def shown_models(models: list[ModelInfo]) -> list[ModelInfo]:
    """The first SHOWN_MODELS, the default among them wherever it is in the list."""
    shown = models[:SHOWN_MODELS]
    if (default := next((m for m in models if m.is_default), None)) and default not in shown:
        shown[-1] = default
    return shown


def why_no_models(name: str) -> str:
    from ..registry import get_runner

    runner = get_runner(name)
    if runner.capabilities.model_discovery or runner.builtin_models:
        return (
            f"{name}: {runner.display_name} listed no models; "
            f"`llmrun health -r {name}` checks that it is installed and set up"
        )
    return (
        f"{name}: {runner.display_name} has no command that lists its models; it answers with the model "
        "its own settings choose, and `-m NAME` asks for any model it knows"
    )


def tool_defaults(names: Sequence[str]) -> list[tuple[str, str | None]]:
    """(runner, the model its tool's settings name, if they do) for each runner without a
    configured model."""
    from ..registry import get_runner

    unset = []
    for name in names:
        try:
            runner = get_runner(name)
        except Exception:  # listed already; nothing more to say about it here
            continue
        if not runner.default_model:
            unset.append((name, runner.tool_default_model()))
    return unset


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
                note = {"timeout": " (no hard limit)", "default_model": f" ({TOOL_DEFAULT} applies)"}.get(key, "")
                lines.append(f"# {key}: not set{note}")
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
