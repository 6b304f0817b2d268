"""Client conversations → the tools' own sessions, kept in SQLite so they survive a restart.

A row maps (runner, conversation key; see conversations.py) to the tool's session id, the
number of messages the session holds (so a client that sends its whole history each time
can be told apart from one that went back and changed it) and the directory the tool ran
in (tools such as Claude Code keep sessions per directory). A row is written only after a
turn succeeded.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    runner TEXT NOT NULL,
    conversation TEXT NOT NULL,
    session_id TEXT NOT NULL,
    messages INTEGER NOT NULL,
    cwd TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (runner, conversation)
)
"""


# Every chat is stored (its client may send its next turn), so rows of abandoned chats are
# forgotten after a while.
FORGET_AFTER = 30 * 24 * 3600.0


@dataclass(frozen=True)
class StoredSession:
    session_id: str
    messages: int
    """Messages (without system ones) of the conversation that the session holds."""
    cwd: str | None


class SessionStore:
    """Small, synchronous and locked: each call is one indexed row, well under a millisecond."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private.secure_file(self.path)  # mode 0600: SQLite gives its -wal and -shm files the same
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def get(self, runner: str, conversation: str) -> StoredSession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT session_id, messages, cwd FROM sessions WHERE runner = ? AND conversation = ?",
                (runner, conversation),
            ).fetchone()
        return StoredSession(row[0], int(row[1]), row[2]) if row else None

    def put(self, runner: str, conversation: str, session: StoredSession) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (runner, conversation, session_id, messages, cwd, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (runner, conversation) DO UPDATE SET"
                " session_id = excluded.session_id, messages = excluded.messages,"
                " cwd = excluded.cwd, updated = excluded.updated",
                (runner, conversation, session.session_id, session.messages, session.cwd, time.time()),
            )

    def delete(self, runner: str, conversation: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE runner = ? AND conversation = ?", (runner, conversation))

    def prune(self, older_than: float = FORGET_AFTER) -> int:
        """Forget conversations untouched for `older_than` seconds; returns how many."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE updated < ?", (time.time() - older_than,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
