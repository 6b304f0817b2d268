"""The `llmrun` command line; imported only by the console script."""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    before_end = args[: args.index("--")] if "--" in args else args
    if "--no-color" in before_end:
        # Also reaches help and usage errors, which typer prints before any callback runs.
        os.environ["NO_COLOR"] = "1"

    from .app import app

    if not _isatty(sys.stdout):
        # Piped help is plain text, and rich (~60 ms to import) is not loaded for it.
        app.rich_markup_mode = None
    app(prog_name="llmrun")


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False
