"""`llmrun serve`: the daemon. FastAPI and uvicorn are imported only when it runs."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer


class ToolsMode(str, Enum):
    emulate = "emulate"
    reject = "reject"


def serve(
    host: Optional[str] = typer.Option(
        None, "--host", metavar="ADDRESS", help="Address to bind (default 127.0.0.1; any other needs an API key)."
    ),
    port: Optional[int] = typer.Option(None, "--port", "-p", metavar="PORT", help="Port (default 8080)."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        metavar="KEY",
        help="Key clients must send (Authorization: Bearer or x-api-key); $LLMRUN_API_KEY keeps it out of `ps`.",
    ),
    tools: Optional[ToolsMode] = typer.Option(
        None, "--tools", help="Client-defined tools: emulate them (default) or refuse such requests with a 400."
    ),
    allow_tools: Optional[bool] = typer.Option(
        None, "--allow-tools", help="Let the tools use their own agent tools (shell, file edits). Off by default."
    ),
    strict_params: Optional[bool] = typer.Option(
        None,
        "--strict-params",
        help="Refuse sampling parameters a runner cannot honour (default: run without them, header says which).",
    ),
    max_concurrency: Optional[int] = typer.Option(
        None, "--max-concurrency", metavar="N", help="Tool processes at once, all runners (default 8)."
    ),
    max_per_runner: Optional[int] = typer.Option(
        None, "--max-per-runner", metavar="N", help="Tool processes at once per runner (default 4)."
    ),
    max_queue: Optional[int] = typer.Option(
        None, "--max-queue", metavar="N", help="Requests waiting for a slot before 429s (default 64)."
    ),
    queue_timeout: Optional[float] = typer.Option(
        None, "--queue-timeout", metavar="SECONDS", help="Longest wait for a slot, then 429 (default 60)."
    ),
    sessions: Optional[Path] = typer.Option(
        None,
        "--sessions",
        metavar="PATH",
        help="SQLite file of conversation → tool session (default $XDG_STATE_HOME/llmrun/sessions.sqlite3).",
    ),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", metavar="NAME", help="Also accept this Host header (repeatable)."
    ),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", metavar="ORIGIN", help="Allow browser requests from this origin (repeatable)."
    ),
    shutdown_timeout: Optional[float] = typer.Option(
        None, "--shutdown-timeout", metavar="SECONDS", help="On SIGTERM, runs get this long to finish (default 30)."
    ),
    max_warm: Optional[int] = typer.Option(
        None,
        "--max-warm",
        metavar="N",
        help="Live tool processes kept between turns (default from free memory; 0: none).",
    ),
    ollama_port: Optional[int] = typer.Option(
        None, "--ollama-port", metavar="PORT", help="Also listen here, e.g. 11434, for apps that expect Ollama there."
    ),
    log_level: str = typer.Option("info", "--log-level", metavar="LEVEL", help="debug, info, warning or error."),
) -> None:
    """Serve the OpenAI, Anthropic and Ollama APIs and MCP over the runners.

    Needs the server extra: pip install 'llmrun-cli[server]' (from a checkout: make install).
    """
    from ..errors import ConfigError, LlmrunError
    from . import render

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "api_key": api_key,
        "tools": tools.value if tools is not None else None,
        "allow_tools": allow_tools,
        "strict_params": strict_params,
        "max_concurrency": max_concurrency,
        "max_per_runner": max_per_runner,
        "max_queue": max_queue,
        "queue_timeout": queue_timeout,
        "sessions": sessions,
        "allowed_hosts": allowed_host or None,
        "cors_origins": cors_origin or None,
        "shutdown_timeout": shutdown_timeout,
        "max_warm": max_warm,
        "ollama_port": ollama_port,
    }
    try:
        try:
            from ..server.run import serve as run_server
        except ModuleNotFoundError as exc:
            if exc.name not in ("fastapi", "uvicorn", "starlette", "mcp", "mcp_types"):
                raise
            raise ConfigError(
                f"`llmrun serve` needs {exc.name}, which is not installed",
                hint="pip install 'llmrun-cli[server]'",
            ) from None
        from ..server.settings import load_settings

        settings = load_settings(overrides)
        run_server(settings, log_level=log_level.lower())
    except LlmrunError as exc:
        for line in render.error_lines(exc):
            print(line, file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
