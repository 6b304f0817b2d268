"""The log of `llmrun chat`: every prompt and answer, kept in SQLite.

The database lives at `$LLMRUN_LOGS_PATH`, else `$XDG_DATA_HOME/llmrun/logs.db` (default
`~/.local/share/llmrun/logs.db`); only its owner may read it (mode 0600, in a directory of
mode 0700 when llmrun creates it). Each turn is one row of `turns`: what was asked (runner,
model, prompt, system prompt), what came back (answer, thinking, the model the tool
reported, its session id, tokens, cost, duration, finish reason) or the error that ended
it. Turns that continue one conversation share a `conversation_id`, llmrun's own, whatever
the tool keeps: that is what lets `llmrun chat -c` continue a conversation with a tool that
keeps no sessions, by sending it the logged turns again.

The command logs by default; `--no-log`, `log = false` in the config file or
`llmrun logs off` turn it off. The library and the daemon log nothing.

The schema's version is SQLite's `user_version`; a database made by an older llmrun is
brought up to date when opened. Several processes may write at once: each write is one
short transaction, and a writer waits for another's lock rather than failing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import private

if TYPE_CHECKING:
    from .fanout import FanOutResult
    from .types import ChatChunk, ChatResponse

TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")

# Each entry brings the schema from the version before it to its own (1, 2, ...).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time TEXT NOT NULL,
            runner TEXT NOT NULL,
            model TEXT,
            model_reported TEXT,
            prompt TEXT NOT NULL,
            system TEXT,
            answer TEXT NOT NULL DEFAULT '',
            thinking TEXT NOT NULL DEFAULT '',
            session_id TEXT,
            conversation_id TEXT NOT NULL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            duration_ms INTEGER,
            finish_reason TEXT,
            error_type TEXT,
            error_message TEXT
        )""",
        "CREATE INDEX turns_conversation ON turns (conversation_id, id)",
        "CREATE INDEX turns_runner ON turns (runner, id)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

# A writer waits this long for another's lock before giving up.
BUSY_TIMEOUT = 30.0


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says relative paths are to be ignored.
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "llmrun"


def logs_path() -> Path:
    if explicit := os.environ.get("LLMRUN_LOGS_PATH"):
        return Path(explicit)
    return data_dir() / "logs.db"


def off_marker() -> Path:
    """The file whose presence means `llmrun logs off`; it sits next to the database."""
    return logs_path().parent / "logs-off"


