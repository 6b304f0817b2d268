"""How many tool processes may run at once: a global limit, one per runner, and a bounded queue.

A request takes a slot before its tool starts and gives it back when the run has ended
(its process group gone). Waiters are served first come, first served, except that a
waiter whose runner is at its own limit does not hold up waiters of other runners. A full
queue, or a wait longer than the queue timeout, is `Busy` (HTTP 429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import Overloaded


class Busy(Overloaded):
    """No slot free within the queue timeout, or the queue is full."""

    def __init__(self, message: str, *, runner: str, retry_after: int) -> None:
        super().__init__(message, runner=runner)
        self.retry_after = retry_after


@dataclass
class _Waiter:
    runner: str
    future: asyncio.Future[None]


@dataclass
class Limiter:
    total: int
    per_runner: int
    max_queue: int
    timeout: float
    active: int = 0
    per: dict[str, int] = field(default_factory=dict)
    waiters: deque[_Waiter] = field(default_factory=deque)
    # Typical time a slot is held, to tell rejected clients when to come back.
    _held_avg: float = 1.0

    def _free(self, runner: str) -> bool:
        return self.active < self.total and self.per.get(runner, 0) < self.per_runner

    def _take(self, runner: str) -> None:
        self.active += 1
        self.per[runner] = self.per.get(runner, 0) + 1

    def _give_back(self, runner: str) -> None:
        self.active -= 1
        self.per[runner] -= 1
        if not self.per[runner]:
            del self.per[runner]
        self._grant()

    def _grant(self) -> None:
        for waiter in list(self.waiters):
            if self.active >= self.total:
                return
            if waiter.future.done():
                self.waiters.remove(waiter)
            elif self._free(waiter.runner):
                self.waiters.remove(waiter)
                self._take(waiter.runner)
                waiter.future.set_result(None)

    def retry_after(self) -> int:
        return max(1, min(60, math.ceil(self._held_avg)))

    async def acquire(self, runner: str) -> None:
        if self._free(runner):
            self._take(runner)
            return
        if len(self.waiters) >= self.max_queue:
            raise Busy(
                f"too many requests: {self.active} running and {len(self.waiters)} waiting (the queue is full)",
                runner=runner,
                retry_after=self.retry_after(),
            )
        waiter = _Waiter(runner, asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, self.timeout)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self._give_back(runner)  # granted in the same instant the wait ended
            else:
                waiter.future.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise Busy(
                    f"no free slot for {runner} within {self.timeout:g} s",
                    runner=runner,
                    retry_after=self.retry_after(),
                ) from None
            raise

    def release(self, runner: str, held: float) -> None:
        self._held_avg = 0.8 * self._held_avg + 0.2 * held
        self._give_back(runner)

    @contextlib.asynccontextmanager
    async def slot(self, runner: str) -> AsyncIterator[None]:
        await self.acquire(runner)
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(runner, time.monotonic() - started)

    def stats(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "waiting": len(self.waiters),
            "per_runner": dict(self.per),
            "max_concurrency": self.total,
            "max_per_runner": self.per_runner,
            "max_queue": self.max_queue,
        }
