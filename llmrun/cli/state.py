"""The last conversation per runner, kept so that `llmrun chat --continue` can pick it up.

A small JSON file at `$XDG_STATE_HOME/llmrun/state.json` (default
`~/.local/state/llmrun/state.json`):

    {"last_runner": "claude_code",
     "sessions": {"claude_code": {"session_id": "…", "model": "sonnet", "updated": 1760000000}}}

It is a convenience: a file that cannot be read counts as empty, and one that cannot be
written is skipped, so a chat never fails because of it. Only its owner may read it (mode
0600, in a directory of mode 0700 when llmrun creates it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import private


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


def _load() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_runner() -> str | None:
    name = _load().get("last_runner")
    return name if isinstance(name, str) else None


def last_session(runner: str) -> LastSession | None:
    entry = _load().get("sessions", {}).get(runner)
    if not isinstance(entry, dict) or not isinstance(entry.get("session_id"), str):
        return None
    model = entry.get("model")
    return LastSession(runner, entry["session_id"], model if isinstance(model, str) else None)


def remember(runner: str, session_id: str, model: str | None) -> None:
    """Record a runner's latest session; written atomically, failures ignored."""
    data = _load()
    sessions = data.get("sessions")
    if not isinstance(sessions, dict):
        sessions = {}
    sessions[runner] = {"session_id": session_id, "model": model, "updated": int(time.time())}
    data["sessions"] = sessions
    data["last_runner"] = runner
    path = state_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private.write_atomically(path, json.dumps(data, indent=2))
