"""`llmrun mcp`: an MCP server over stdio. The mcp SDK is imported only when it runs."""

from __future__ import annotations

import sys
from typing import Optional

import typer


def mcp(
    runner: Optional[str] = typer.Option(
        None,
        "--runner",
        "-r",
        metavar="NAME",
        help="Runner that `prompt` asks when none is named (default: $LLMRUN_RUNNER, config, first ready).",
    ),
    allow_tools: bool = typer.Option(
        False, "--allow-tools", help="Let the asked tools use their own agent tools (shell, edits). Off by default."
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Hard time limit of each run."),
) -> None:
    """Serve MCP over stdio: tools `prompt`, `list_runners` and `health`, for Claude Code, Gemini CLI,
    Codex and other MCP clients (needs `pip install 'llmrun-cli[mcp]'`)."""
    from ..errors import ConfigError, LlmrunError
    from . import render

    if timeout is not None and timeout <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="'--timeout'")
    try:
        from .. import registry
        from .selection import check_config

        check_config()
        if runner:
            runner = registry.canonical_name(runner)
            registry.get_runner_class(runner)  # an unknown name stops here, not at the first prompt
        try:
            from ..mcp_server import LocalBackend, serve_stdio
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in ("mcp", "mcp_types"):
                raise
            raise ConfigError(
                "`llmrun mcp` needs the mcp package, which is not installed", hint="pip install 'llmrun-cli[mcp]'"
            ) from None
        serve_stdio(LocalBackend(runner=runner, allow_tools=allow_tools, timeout=timeout))
    except LlmrunError as exc:
        for line in render.error_lines(exc):
            print(line, file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
