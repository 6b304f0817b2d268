"""Warm tool processes for the daemon's conversations: one live `Session` per conversation.

A conversation's turns go to the same tool process, so later turns skip the tool's
start-up. At most `max_warm` processes live at once, spares included. When the pool is
full, the least recently used idle conversation is closed; one idle for
`warm_idle_timeout` is closed too. A closed conversation is not lost: the SessionStore
keeps the tool's session id, and its next turn resumes it in a new process.

Spares (`[server.prewarm]`) are sessions started before anyone asks: a new conversation
whose runner, model and settings match takes a spare and skips the start-up, and another
spare is started at once. Spares count in max_warm and their configured total stays below
it, so conversations keep `max_warm - spares` places of their own. A session marked
"one-shot" (a new conversation whose first turn failed, which no client can name) is closed
after its turn.

A daemon killed outright takes its tools with it (PR_SET_PDEATHSIG), but not what they
started. So the process groups of live sessions are written to one small file per
daemon (mode 0600), and a starting daemon kills the groups recorded by daemons that are
gone (as it kills what carries a dead llmrun's name in its environment: see
`process.kill_orphaned_tools`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import private, process
from ..errors import ConfigError, LlmrunError
from ..parameters import asked
from ..runners.base import Runner
from ..sessions import Session
from ..types import ChatRequest
from .runners import RunnerPool
from .settings import ServerSettings

log = logging.getLogger("llmrun.server")

Role = Literal["conversation", "spare", "one-shot"]

# A spare that failed to start is tried again after this long, doubling up to the cap.
SPARE_RETRY_FIRST = 5.0
SPARE_RETRY_MAX = 300.0


@dataclass(frozen=True)
class Shape:
    """What a tool process is started with: a turn that needs another shape needs another process."""

    runner: str
    model: str | None
    system: str | None
    cwd: str | None
    allow_tools: bool
    options: str
    """JSON, so that shapes compare and hash."""

    @classmethod
    def of(cls, runner: Runner, request: ChatRequest, cwd: str | None) -> Shape:
        return cls(
            runner=runner.name,
            model=request.model or runner.default_model,
            system=request.system_prompt(),
            cwd=cwd,
            allow_tools=request.allow_tools,
            options=json.dumps(request.options, sort_keys=True, default=str),
        )

    def open(self, runner: Runner, resume: str | None) -> Session:
        return runner.session(
            model=self.model,
            system=self.system,
            cwd=self.cwd,
            resume=resume,
            allow_tools=self.allow_tools,
            options=json.loads(self.options),
        )


@dataclass(eq=False)
class WarmEntry:
    runner: Runner
    shape: Shape
    session: Session
    role: Role
    conversation: str | None = None
    held: int = 0
    """Messages of the conversation (system ones aside) that the tool's session holds."""
    used: float = field(default_factory=time.monotonic)
    busy: bool = True
    """In a turn or still starting: never closed to make room."""
    recorded: bool = False
    """Its process group is in the record file (a session may start its process at its first turn)."""

    def describe(self, now: float) -> dict[str, Any]:
        pids = self.session.pids()
        return {
            "conversation": self.conversation,
            "role": self.role,
            "model": self.shape.model,
            "session_id": self.session.id,
            "busy": self.busy,
            "idle_seconds": None if self.busy else round(now - self.used, 1),
            "turns": self.session.turns,
            "pids": pids,
            "rss_bytes": process.rss_bytes(pids),
        }


@dataclass
class _Prewarm:
    key: str
    runner: Runner
    shape: Shape
    count: int
    retry_at: float = 0.0
    retry_delay: float = SPARE_RETRY_FIRST


