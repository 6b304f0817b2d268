"""What the command writes for people: spinner, thinking, answer, usage line.

Decoration goes to stderr and only to a terminal; stdout carries the answer alone, so
`llmrun chat ... > out.txt` is clean. rich is imported only for Markdown and tables.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console
    from rich.live import Live

    from ..totals import UsageTotals
    from ..types import AgentEvent, ChatChunk, ChatResponse

DIM = "\x1b[2m"
RESET = "\x1b[0m"


@dataclass
class Flags:
    """Options given before the command (`llmrun --debug --no-color chat ...`)."""

    debug: bool = False
    no_color: bool = False


flags = Flags()


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def color_enabled(stream: Any) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or --no-color."""
    if flags.no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return isatty(stream)


def unicode_ok(stream: Any) -> bool:
    return str(getattr(stream, "encoding", "") or "").lower().replace("-", "").startswith("utf")


def console(stream: TextIO) -> Console:
    """A rich console on `stream` that honours NO_COLOR and --no-color."""
    from rich.console import Console

    # Piped tables keep their natural width rather than wrapping at 80 columns.
    width = None if isatty(stream) or os.environ.get("COLUMNS") else 200
    return Console(file=stream, no_color=not color_enabled(stream), highlight=False, width=width)


class Spinner:
    """A one-line activity indicator on a terminal, drawn by an asyncio task until stopped."""

    def __init__(self, stream: TextIO, label: str, *, delay: float = 0.1) -> None:
        self.stream = stream
        self.label = label
        self.delay = delay  # answers that come at once never see it flicker
        self.frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if unicode_ok(stream) else "|/-\\"
        self._task: asyncio.Task[None] | None = None
        self._drawn = False

    def start(self) -> None:
        import asyncio

        if self._task is None:
            self._task = asyncio.ensure_future(self._spin())

    async def _spin(self) -> None:
        import asyncio

        await asyncio.sleep(self.delay)
        for frame in itertools.cycle(self.frames):
            width = max(10, shutil.get_terminal_size().columns - 3)
            self.stream.write(f"\r{frame} {self.label[:width]}\x1b[K")
            self.stream.flush()
            self._drawn = True
            await asyncio.sleep(0.08)

    def stop(self) -> None:
        """Stop and erase; the task cannot draw again, since it only writes between awaits."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


class ChatPrinter:
    """Shows one answer as it streams: the spinner until the first token, thinking dimmed on
    stderr, the text on stdout (as Markdown with `markdown` on a terminal)."""

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        label: str,
        show_text: bool = True,
        show_thinking: bool = True,
        markdown: bool = False,
    ) -> None:
        self.out = out
        self.err = err
        self.err_tty = isatty(err)
        self.dim = color_enabled(err)
        self.show_text = show_text
        self.show_thinking = show_text and show_thinking and self.err_tty
        self.spinner = Spinner(err, label) if self.err_tty else None
        self.markdown = MarkdownStream(out) if show_text and markdown and isatty(out) else None
        self.started = time.monotonic()
        self.first_output: float | None = None
        self._in_thinking = False
        self._line_open = False  # stdout ends in the middle of a line

    def start(self) -> None:
        if self.spinner is not None:
            self.spinner.start()

    def _output_begins(self) -> None:
        if self.first_output is None:
            self.first_output = time.monotonic()
        if self.spinner is not None:
            self.spinner.stop()

    def chunk(self, chunk: ChatChunk) -> None:
        if not self.show_text:
            self._output_begins()
            return
        if chunk.warnings:
            self.warnings(chunk.warnings)
        if chunk.thinking and self.show_thinking:
            self._output_begins()
            if not self._in_thinking:
                self._in_thinking = True
                self.err.write(DIM if self.dim else "thinking: ")
            self.err.write(chunk.thinking)
            self.err.flush()
        if chunk.agent_event is not None and self.err_tty:
            self._output_begins()
            self._end_thinking()
            if self._line_open and isatty(self.out):
                self.out.write("\n")
                self.out.flush()
                self._line_open = False
            self.err.write(self._styled(describe_event(chunk.agent_event)) + "\n")
            self.err.flush()
        if chunk.delta:
            self._output_begins()
            self._end_thinking()
            self.text(chunk.delta)

    def text(self, text: str) -> None:
        if self.markdown is not None:
            self.markdown.feed(text)
            return
        self.out.write(text)
        self.out.flush()
        self._line_open = not text.endswith("\n")

    def whole(self, response: ChatResponse) -> None:
        """An answer that arrived complete (`--no-stream`)."""
        self._output_begins()
        if response.warnings and self.show_text:
            self.warnings(response.warnings)
        if response.thinking and self.show_thinking:
            self.err.write(self._styled(response.thinking) + "\n\n")
            self.err.flush()
        if response.content:
            self.text(response.content)

    def warnings(self, warnings: list[str]) -> None:
        """What the caller should know before the answer (a route's targets that failed), on stderr."""
        self._output_begins()
        for warning in warnings:
            self.err.write(self._styled(f"llmrun: warning: {warning}") + "\n")
        self.err.flush()

    def finish(self) -> None:
        """End the answer's display; safe to call after an error or a cancel."""
        if self.spinner is not None:
            self.spinner.stop()
        self._end_thinking()
        if self.markdown is not None:
            self.markdown.close()
        elif self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    def _end_thinking(self) -> None:
        if self._in_thinking:
            self._in_thinking = False
            self.err.write((RESET if self.dim else "") + "\n\n")
            self.err.flush()

    def _styled(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.dim else text


def describe_event(event: AgentEvent) -> str:
    """One line about something the tool did on its own."""
    if event.kind == "tool_use":
        args = json.dumps(event.input, ensure_ascii=False) if event.input is not None else ""
        return _clip(f"[tool] {event.name or '?'} {args}")
    if event.kind == "tool_result":
        output = event.output if isinstance(event.output, str) else json.dumps(event.output, ensure_ascii=False)
        return _clip(f"[tool {'error' if event.is_error else 'result'}] {output}")
    if event.kind == "permission_denied":
        return _clip(f"[denied] {event.name or ''} {event.message or ''}".rstrip())
    return _clip(f"[{event.kind}] {event.message or ''}".rstrip())


def _clip(text: str) -> str:
    text = " ".join(text.split())
    width = max(40, shutil.get_terminal_size().columns - 1)
    return text if len(text) <= width else text[: width - 1] + "…"


def usage_line(
    response: ChatResponse, *, elapsed: float, first_output: float | None, runner: str, sep: str = " · "
) -> str:
    """Tokens, cost and timing of one answer, for `--usage`."""
    usage = response.usage
    tokens = f"{usage.input_tokens:,} in"
    cached = [
        f"{n:,} {what}"
        for n, what in ((usage.cache_read_tokens, "cache read"), (usage.cache_write_tokens, "cache write"))
        if n
    ]
    if cached:
        tokens += " (+" + ", ".join(cached) + ")"
    tokens += f", {usage.output_tokens:,} out"
    if usage.reasoning_tokens:
        tokens += f" ({usage.reasoning_tokens:,} reasoning)"
    parts = [f"tokens: {tokens}"]
    if response.cost_usd is not None:
        parts.append(f"${response.cost_usd:.4f}")
    timing = f"{elapsed:.2f} s"
    if first_output is not None:
        timing += f" (first token {first_output:.2f} s)"
    parts.append(timing)
    parts.append(f"{response.model or 'model not reported'} via {response.runner or runner}")
    return sep.join(parts)


def totals_line(totals: UsageTotals, sep: str = " · ") -> str:
    """What the answers of a conversation added up to, for `--usage` when it ends."""
    tokens = f"{totals.input_tokens:,} in"
    if totals.cache_read_tokens:
        tokens += f" (+{totals.cache_read_tokens:,} cache read)"
    parts = [f"total of {totals.requests} answers", f"tokens: {tokens}, {totals.output_tokens:,} out"]
    if totals.cost_usd:
        parts.append(f"${totals.cost_usd:.4f}")
    return sep.join(parts)


def print_usage(err: TextIO, line: str) -> None:
    err.write((f"{DIM}{line}{RESET}" if color_enabled(err) else line) + "\n")
    err.flush()


class MarkdownStream:
    """Markdown rendered while it streams: finished blocks are printed for good, and only the
    block still being written is redrawn (so answers taller than the screen work)."""

    def __init__(self, out: TextIO) -> None:
        self.console = console(out)
        self.pending = ""
        self._live: Live | None = None

    def feed(self, text: str) -> None:
        from rich.live import Live
        from rich.markdown import Markdown

        self.pending += text
        cut = settled_length(self.pending)
        if self._live is None:
            self._live = Live(console=self.console, transient=True, refresh_per_second=8, vertical_overflow="visible")
            self._live.start()
        if cut:
            done, self.pending = self.pending[:cut], self.pending[cut:]
            self._live.console.print(Markdown(done))
        self._live.update(Markdown(self.pending))

    def close(self) -> None:
        from rich.markdown import Markdown

        if self._live is not None:
            self._live.update("")
            self._live.stop()
            self._live = None
        if self.pending.strip():
            self.console.print(Markdown(self.pending))
        self.pending = ""


def settled_length(text: str) -> int:
    """How much of a Markdown text is finished blocks: up to the last blank line outside a code
    fence that is followed by an unindented line (an indented one may continue a list item)."""
    lines = text.split("\n")
    cut = pos = 0
    fence: str | None = None
    for index, line in enumerate(lines[:-1]):
        pos += len(line) + 1
        stripped = line.lstrip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif not stripped:
            following = lines[index + 1]
            if following and not following[0].isspace():
                cut = pos
    return cut


def error_lines(exc: BaseException, *, debug: bool = False) -> list[str]:
    """`llmrun: <ErrorClass>: <message>`, then a line per hint line; with debug, the tool's stderr."""
    lines = [f"llmrun: {type(exc).__name__}: {exc}"]
    hint = getattr(exc, "hint", None)
    if hint:
        lines += [f"llmrun: hint: {part}" for part in str(hint).splitlines() if part.strip()]
    stderr = getattr(exc, "stderr", "")
    if debug and stderr:
        lines.append("llmrun: the tool's stderr ended with:")
        lines += ["  " + line for line in str(stderr).rstrip().splitlines()[-40:]]
    return lines
