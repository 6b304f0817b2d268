"""The `llmrun` command line; imported only by the console script."""

from __future__ import annotations


def main() -> None:
    from .app import main as run

    run()