class WarmPool:
    def __init__(self, settings: ServerSettings, runners: RunnerPool, record: GroupRecord | None = None) -> None:
        self.max_warm = settings.max_warm
        self.idle_timeout = settings.warm_idle_timeout
        self.record = record
        self.entries: list[WarmEntry] = []
        self._prewarm = [_resolve_prewarm(key, count, runners, settings) for key, count in settings.prewarm.items()]
        self._prewarm = [spec for spec in self._prewarm if spec.count > 0]
        self._spare_total = sum(spec.count for spec in self._prewarm)
        self._closing: set[asyncio.Future[None]] = set()
        self._tasks: list[asyncio.Future[None]] = []
        self._fill_wanted = asyncio.Event()
        self._stopped = False

    # --- life --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.record is not None:
            killed = reap_orphans(self.record.directory)
            if killed:
                log.warning("killed %d tool process group(s) left by a daemon that died: %s", len(killed), killed)
        self._tasks = [asyncio.ensure_future(self._sweep()), asyncio.ensure_future(self._fill())]

    async def aclose(self) -> None:
        """Close every session: no tool process of the pool is left."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in list(self.entries):
            self._retire(entry)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.record is not None:
            self.record.remove()

    # --- what the engine asks ----------------------------------------------------------

    def serves(self, runner: Runner, request: ChatRequest) -> bool:
        """Whether the turn can go to a warm session; tools, structured output, images and sampling
        parameters the tool takes (on its command line, at start-up) need a one-shot run."""
        return (
            self.max_warm > 0
            and not set(asked(request)) & set(runner.honoured_parameters)
            and runner.capabilities.warm
            and not request.tools
            and request.json_schema is None
            and not any(m.images for m in request.messages)
        )

    def find(self, runner: str, conversation: str) -> WarmEntry | None:
        for entry in self.entries:
            if entry.role == "conversation" and entry.conversation == conversation and entry.shape.runner == runner:
                return entry
        return None

    async def checkout(
        self,
        runner: Runner,
        shape: Shape,
        *,
        conversation: str | None,
        resume: str | None,
        held: int,
        replay: bool,
    ) -> WarmEntry | None:
        """The session for one turn, marked busy until `checkin`; None when the turn should run cold
        (no conversation and no spare, or a pool full of busy sessions).

        `replay` means the turn sends history the tool has not seen. Such a turn neither takes
        a spare nor starts its session ahead: a started session may already have a session id,
        and a session with an id is sent only the new messages.
        """
        if conversation is not None and (live := self.find(runner.name, conversation)) is not None:
            live.busy, live.used = True, time.monotonic()
            same = live.shape == shape and live.session.id == resume and live.held == held
            if not same or live.session.closed:
                # Another model or settings, or an edited history: a new process, resuming the
                # tool's session when the conversation goes on from it.
                try:
                    await self._renew(live, shape, resume, held, start=not replay)
                except BaseException:
                    self._retire(live)
                    raise
            return live
        if resume is None and not replay and (spare := self._take_spare(shape)) is not None:
            spare.role = "conversation" if conversation is not None else "one-shot"
            spare.conversation = conversation
            spare.busy, spare.used = True, time.monotonic()
            if conversation is not None:
                self._keep_room_for_spares(spare)
            # else the spare's process ends with the turn, and its place goes back to the spares then
            self._fill_wanted.set()
            log.info("a spare %s session takes a new %s", runner.name, "conversation" if conversation else "request")
            return spare
        if conversation is None or not await self._make_room():
            return None
        entry = WarmEntry(runner, shape, shape.open(runner, resume), "conversation", conversation, held)
        self.entries.append(entry)
        if not replay:
            try:
                await entry.session.start()
            except BaseException:
                self._retire(entry)
                raise
        self._write_record()
        return entry

    def checkin(self, entry: WarmEntry) -> None:
        """The turn is over (done, failed or abandoned); synchronous, so it can run while a turn unwinds."""
        entry.busy, entry.used = False, time.monotonic()
        if entry in self.entries and (entry.role == "one-shot" or entry.session.closed):
            self._retire(entry)
        elif not entry.recorded:
            self._write_record()

    async def renew(self, entry: WarmEntry, resume: str | None, held: int, *, start: bool) -> None:
        """A new session in the entry's place (the old one closed), e.g. when the tool lost its session."""
        await self._renew(entry, entry.shape, resume, held, start=start)

    # --- what /v1/runners shows --------------------------------------------------------

    def describe(self, runner: str) -> dict[str, Any]:
        now = time.monotonic()
        mine = [entry for entry in self.entries if entry.shape.runner == runner]
        return {
            "sessions": [entry.describe(now) for entry in mine if entry.role != "spare"],
            "spares": [entry.describe(now) for entry in mine if entry.role == "spare"],
        }

    def limits(self) -> dict[str, Any]:
        return {
            "max_warm": self.max_warm,
            "warm_idle_timeout": self.idle_timeout,
            "prewarm": {spec.key: spec.count for spec in self._prewarm},
            "warm": len(self.entries),
            "closing": len(self._closing),
        }

    # --- places ------------------------------------------------------------------------

    def _live(self) -> int:
        return len(self.entries) + len(self._closing)

    def _conversations(self) -> int:
        return sum(1 for entry in self.entries if entry.role != "spare")

    def _least_recent_idle(self, keep: WarmEntry | None = None) -> WarmEntry | None:
        idle = [e for e in self.entries if e.role != "spare" and not e.busy and e is not keep]
        return min(idle, key=lambda entry: entry.used, default=None)

    async def _make_room(self) -> bool:
        """Room for one more conversation process; False when every conversation is in a turn."""
        share = self.max_warm - self._spare_total
        while True:
            if self._conversations() < share and self._live() < self.max_warm:
                return True
            if self._conversations() >= share:
                victim = self._least_recent_idle()
                if victim is None:
                    return False
                log.info("warm pool full: closing the least recently used %s session", victim.shape.runner)
                await asyncio.shield(self._retire(victim))
            elif self._closing:
                await asyncio.wait(set(self._closing))
            else:
                return False

    def _keep_room_for_spares(self, taken: WarmEntry) -> None:
        """A spare became a conversation: the least recently used conversation gives its place back."""
        if self._conversations() > self.max_warm - self._spare_total:
            victim = self._least_recent_idle(keep=taken)
            if victim is not None:
                self._retire(victim)

    def _take_spare(self, shape: Shape) -> WarmEntry | None:
        for entry in self.entries:
            if entry.role == "spare" and not entry.busy and entry.shape == shape and not entry.session.closed:
                return entry
        return None

    def _retire(self, entry: WarmEntry) -> asyncio.Future[None]:
        """Take the entry out and close its session in the background; it counts until its process is gone."""
        with contextlib.suppress(ValueError):
            self.entries.remove(entry)
        closing = asyncio.ensure_future(entry.session.aclose())
        self._closing.add(closing)
        closing.add_done_callback(self._closed)
        return closing

    def _closed(self, closing: asyncio.Future[None]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled() and (exc := closing.exception()) is not None:
            log.warning("closing a warm session failed: %s", exc)
        self._fill_wanted.set()
        self._write_record()

    async def _renew(self, entry: WarmEntry, shape: Shape, resume: str | None, held: int, *, start: bool) -> None:
        old, entry.session = entry.session, shape.open(entry.runner, resume)
        entry.shape, entry.held = shape, held
        await old.aclose()
        if start:
            await entry.session.start()
        self._write_record()

    # --- background --------------------------------------------------------------------

    def _tick(self) -> float:
        return min(30.0, max(0.05, self.idle_timeout / 4))

    async def _sweep(self) -> None:
        """Close conversations idle past the timeout; keep the record of process groups current."""
        while True:
            await asyncio.sleep(self._tick())
            deadline = time.monotonic() - self.idle_timeout
            for entry in list(self.entries):
                if entry.role == "conversation" and not entry.busy and entry.used <= deadline:
                    log.info("closing a %s session idle for %g s", entry.shape.runner, self.idle_timeout)
                    self._retire(entry)
            self._fill_wanted.set()  # also retries spares that failed to start
            self._write_record()

    async def _fill(self) -> None:
        """Keep the configured spares started."""
        while True:
            self._fill_wanted.clear()
            for spec in self._prewarm:
                await self._fill_spec(spec)
            await self._fill_wanted.wait()

    async def _fill_spec(self, spec: _Prewarm) -> None:
        while (
            not self._stopped
            and sum(1 for e in self.entries if e.role == "spare" and e.shape == spec.shape) < spec.count
            and self._live() < self.max_warm
            and time.monotonic() >= spec.retry_at
        ):
            entry = WarmEntry(spec.runner, spec.shape, spec.shape.open(spec.runner, None), "spare")
            self.entries.append(entry)
            try:
                await entry.session.start()
            except LlmrunError as exc:
                self._retire(entry)
                spec.retry_at = time.monotonic() + spec.retry_delay
                log.warning(
                    "prewarm %s: the spare did not start (next try in %g s): %s", spec.key, spec.retry_delay, exc
                )
                spec.retry_delay = min(SPARE_RETRY_MAX, spec.retry_delay * 2)
                return
            except BaseException:
                self._retire(entry)
                raise
            spec.retry_delay = SPARE_RETRY_FIRST
            entry.busy, entry.used = False, time.monotonic()
            self._write_record()

    def _write_record(self) -> None:
        """Write down the process groups of every session (each look-up reads /proc: not per turn)."""
        if self.record is None or self._stopped:
            return
        pid_lists = []
        for entry in self.entries:
            pids = entry.session.pids()
            entry.recorded = bool(pids)
            pid_lists.append(pids)
        self.record.write(groups_of(pid_lists))


def _resolve_prewarm(key: str, count: int, runners: RunnerPool, settings: ServerSettings) -> _Prewarm:
    try:
        target = runners.resolve(key)
    except LlmrunError as exc:
        raise ConfigError(f"prewarm: {key!r} names no runner or model: {exc}") from None
    runner = target.runner
    if not runner.capabilities.warm:
        raise ConfigError(f"prewarm: {runner.display_name} has no warm mode, so {key!r} cannot be prewarmed")
    request = ChatRequest(messages=[], model=target.model, allow_tools=settings.allow_tools)
    return _Prewarm(key, runner, Shape.of(runner, request, None), count)


# --- the record of process groups, for a daemon that dies without closing them ------------

Group = tuple[int, list[tuple[int, int]]]
"""A process group id and its members as (pid, start time)."""

_serial = itertools.count()


def groups_of(pid_lists: Iterable[list[int]]) -> list[Group]:
    """The process groups of these processes with their members; never the daemon's own group."""
    own = os.getpgrp()
    groups: dict[int, list[tuple[int, int]]] = {}
    for pids in pid_lists:
        for pid in pids:
            pgid, started = process.process_group(pid), process.start_time(pid)
            if pgid is not None and started is not None and pgid != own:
                groups.setdefault(pgid, []).append((pid, started))
    return sorted(groups.items())


class GroupRecord:
    """One JSON file per daemon naming the daemon (pid, start time) and its tools' process groups."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Several apps may share one process (tests, embedding): each gets its own file.
        self.path = directory / f"{os.getpid()}-{next(_serial)}.json"
        self._written: list[Group] | None = None

    def write(self, groups: list[Group]) -> None:
        if groups == self._written:
            return
        me = os.getpid()
        data = {"pid": me, "start": process.start_time(me), "groups": [[g, m] for g, m in groups]}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            private.write_atomically(self.path, json.dumps(data))  # mode 0600; whole, for a reader at any moment
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
            return
        self._written = groups

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._written = None


def reap_orphans(directory: Path) -> list[int]:
    """Kill the process groups recorded by daemons that are no longer running; returns their ids."""
    killed: list[int] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid, started = int(data["pid"]), data["start"]
            groups = [(int(g), [(int(p), int(s)) for p, s in members]) for g, members in data["groups"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable record of warm processes %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if started is not None and process.start_time(pid) == started:
            continue  # that daemon is running
        for pgid, members in groups:
            if process.kill_recorded_group(pgid, members):
                killed.append(pgid)
        with contextlib.suppress(OSError):
            path.unlink()
    return killed
