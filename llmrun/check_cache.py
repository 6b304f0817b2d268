"""What `llmrun` remembers of the tools between calls, so that looking at every tool is quick.

Checking a tool means starting it (`claude --version`, `claude auth status`, `llm models
list`), often a Node.js program that takes a second or more, and `llmrun runners` checks
every tool. So the command keeps, in `$XDG_CACHE_HOME/llmrun/checks.json` (default
`~/.cache/llmrun/checks.json`):

- each tool's version, until its binary changes (resolved path, size, modification time,
  inode: an install or upgrade changes them);
- the models a tool lists, for a day, until its binary or the environment changes;
- whether it is logged in, for `LLMRUN_LOGIN_CACHE_SECONDS` (default 300; 0 never keeps
  it), until its binary or the environment changes, and forgotten at once when a run of
  the tool fails on authentication.

Nothing else is kept: no message a tool printed (it may name an account), no variable's
value; entries are matched by a SHA-256 digest of what they depend on. The file is a
convenience: one that cannot be read counts as empty and is rewritten, one that cannot be
written is skipped. Writers hold a lock and replace the file whole (mode 0600, in a
directory of mode 0700), so concurrent commands never see half a file.

Only the command reads it (`used()`), and `--refresh` checks again and keeps the answers;
the library and the daemon check the tools themselves. `health --probe` never reads it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runners.base import CliRunner

FORMAT = 1
LOGIN_SECONDS = 300.0
MODELS_SECONDS = 86400.0
KEPT = 4
"""Entries kept per runner and kind: a few binaries or environments (a virtualenv, a project's
variables) that the user switches between."""

# Variables that differ between two calls of the same user for no reason that matters to a tool.
VOLATILE = frozenset(
    {
        "_",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "COLUMNS",
        "LINES",
        "WINDOWID",
        "TERM_SESSION_ID",
        "ITERM_SESSION_ID",
        "TMUX_PANE",
        "SSH_CLIENT",
        "SSH_CONNECTION",
        "SSH_TTY",
        "GPG_TTY",
    }
)


@dataclass
class Use:
    """The cache as one command uses it: `refresh` checks again (and keeps the answers);
    `remembered` counts the answers taken from the file."""

    refresh: bool = False
    remembered: int = 0
    only_remembered: bool = False
    data: dict[str, Any] | None = field(default=None, repr=False)


class NotRemembered(Exception):
    """Within `remembered_only()`: a check that the cache cannot answer (the tool would run)."""


_in_use: contextvars.ContextVar[Use | None] = contextvars.ContextVar("llmrun_check_cache", default=None)


@contextlib.contextmanager
def used(*, refresh: bool = False) -> Iterator[Use]:
    """Within the block (and the tasks it starts), health checks and model lists use the cache."""
    use = Use(refresh=refresh)
    token = _in_use.set(use)
    try:
        yield use
    finally:
        _in_use.reset(token)


@contextlib.contextmanager
def remembered_only() -> Iterator[None]:
    """Within the block, a check that would run a tool raises NotRemembered instead (at once
    when nothing is remembered)."""
    use = _in_use.get()
    if use is None or use.refresh or not _loaded(use):
        raise NotRemembered
    use.only_remembered = True
    try:
        yield
    finally:
        use.only_remembered = False


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says relative paths are to be ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmrun" / "checks.json"


def login_seconds() -> float:
    try:
        seconds = float(os.environ.get("LLMRUN_LOGIN_CACHE_SECONDS", LOGIN_SECONDS))
    except ValueError:
        return LOGIN_SECONDS
    return seconds if seconds == seconds else LOGIN_SECONDS  # NaN: the default


# --- what an entry depends on ---------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def binary_stamp(binary: str) -> list[Any] | None:
    """What changes when the tool is installed again or upgraded: the resolved path (a
    symlink to a versioned directory), and the size, modification time and inode of the file."""
    real = os.path.realpath(binary)
    try:
        info = os.stat(real)
    except OSError:
        return None
    return [binary, real, info.st_size, info.st_mtime_ns, info.st_ino]


def _environment(runner: CliRunner) -> list[Any]:
    """What a tool's login and model list can depend on besides its binary: the environment
    (a key, a config directory) and the runner's settings."""
    env = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE)
    return [env, sorted(runner.env.items()), list(runner.extra_args)]


# --- reading and writing ----------------------------------------------------------------------


def _read() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def _loaded(use: Use) -> dict[str, Any]:
    if use.data is None:
        use.data = {} if use.refresh else _read()
    return use.data


def _entry(kind: str, runner: str, key: str) -> dict[str, Any] | None:
    """The kept entry of this kind for this runner that was made for the same key."""
    use = _in_use.get()
    if use is None or use.refresh:
        return None
    return next((entry for entry in _entries(_loaded(use), kind, runner) if entry.get("key") == key), None)


def _entries(data: dict[str, Any], kind: str, runner: str) -> list[dict[str, Any]]:
    """A runner's entries of one kind, latest first: one per binary and environment, a few at most."""
    entries = data.get(kind)
    kept = entries.get(runner) if isinstance(entries, dict) else None
    return [entry for entry in kept if isinstance(entry, dict)] if isinstance(kept, list) else []


