"""The files llmrun writes for its runs, all in one private directory per process.

A run's files (a long system prompt, a JSON schema, an image, a tool's settings) are
written with mode 0600 into a directory of this process (mode 0700) in the system temp
directory, named `llmrun-<pid>-<start time>-<random>`. Each run removes its own files
when it ends, however it ends (`process.spawn`, and `removed_on_failure` for a run whose
command line could not be built). The directory goes, with whatever is left in it (a
runner's own directory, say), at interpreter exit and, under `cleanup_on_signals`, when
SIGTERM or Ctrl-C ends the process. A process killed outright leaves its directory
behind: `sweep` removes the directories whose owner, named by pid and start time, is
gone; it runs when a process makes its own directory and when the daemon starts.

llmrun's lasting files (the daemon's session database, the record of its tools, the
state of `llmrun chat`) are private too: `write_atomically` and `secure_file` make files
of mode 0600, in directories that llmrun creates with mode 0700.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType

from . import process

PREFIX = "llmrun-"
_OWNED = re.compile(rf"{PREFIX}(\d+-\d+)-[a-z0-9_]+")
"""A private directory's name: the owner's tag (pid-start time) and mkdtemp's random part."""

_dirs: dict[str, str] = {}
"""Parent directory -> this process's private directory in it."""
_owner = 0
"""The pid `_dirs` belong to: a forked child makes its own."""
_lock = threading.RLock()  # reentrant: the SIGTERM handler may run while the main thread holds it

_written: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("llmrun_written", default=None)


def directory(parent: str | None = None) -> str:
    """This process's private directory in `parent` (the system temp directory by default),
    made on first use and again if something removed it; making it sweeps `parent`."""
    global _owner
    parent = parent or tempfile.gettempdir()
    with _lock:
        if _owner != os.getpid():
            _dirs.clear()
            _owner = os.getpid()
        path = _dirs.get(parent)
        if path is None or not os.path.isdir(path):
            sweep(parent)
            path = tempfile.mkdtemp(prefix=f"{PREFIX}{process.owner_tag()}-", dir=parent)
            _dirs[parent] = path
        return path


def write_file(data: str | bytes, *, prefix: str = "", suffix: str = "") -> str:
    """A new file (mode 0600) in the private directory holding `data`; its path.

    Inside `removed_on_failure` the file is also removed when that block fails."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory())
    if (written := _written.get()) is not None:
        written.append(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
    except BaseException:
        process.remove_path(path)
        raise
    return path


def mkdtemp(*, prefix: str = "", parent: str | None = None, for_run: bool = False) -> str:
    """A new directory (mode 0700) in the private directory; its path.

    One `for_run` goes with its run: inside `removed_on_failure` it is also removed when
    that block fails, as `write_file`'s files are."""
    path = tempfile.mkdtemp(prefix=prefix, dir=directory(parent))
    if for_run and (written := _written.get()) is not None:
        written.append(path)
    return path


@contextlib.contextmanager
def removed_on_failure() -> Iterator[None]:
    """The files `write_file` makes in this block are removed if it fails
    (a command line that could not be built after its first file was written)."""
    written: list[str] = []
    token = _written.set(written)
    try:
        yield
    except BaseException:
        for path in written:
            process.remove_path(path)
        raise
    finally:
        _written.reset(token)


@atexit.register
def cleanup() -> None:
    """Remove this process's private directories with everything in them; idempotent."""
    with _lock:
        if _owner == os.getpid():
            for path in _dirs.values():
                shutil.rmtree(path, ignore_errors=True)
        _dirs.clear()


def sweep(parent: str | None = None) -> list[str]:
    """Remove the private directories in `parent` (the system temp directory by default)
    whose owner process has died; returns their paths. Only this user's own directories
    are touched, and only real directories (not symbolic links)."""
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        match = _OWNED.fullmatch(name)
        if match is None or process.is_running(match.group(1)):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid == os.geteuid() and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` by a file (mode 0600) holding `text`: a reader sees the old file or the
    new one, whole. OSError when that fails, and then nothing is left behind."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temporary, path)
    except BaseException:
        process.remove_path(temporary)
        raise


def secure_file(path: str | os.PathLike[str]) -> None:
    """Make sure `path` exists and only its owner may read it: a new file gets mode 0600, and
    one of this user that others may read or write loses those permissions."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.fchmod(fd, info.st_mode & 0o700)
    finally:
        os.close(fd)


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """For a server's main loop: `cleanup()` runs when the block ends, and also when SIGTERM
    ends the process.

    SIGTERM's default action skips atexit handlers, and uvicorn re-raises the signal it
    caught once it has shut down. So during the block SIGTERM kills what is left of the
    tools, cleans up, and then ends the process by that same signal (its parent still
    sees it die of SIGTERM). Ctrl-C raises KeyboardInterrupt, which leaves the block.
    """
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _cleanup_then_die)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        cleanup()


def _cleanup_then_die(signum: int, frame: FrameType | None) -> None:
    process.kill_survivors()
    cleanup()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