def new_conversation_id() -> str:
    return uuid.uuid4().hex


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Turn:
    """One row of the log."""

    runner: str
    prompt: str
    conversation_id: str
    model: str | None = None
    """The model asked for; None when the tool's own default applied."""
    model_reported: str | None = None
    system: str | None = None
    answer: str = ""
    thinking: str = ""
    session_id: str | None = None
    """The tool's session id, where it keeps sessions."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    duration_ms: int | None = None
    finish_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    time: str = field(default_factory=now)
    id: int | None = None

    @property
    def failed(self) -> bool:
        return self.error_type is not None

    def with_response(self, response: ChatResponse) -> Turn:
        """This turn with what the answer says."""
        usage = response.usage
        self.answer = response.content
        self.thinking = response.thinking
        self.model_reported = response.model
        self.session_id = response.session_id
        self.runner = response.runner or self.runner
        self.cost_usd = response.cost_usd
        self.duration_ms = response.duration_ms
        self.finish_reason = response.finish_reason
        for kind in TOKEN_KINDS:
            setattr(self, kind, getattr(usage, kind))
        return self

    def with_error(self, exc: BaseException, partial: list[ChatChunk], duration_ms: int | None = None) -> Turn:
        """This turn, ended by `exc` after the chunks of `partial` had come."""
        from .errors import Cancelled

        if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            exc = Cancelled("cancelled (Ctrl-C)")
        self.answer = "".join(chunk.delta for chunk in partial)
        self.thinking = "".join(chunk.thinking for chunk in partial)
        self.error_type = type(exc).__name__
        self.error_message = str(exc)
        self.duration_ms = duration_ms
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(Turn) if f.name != "id")


class Log:
    """The log database. Reading a log that does not exist finds nothing and creates nothing."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else logs_path()
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not self.path.exists():
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private.secure_file(self.path)  # mode 0600: SQLite gives its journal files the same
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """WAL mode and the current schema. Switching to WAL can meet another process's lock
        without SQLite waiting for it (its busy timeout does not cover that step): try again."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._migrate(db)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- writing ---------------------------------------------------------------------------

    def write(self, turn: Turn) -> int:
        """Add a turn; its id."""
        db = self._connect(create=True)
        assert db is not None
        values = [getattr(turn, name) for name in COLUMNS]
        cursor = db.execute(
            f"INSERT INTO turns ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
        )
        turn.id = cursor.lastrowid
        return turn.id or 0

    # --- reading ---------------------------------------------------------------------------

    def _select(self, where: list[str], params: list[Any], order: str, limit: int | None = None) -> list[Turn]:
        db = self._connect(create=False)
        if db is None:
            return []
        sql = "SELECT * FROM turns" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, limit]
        return [_turn(row) for row in db.execute(sql, params)]

    def turns(self, *, limit: int | None = 3, query: str | None = None, runner: str | None = None) -> list[Turn]:
        """The newest turns first; `query`'s words must each be in the prompt or the answer."""
        where: list[str] = []
        params: list[Any] = []
        if runner:
            where.append("runner = ?")
            params.append(runner)
        for word in (query or "").split():
            pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(prompt LIKE ? ESCAPE '\\' OR answer LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        return self._select(where, params, "id DESC", limit)

    def conversation(self, conversation_id: str) -> list[Turn]:
        """Every turn of a conversation, the first first."""
        return self._select(["conversation_id = ?"], [conversation_id], "id")

    def last_conversation(self, runner: str | None = None) -> list[Turn]:
        """The conversation of the newest turn that was answered (of `runner`, if given)."""
        where = ["error_type IS NULL"]
        params: list[Any] = []
        if runner:
            where.append("runner = ?")
            params.append(runner)
        newest = self._select(where, params, "id DESC", 1)
        return self.conversation(newest[0].conversation_id) if newest else []

    def conversation_of_session(self, runner: str, session_id: str) -> str | None:
        """The conversation in which the tool's session was last used, if it was logged."""
        found = self._select(["runner = ?", "session_id = ?"], [runner, session_id], "id DESC", 1)
        return found[0].conversation_id if found else None

    def usage(self, *, runner: str | None = None) -> list[dict[str, Any]]:
        """Turns, tokens and cost per day (local time) and runner, the newest day first."""
        db = self._connect(create=False)
        if db is None:
            return []
        sums = ", ".join(f"SUM({kind}) AS {kind}" for kind in TOKEN_KINDS)
        sql = (
            "SELECT date(time, 'localtime') AS day, runner, COUNT(*) AS turns,"
            f" SUM(error_type IS NOT NULL) AS failed, {sums}, SUM(cost_usd) AS cost_usd"
            " FROM turns" + (" WHERE runner = ?" if runner else "") + " GROUP BY day, runner ORDER BY day DESC, runner"
        )
        return [dict(row) for row in db.execute(sql, [runner] if runner else [])]


def _turn(row: sqlite3.Row) -> Turn:
    known = set(COLUMNS) | {"id"}
    names = row.keys()  # a newer llmrun's columns are left out
    return Turn(**{name: row[name] for name in names if name in known})


def enabled(config: dict[str, Any] | None = None) -> bool:
    """Whether the command logs: not when the config file says `log = false`, nor after
    `llmrun logs off`."""
    if config is None:
        from .config import load_file

        config = load_file()
    return config.get("log", True) is not False and not off_marker().exists()


class Recorder:
    """Logs the turns of one `llmrun chat`: each turn in the conversation it continues.

    A log that cannot be written never fails a chat: the first failure is reported on
    stderr, and the chat goes on."""

    def __init__(self, path: Path | str | None = None, *, err: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else logs_path()
        self.conversation_id = new_conversation_id()
        self.err = err
        self._warned = False

    def new_conversation(self) -> None:
        self.conversation_id = new_conversation_id()

    def continue_conversation(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id

    def continue_session(self, runner: str, session_id: str) -> None:
        """Turns that resume a tool's session belong to the conversation it was logged in."""
        try:
            with Log(self.path) as log:
                found = log.conversation_of_session(runner, session_id)
        except (sqlite3.Error, OSError):
            found = None
        if found:
            self.conversation_id = found

    def begin(self, *, runner: str, prompt: str, model: str | None, system: str | None) -> Turn:
        return Turn(runner=runner, prompt=prompt, model=model, system=system, conversation_id=self.conversation_id)

    def write_fan_out(self, prompt: str, system: str | None, results: list[FanOutResult]) -> None:
        """The answers of `chat --all`: each target's its own conversation."""
        for result in results:
            self.new_conversation()
            turn = self.begin(runner=result.target.runner.name, prompt=prompt, model=result.target.model, system=system)
            if result.response is not None:
                turn.with_response(result.response)
            elif result.error is not None:
                turn.with_error(result.error, [], result.duration_ms)
            self.write(turn)

    def write(self, turn: Turn) -> None:
        try:
            with Log(self.path) as log:
                log.write(turn)
        except (sqlite3.Error, OSError) as exc:
            if not self._warned:
                self._warned = True
                err = self.err or sys.stderr
                err.write(f"llmrun: the turn was not logged: cannot write {self.path}: {exc}\n")
                err.flush()
