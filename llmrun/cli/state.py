"""The last conversation, kept so that `llmrun chat --continue` can pick it up.

Two places know it. The log (llmrun/logs.py) holds every logged turn, so a conversation
found there can be continued with any runner: by resuming the tool's session where the tool
keeps sessions that outlive llmrun, otherwise by sending the logged turns again as history.
A small JSON file at `$XDG_STATE_HOME/llmrun/state.json` (default
`~/.local/state/llmrun/state.json`) keeps each runner's latest session as well, logged or
not (`--no-log`):

    {"last_runner": "claude_code",
     "sessions": {"claude_code": {"session_id": "…", "model": "sonnet", "updated": 1760000000.5}}}

`--continue` takes the newer of the two. Both are a convenience: a file that cannot be read
counts as empty, and one that cannot be written is skipped, so a chat never fails because
of them. Only their owner may read them (mode 0600, in a directory of mode 0700 when
llmrun creates it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import private

if TYPE_CHECKING:
    from ..logs import Turn
    from ..runners.base import Runner
    from ..types import Message


def state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative paths are to be ignored.
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llmrun" / "state.json"


@dataclass
class LastSession:
    runner: str
    session_id: str
    model: str | None = None
    updated: float = 0.0


@dataclass
class LastConversation:
    """How to continue a conversation: resume `session_id`, or else send `history` again."""

    runner: str
    session_id: str | None
    model: str | None = None
    system: str | None = None
    conversation_id: str | None = None
    """llmrun's id of the conversation, when it is in the log."""
    history: list[Message] = field(default_factory=list)


def _load() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_session(runner: str) -> LastSession | None:
    entry = _load().get("sessions", {}).get(runner)
    if not isinstance(entry, dict) or not isinstance(entry.get("session_id"), str):
        return None
    model = entry.get("model")
    updated = entry.get("updated")
    return LastSession(
        runner,
        entry["session_id"],
        model if isinstance(model, str) else None,
        float(updated) if isinstance(updated, (int, float)) else 0.0,
    )


def remember(runner: str, session_id: str, model: str | None) -> None:
    """Record a runner's latest session; written atomically, failures ignored."""
    data = _load()
    sessions = data.get("sessions")
    if not isinstance(sessions, dict):
        sessions = {}
    sessions[runner] = {"session_id": session_id, "model": model, "updated": time.time()}
    data["sessions"] = sessions
    data["last_runner"] = runner
    path = state_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private.write_atomically(path, json.dumps(data, indent=2))


# --- the log's side --------------------------------------------------------------------------


def _logged_conversation(runner: str | None) -> list[Turn]:
    """The turns of the last answered conversation in the log (with `runner`, if given)."""
    import sqlite3  # only to continue a conversation: a one-shot chat opens no log here

    from ..logs import Log

    try:
        with Log() as log:
            return log.last_conversation(runner)
    except (sqlite3.Error, OSError):
        return []


def _when(turn: Turn) -> float:
    try:
        return datetime.fromisoformat(turn.time).timestamp()
    except ValueError:
        return 0.0


def _log_is_newer(turns: list[Turn], saved: LastSession | None) -> bool:
    if not turns:
        return False
    if saved is None or saved.session_id in {turn.session_id for turn in turns}:
        return True
    return _when(turns[-1]) >= saved.updated


def last_runner() -> str | None:
    """The runner of the last conversation."""
    name = _load().get("last_runner")
    saved = last_session(name) if isinstance(name, str) else None
    turns = _logged_conversation(None)
    if _log_is_newer(turns, saved):
        return turns[-1].runner
    return name if isinstance(name, str) else None


def can_resume(runner: Runner) -> bool:
    """Whether the runner's session ids outlive llmrun: a HistoryKeepingRunner's do not."""
    from ..runners.base import HistoryKeepingRunner

    return runner.capabilities.sessions and not isinstance(runner, HistoryKeepingRunner)


def last_conversation(runner: Runner) -> LastConversation | None:
    """The last conversation with `runner`, and how to continue it; None when there is none."""
    saved = last_session(runner.name)
    turns = [turn for turn in _logged_conversation(runner.name) if not turn.failed]
    if not _log_is_newer(turns, saved):
        return LastConversation(runner.name, saved.session_id, saved.model) if saved else None
    from ..types import Message

    last = turns[-1]
    continued = LastConversation(
        runner.name, None, model=last.model, system=last.system, conversation_id=last.conversation_id
    )
    if last.session_id and can_resume(runner):
        continued.session_id = last.session_id
    else:
        for turn in turns:
            continued.history += [Message.user(turn.prompt), Message.assistant(turn.answer)]
    return continued
