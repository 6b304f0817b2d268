"""Totals of this process's runs: `llmrun.usage_totals()`.

A run is counted when its answer is gathered into a ChatResponse (`ChatResponse.from_chunks`,
which `complete()` of runners and sessions, tool emulation, fan-out and `llmrun chat` all
use): once per run, at its end. A caller that iterates `stream()` itself reads the usage
of the final chunk instead.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Usage


@dataclass(frozen=True)
class UsageTotals:
    """Runs answered in this process, and their tokens and cost (USD, where the tools report it)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    def __sub__(self, earlier: UsageTotals) -> UsageTotals:
        """What was added since `earlier` was taken."""
        return UsageTotals(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)}
        )


_lock = threading.Lock()  # runs may end in several threads, each with its event loop
_totals = UsageTotals()


def record(usage: Usage, cost_usd: float | None) -> None:
    """Add one completed run."""
    global _totals
    with _lock:
        now = _totals
        _totals = dataclasses.replace(
            now,
            requests=now.requests + 1,
            input_tokens=now.input_tokens + usage.input_tokens,
            output_tokens=now.output_tokens + usage.output_tokens,
            cache_read_tokens=now.cache_read_tokens + usage.cache_read_tokens,
            cache_write_tokens=now.cache_write_tokens + usage.cache_write_tokens,
            reasoning_tokens=now.reasoning_tokens + usage.reasoning_tokens,
            cost_usd=now.cost_usd + (cost_usd or 0.0),
        )


def usage_totals() -> UsageTotals:
    """The totals so far (a snapshot)."""
    return _totals
