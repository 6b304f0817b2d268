"""`llmrun chat -r a,b,c --all`: every target asked at once, the answers side by side.

On a terminal the answers stream in columns, each with its time to first token, duration,
tokens and cost; to a pipe (or with --no-stream) each answer is printed whole under a
`==> target <==` header as soon as it is complete; `--json` prints a list with one
ChatResponse per target, a failed target as {"runner", "model", "error"}.

The exit code is 0 when every target answered, else that of the first failed target's
error (in the order of -r).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TextIO

import typer

from ..fanout import FanOutResult, fan_out, fan_out_stream
from ..routing import RouteTarget, targets_of
from ..types import ChatChunk, ChatRequest
from . import render
from .chat import ChatOptions, read_prompt, run_interruptible

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult


def run_all(*, prompt: str | None, spec: str | None, session: str | None, continuing: bool, opts: ChatOptions) -> int:
    """The `chat --all` command; returns the exit code."""
    if not spec:
        raise typer.BadParameter("--all asks every runner of -r at once: give several, e.g. -r claude_code,gemini")
    if opts.model:
        raise typer.BadParameter(
            "with --all, name each target's model in -r instead, e.g. -r claude_code/sonnet,gemini/flash",
            param_hint="'--model'",
        )
    if session or continuing:
        raise typer.BadParameter("--all starts a new conversation with each runner: no --session or --continue")
    if opts.as_jsonl:
        raise typer.BadParameter("--all prints whole answers: use --json, not --jsonl")
    text = read_prompt(prompt)
    targets = targets_of(spec)
    request = opts.request(text, session_id=None)
    if opts.as_json:
        results = run_interruptible(fan_out(targets, request))
        print(json.dumps([as_json(result) for result in results], ensure_ascii=False))
    elif render.isatty(sys.stdout) and not opts.no_stream:
        results = run_interruptible(side_by_side(targets, request, opts, sys.stdout))
    else:
        results = run_interruptible(one_after_another(targets, request, sys.stdout))
    if opts.log:
        opts.log.write_fan_out(text, opts.system, results)
    failed = [result.error for result in results if result.error is not None]
    return failed[0].exit_code if failed else 0


def as_json(result: FanOutResult) -> dict[str, Any]:
    if result.response is not None:
        return result.response.model_dump()
    assert result.error is not None
    error: dict[str, Any] = {"type": type(result.error).__name__, "message": str(result.error)}
    if result.error.hint:
        error["hint"] = result.error.hint
    return {"runner": result.target.runner.name, "model": result.target.model, "error": error}


def stats(result: FanOutResult, sep: str = " · ") -> str:
    """Time to first token, duration, tokens and cost of one target's run."""
    parts = []
    if result.first_chunk_ms is not None:
        parts.append(f"first token {result.first_chunk_ms / 1000:.2f} s")
    parts.append(f"{result.duration_ms / 1000:.2f} s")
    if result.response is not None:
        usage = result.response.usage
        parts.append(f"{usage.input_tokens:,} in, {usage.output_tokens:,} out")
        if result.response.cost_usd is not None:
            parts.append(f"${result.response.cost_usd:.4f}")
    return sep.join(parts)


# --- to a pipe: each answer whole, under a header ------------------------------------------


async def one_after_another(targets: list[RouteTarget], request: ChatRequest, out: TextIO) -> list[FanOutResult]:
    """Print each answer as soon as it is complete (so a slow target delays nobody)."""
    results: dict[int, FanOutResult] = {}
    sep = " · " if render.unicode_ok(out) else " | "
    async with aclosing(fan_out_stream(targets, request)) as events:
        async for index, item in events:
            if not isinstance(item, FanOutResult):
                continue
            results[index] = item
            if len(results) > 1:
                out.write("\n")
            out.write(f"==> {item.label} ({stats(item, sep)}) <==\n")
            if item.response is not None:
                content = item.response.content
                out.write(content + ("" if content.endswith("\n") or not content else "\n"))
            else:
                assert item.error is not None
                out.write("\n".join(render.error_lines(item.error)) + "\n")
            out.flush()
    return [results[index] for index in sorted(results)]


# --- on a terminal: columns that stream ----------------------------------------------------


class Column:
    """One target's answer as it streams."""

    def __init__(self, target: RouteTarget) -> None:
        self.target = target
        self.text = ""
        self.thinking = ""
        self.first: float | None = None
        self.result: FanOutResult | None = None

    def add(self, chunk: ChatChunk) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.text += chunk.delta
        self.thinking += chunk.thinking


class Board:
    """The columns, side by side; redrawn by rich's Live as chunks come."""

    def __init__(self, targets: list[RouteTarget], opts: ChatOptions) -> None:
        self.columns = [Column(target) for target in targets]
        self.show_thinking = opts.show_thinking
        self.markdown = opts.markdown
        self.started = time.monotonic()
        self.whole = False
        """Draw every line (the last picture); while streaming, each column shows its last lines."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table

        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in self.columns:
            grid.add_column(ratio=1)
        room = None if self.whole else max(3, console.height - 3)
        grid.add_row(*(self._panel(column, room) for column in self.columns))
        yield grid

    def _panel(self, column: Column, room: int | None) -> RenderableType:
        from rich.console import Group
        from rich.markdown import Markdown
        from rich.panel import Panel
        from rich.text import Text

        parts: list[RenderableType] = []
        if column.thinking and self.show_thinking:
            parts.append(Text(column.thinking.strip(), style="dim"))
        if column.text:
            parts.append(Markdown(column.text) if self.markdown else Text(column.text))
        result = column.result
        if result is not None and result.error is not None:
            lines = [line.removeprefix("llmrun: ") for line in render.error_lines(result.error)]
            parts.append(Text("\n".join(lines), style="red"))
        # Last, so that it stays in view under a long answer (see Tail).
        parts.append(Text(self._status(column, result), style="dim"))
        body: RenderableType = Group(*parts)
        if room is not None:
            body = Tail(body, room)
        return Panel(
            body,
            title=column.target.label,
            title_align="left",
            border_style=("red" if result.error else "green") if result is not None else "dim",
        )

    def _status(self, column: Column, result: FanOutResult | None) -> str:
        if result is not None:
            return stats(result)
        elapsed = time.monotonic() - self.started
        if column.first is None:
            return f"waiting {elapsed:.1f} s"
        return f"first token {column.first - self.started:.2f} s · {elapsed:.1f} s"


class Tail:
    """The last `lines` lines of a renderable at the width it is given (the newest text
    of a streaming answer stays in view)."""

    def __init__(self, renderable: RenderableType, lines: int) -> None:
        self.renderable = renderable
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.segment import Segment

        for line in console.render_lines(self.renderable, options, pad=False)[-self.lines :]:
            yield from line
            yield Segment.line()


async def side_by_side(
    targets: list[RouteTarget], request: ChatRequest, opts: ChatOptions, out: TextIO
) -> list[FanOutResult]:
    from rich.live import Live

    board = Board(targets, opts)
    console = render.console(out)
    live = Live(board, console=console, refresh_per_second=8, transient=True)
    live.start()
    try:
        async with aclosing(fan_out_stream(targets, request)) as events:
            async for index, item in events:
                if isinstance(item, FanOutResult):
                    board.columns[index].result = item
                else:
                    board.columns[index].add(item)
    finally:
        # The last picture stays, whole, also after an error or Ctrl-C.
        live.stop()
        board.whole = True
        console.print(board)
    return [column.result for column in board.columns if column.result is not None]