def _age(entry: dict[str, Any]) -> float | None:
    checked = entry.get("checked")
    if isinstance(checked, bool) or not isinstance(checked, (int, float)):
        return None
    age = time.time() - checked
    return age if age >= 0 else None  # the clock went back: not to be trusted


def _update(change: Callable[[dict[str, Any]], bool | None]) -> None:
    """Apply `change(data)` to the file, under the lock; skipped when the file cannot be written."""
    path = cache_path()
    with contextlib.suppress(OSError):
        _private_directory(path.parent)
        with _locked(path.parent / ".lock"):
            data = _read() or {"format": FORMAT}
            if change(data) is False:
                return
            from .private import write_atomically

            write_atomically(path, json.dumps(data, indent=1, sort_keys=True))


def _remember(kind: str, runner: str, entry: dict[str, Any]) -> None:
    use = _in_use.get()
    if use is None:
        return

    def change(data: dict[str, Any]) -> None:
        others = [kept for kept in _entries(data, kind, runner) if kept.get("key") != entry["key"]]
        if not isinstance(data.get(kind), dict):
            data[kind] = {}
        data[kind][runner] = [entry, *others][:KEPT]

    _update(change)
    if use.data is not None:
        change(use.data)


def _private_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(0o700)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): replacing the file whole still keeps it whole
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- versions, logins, models -----------------------------------------------------------------


def version(runner: str, binary: str, argv: list[str]) -> str | None:
    """The version the tool printed the last time, while its binary is the same; None when
    not known (or the cache is not in use)."""
    if (use := _in_use.get()) is None:
        return None
    stamp = binary_stamp(binary)
    entry = _entry("versions", runner, _digest(stamp, argv)) if stamp is not None else None
    found = entry.get("version") if entry else None
    if not isinstance(found, str) or not found:
        if use.only_remembered:
            raise NotRemembered(runner)
        return None
    _count()
    return found


def remember_version(runner: str, binary: str, argv: list[str], found: str) -> None:
    if _in_use.get() is None or (stamp := binary_stamp(binary)) is None:
        return
    _remember("versions", runner, {"key": _digest(stamp, argv), "version": found, "checked": time.time()})


async def login(runner: CliRunner, binary: str) -> tuple[bool | None, str]:
    """`runner.check_auth(binary)`, or its answer of the last few minutes. A message the
    tool gave is not kept, so a remembered answer says only when it was checked."""
    stamp = binary_stamp(binary) if _in_use.get() is not None else None
    seconds = login_seconds()
    key = _digest(stamp, _environment(runner)) if stamp is not None and seconds > 0 else None
    entry = _entry("logins", runner.name, key) if key else None
    age = _age(entry) if entry else None
    if entry is not None and age is not None and age < seconds:
        authenticated = entry.get("authenticated")
        if authenticated is None or isinstance(authenticated, bool):
            _count()
            return authenticated, _remembered_login(authenticated, age)
    if (use := _in_use.get()) is not None and use.only_remembered:
        raise NotRemembered(runner.name)
    authenticated, message = await runner.check_auth(binary)
    if key is not None:
        _remember("logins", runner.name, {"key": key, "authenticated": authenticated, "checked": time.time()})
    return authenticated, message


def _remembered_login(authenticated: bool | None, age: float) -> str:
    what = {True: "logged in", False: "not logged in", None: "the tool could not tell whether it is logged in"}
    return f"{what[authenticated]} (checked {int(age)} s ago; `--refresh` checks again)"


async def models(runner: CliRunner, *, refresh: bool = False) -> list[str]:
    """`runner.discover_models(binary)`, or its answer of the last day. An empty list is not
    kept: a tool that listed nothing may have failed to."""
    binary = runner.resolve_binary()
    stamp = binary_stamp(binary) if _in_use.get() is not None else None
    key = _digest(stamp, _environment(runner)) if stamp is not None else None
    entry = _entry("models", runner.name, key) if key and not refresh else None
    age = _age(entry) if entry else None
    if entry is not None and age is not None and age < MODELS_SECONDS:
        listed = entry.get("models")
        if isinstance(listed, list) and listed and all(isinstance(m, str) for m in listed):
            _count()
            return list(listed)
    found = await runner.discover_models(binary)
    if key is not None and found:
        _remember("models", runner.name, {"key": key, "models": list(found), "checked": time.time()})
    return found


def forget_login(runner: str) -> None:
    """A run of the tool failed on authentication: whether it is logged in must be checked
    again. Done whether or not the cache is in use (the library's runs count too)."""
    if not cache_path().exists():
        return

    def change(data: dict[str, Any]) -> bool:
        logins = data.get("logins")
        if not isinstance(logins, dict) or runner not in logins:
            return False
        del logins[runner]
        return True

    _update(change)
    use = _in_use.get()
    if use is not None and use.data is not None:
        change(use.data)


def _count() -> None:
    use = _in_use.get()
    if use is not None:
        use.remembered += 1
