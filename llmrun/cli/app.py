"""The `llmrun` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, NoReturn, Optional

import typer

from ..errors import LlmrunError, RunnerError

app = typer.Typer(
    name="llmrun",
    help="Use the AI command-line tools you already have (claude, codex, gemini, ...) through one interface.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

DEFAULT_RUNNER = "claude_code"


def _fail(exc: LlmrunError, *, as_json: bool) -> NoReturn:
    kind = type(exc).__name__
    if as_json:
        error: dict[str, Any] = {"type": kind, "message": str(exc)}
        if exc.hint:
            error["hint"] = exc.hint
        if isinstance(exc, RunnerError):
            error["exit_code"] = exc.process_exit_code
            if exc.stderr:
                error["stderr"] = exc.stderr[-2000:]
        print(json.dumps({"error": error}))
    print(f"llmrun: {kind}: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"llmrun: hint: {exc.hint}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _default_runner() -> str:
    if name := os.environ.get("LLMRUN_RUNNER"):
        return name
    from ..config import load_file

    configured = load_file().get("runner")
    return configured if isinstance(configured, str) else DEFAULT_RUNNER


def _read_prompt(prompt: Optional[str]) -> str:
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin
    if prompt == "-":
        if piped is None:
            raise typer.BadParameter("`-` reads the prompt from stdin, but stdin is a terminal")
        return piped.read()
    if prompt is None:
        if piped is None:
            raise typer.BadParameter("give a prompt, or pipe one on stdin")
        return piped.read()
    if piped is not None:
        context = piped.read()
        if context.strip():
            return f"{prompt}\n\n{context}"  # stdin as context after the prompt, as llm does
    return prompt


@app.command()
def chat(
    prompt: Optional[str] = typer.Argument(None, help="The prompt; `-` reads it from stdin."),
    runner: Optional[str] = typer.Option(None, "--runner", "-r", help="Runner name or alias."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model or alias, as the tool knows it."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print one ChatResponse as JSON."),
    as_jsonl: bool = typer.Option(False, "--jsonl", help="Print one ChatChunk per line as JSON."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the answer only when complete."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Hard time limit in seconds."),
    session: Optional[str] = typer.Option(None, "--session", help="Resume this session of the tool."),
    allow_tools: bool = typer.Option(False, "--allow-tools", help="Let the tool use its own agent tools."),
    cwd: Optional[str] = typer.Option(None, "--cwd", help="Working directory for the tool."),
) -> None:
    """Send a prompt to a runner; the answer streams to stdout."""
    from ..registry import get_runner
    from ..types import ChatRequest

    try:
        text = _read_prompt(prompt)
        request = ChatRequest.of(
            text, model=model, system=system, timeout=timeout, session_id=session, allow_tools=allow_tools, cwd=cwd
        )
        selected = get_runner(runner or _default_runner())
        asyncio.run(_chat(selected, request, as_json=as_json, as_jsonl=as_jsonl, no_stream=no_stream))
    except LlmrunError as exc:
        _fail(exc, as_json=as_json or as_jsonl)
    except KeyboardInterrupt:
        print("llmrun: Cancelled", file=sys.stderr)
        raise typer.Exit(130) from None


async def _chat(runner: Any, request: Any, *, as_json: bool, as_jsonl: bool, no_stream: bool) -> None:
    from contextlib import aclosing

    out = sys.stdout
    if as_json or no_stream:
        response = await runner.complete(request)
        if as_json:
            out.write(response.model_dump_json() + "\n")
        else:
            out.write(response.content + ("" if response.content.endswith("\n") else "\n"))
        return
    ended_with_newline = True
    async with aclosing(runner.stream(request)) as stream:
        async for chunk in stream:
            if as_jsonl:
                out.write(chunk.model_dump_json(exclude_defaults=True) + "\n")
            elif chunk.delta:
                out.write(chunk.delta)
                ended_with_newline = chunk.delta.endswith("\n")
            else:
                continue
            out.flush()
    if not as_jsonl and not ended_with_newline:
        out.write("\n")


@app.command()
def health(
    runners: Optional[list[str]] = typer.Option(None, "--runner", "-r", help="Runner to check (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of HealthReports."),
    probe: bool = typer.Option(False, "--probe", help="Also send a tiny real prompt and time it."),
) -> None:
    """Check that runners are installed, current and logged in; exit 0 only if all are ok."""
    from ..registry import get_runner, runner_names

    try:
        selected = [get_runner(name) for name in (runners or runner_names())]
    except LlmrunError as exc:
        _fail(exc, as_json=as_json)

    async def check_all() -> list[Any]:
        return list(await asyncio.gather(*(r.health(probe=probe) for r in selected)))

    reports = asyncio.run(check_all())
    if as_json:
        print(json.dumps([r.model_dump() for r in reports], indent=2))
    else:
        for r in reports:
            latency = f"{r.latency_ms} ms" if r.latency_ms is not None else ""
            print(f"{r.runner:<14} {r.status:<16} {r.version or '-':<10} {latency:>8}  {r.message}")
            if r.hint and not r.ok:
                print(f"{'':<14} hint: {r.hint}")
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def main() -> None:
    app()
