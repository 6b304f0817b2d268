"""`llmrun logs`: the turns `llmrun chat` logged, their conversations, and what they cost."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from ..logs import Turn

logs_app = typer.Typer(
    help="The prompts and answers of `llmrun chat`, kept in a SQLite log (newest first).",
    invoke_without_command=True,
)


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    count: int = typer.Option(3, "--count", "-n", metavar="N", min=0, help="How many turns; 0 for all."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    query: Optional[str] = typer.Option(
        None, "--query", "-q", metavar="TEXT", help="Only turns whose prompt or answer holds each of these words."
    ),
    runner: Optional[str] = typer.Option(None, "--runner", "-r", metavar="NAME", help="Only this runner's turns."),
    conversation: bool = typer.Option(False, "--conversation", "-c", help="The last conversation, every turn of it."),
    cid: Optional[str] = typer.Option(None, "--cid", metavar="ID", help="This conversation, every turn of it."),
    usage: bool = typer.Option(False, "--usage", "-u", help="Turns, tokens and cost per day and runner."),
) -> None:
    """List the newest turns of `llmrun chat`; `-c` shows the last conversation, `--usage` the totals."""
    if ctx.invoked_subcommand is not None:
        return
    from .app import reporting

    with reporting(as_json=as_json):
        from ..logs import Log

        name = _canonical(runner) if runner else None
        with Log() as log:
            if usage:
                print_usage(log.usage(runner=name), as_json=as_json)
            elif conversation or cid:
                turns = log.conversation(cid) if cid else log.last_conversation(name)
                print_turns(turns, as_json=as_json)
            else:
                print_turns(log.turns(limit=count or None, query=query, runner=name), as_json=as_json)


@logs_app.command("path")
def logs_path_command() -> None:
    """Print the log's path ($LLMRUN_LOGS_PATH, else $XDG_DATA_HOME/llmrun/logs.db)."""
    from ..logs import logs_path

    print(logs_path())


@logs_app.command("off")
def logs_off() -> None:
    """Stop logging `llmrun chat` (until `llmrun logs on`)."""
    from ..logs import off_marker

    marker = off_marker()
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker.touch()
    print("logging is off", file=sys.stderr)


@logs_app.command("on")
def logs_on() -> None:
    """Log `llmrun chat` again (unless the config file says `log = false`)."""
    from ..logs import enabled, off_marker

    off_marker().unlink(missing_ok=True)
    print("logging is on" if enabled() else "logging is still off: the config file says `log = false`", file=sys.stderr)


def _canonical(name: str) -> str:
    from ..registry import canonical_name

    return canonical_name(name)


def _local_time(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stamp


def print_turns(turns: list[Turn], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([turn.as_dict() for turn in turns], indent=2, ensure_ascii=False))
    elif turns:
        print("\n\n".join(turn_text(turn) for turn in turns))
    else:
        print("llmrun: no turns found in the log", file=sys.stderr)


def turn_text(turn: Turn) -> str:
    """One turn as Markdown: a heading, the prompt, the answer (or the error), the usage."""
    model = turn.model_reported or turn.model or "the tool's default model"
    when = _local_time(turn.time)
    heading = f"# {when} · {turn.runner} · {model} · conversation {turn.conversation_id} · id {turn.id}"
    parts = [heading]
    if turn.system:
        parts.append(f"## System\n\n{turn.system}")
    parts.append(f"## Prompt\n\n{turn.prompt}")
    if turn.answer or not turn.failed:
        parts.append(f"## Answer\n\n{turn.answer}")
    if turn.failed:
        parts.append(f"## Error\n\n{turn.error_type}: {turn.error_message}")
    parts.append(usage_text(turn))
    return "\n\n".join(parts)


def usage_text(turn: Turn) -> str:
    words = [f"tokens: {turn.input_tokens:,} in, {turn.output_tokens:,} out"]
    if turn.cost_usd is not None:
        words.append(f"${turn.cost_usd:.4f}")
    if turn.duration_ms is not None:
        words.append(f"{turn.duration_ms / 1000:.2f} s")
    if turn.finish_reason and turn.finish_reason != "stop":
        words.append(f"finished: {turn.finish_reason}")
    return " · ".join(words)


USAGE_COLUMNS = (
    ("turns", "Turns"),
    ("failed", "Failed"),
    ("input_tokens", "Input"),
    ("output_tokens", "Output"),
    ("cache_read_tokens", "Cache read"),
    ("cache_write_tokens", "Cache write"),
    ("reasoning_tokens", "Reasoning"),
)


def print_usage(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich import box
    from rich.table import Table

    from . import render

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_footer=len(rows) > 1)
    table.add_column("Day", footer="total")
    table.add_column("Runner")
    for key, title in USAGE_COLUMNS:
        table.add_column(title, justify="right", footer=f"{sum(row[key] or 0 for row in rows):,}")
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    table.add_column("Cost", justify="right", footer=f"${sum(costs):.4f}" if costs else "-")
    for row in rows:
        cost = f"${row['cost_usd']:.4f}" if row["cost_usd"] is not None else "-"
        table.add_row(row["day"], row["runner"], *(f"{row[key] or 0:,}" for key, _ in USAGE_COLUMNS), cost)
    render.console(sys.stdout).print(table)
