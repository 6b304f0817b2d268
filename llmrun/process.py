"""The only place in llmrun that starts processes.

Every child gets its own process group (a new session), so that one signal reaches the
tool and everything it started: launchers that do not forward signals (copilot's node
loader) and agent subprocesses included. stdin is never inherited: the prompt is written
and the pipe closed, or it is /dev/null. stdout is read as raw bytes and framed here;
stderr is drained concurrently into a bounded tail so that a flood can neither deadlock
the child nor eat memory. No shell, ever.

No tool outlives llmrun. On Linux every child is told to die with llmrun (PR_SET_PDEATHSIG),
and every child's environment names the llmrun process that started it (`OWNER_VARIABLE`):
what a tool itself started inherits that name but not the death signal, so a starting
daemon finds and kills such leftovers of a dead llmrun (`kill_orphaned_tools`). At
interpreter exit the groups still running are killed.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import errno
import functools
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BinaryNotFound, ConfigError, OutputTooLarge, ProcessFailed, RunnerError, RunnerTimeout

# One pipe's worth (Linux's default capacity). A buffer of 128 KiB or more is an mmap of its
# own to glibc's malloc: a read into one costs about 10 µs more, however little it returns.
READ_SIZE = 64 * 1024
STREAM_LIMIT = 256 * 1024
"""asyncio's StreamReader stops reading a pipe at twice this much unread (the tool then waits)."""
# After the tool exits, stdout normally closes at once; if something it started keeps the
# pipe open and silent for this long, reading stops (the straggler is killed on close).
AFTER_EXIT_QUIET = 0.5

OWNER_VARIABLE = "LLMRUN_OWNER"
"""Set in every child's environment to `owner_tag()` of the llmrun process that started it."""

# Process groups of children still alive; killed at interpreter exit whatever happened.
_live_groups: set[int] = set()


def live_group_count() -> int:
    """Tool process groups started and not yet reaped."""
    return len(_live_groups)


@atexit.register
def kill_survivors() -> None:
    """SIGKILL the process group of every tool still running (at exit, whatever happened)."""
    for pgid in list(_live_groups):
        _signal_group(pgid, signal.SIGKILL)
    _live_groups.clear()


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the reaper and EOF on stdin remain
        return None


_prctl: Any = _load_prctl() if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec: SIGKILL it when llmrun dies, however it dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # llmrun died before the line above, so no signal will come
        os._exit(1)


def _death_signal() -> Callable[[], None] | None:
    """The preexec_fn for a child, or None where there is no PR_SET_PDEATHSIG.

    Linux ties the signal to the thread that starts the child: the thread of the event loop
    that runs the child, which lives at least as long as the child is awaited."""
    return functools.partial(_die_with_parent, os.getpid()) if _prctl is not None else None


def remove_path(path: str) -> None:
    """Remove a file or a whole directory; one already gone is no error."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# llmrun's own secrets: a tool allowed to run commands could otherwise read them.
PRIVATE_VARIABLES = ("LLMRUN_API_KEY",)


@dataclass
class Invocation:
    """Everything needed to start one run of a tool."""

    argv: list[str]
    stdin: bytes | None = None
    """Written to the child's stdin, which is then closed; None gives the child /dev/null."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Set in the child's environment, over the parent's."""
    env_defaults: Mapping[str, str] = field(default_factory=dict)
    """Set only where the parent's environment lacks them (so a user's own choice wins)."""
    env_remove: tuple[str, ...] = ()
    cwd: str | None = None
    pty: bool = False
    """Run on a pseudo-terminal, for tools that refuse to work without one."""
    temp_files: list[str] = field(default_factory=list)
    """Files and directories written for this run (a long system prompt, say), removed when
    it ends however it ends: `spawn` removes them, also when the tool cannot be started."""
    interactive: bool = False
    """A long-lived tool (a warm session): stdin stays open for `Child.send`. Like every
    child it is told to die with llmrun (PR_SET_PDEATHSIG), a signal Linux ties to the
    thread that started it: the thread running the event loop, which must outlive the
    session (as `asyncio.run` in the main thread does)."""

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in (*self.env_remove, *PRIVATE_VARIABLES):
            env.pop(name, None)
        for name, value in self.env_defaults.items():
            env.setdefault(name, value)
        env.update(self.env)
        env[OWNER_VARIABLE] = owner_tag()
        return env

    def remove_files(self) -> None:
        """Remove the run's files; those already gone are no error."""
        for path in self.temp_files:
            remove_path(path)


@dataclass
class Limits:
    stall_timeout: float | None = 300.0
    """No stdout for this long ends the run (tools think silently, so be generous)."""
    timeout: float | None = None
    """Hard limit on the whole run."""
    max_line_bytes: int = 64 * 1024 * 1024
    stderr_tail_bytes: int = 64 * 1024
    kill_grace: float = 3.0
    """Between SIGTERM to the group and SIGKILL."""
    exit_grace: float = 5.0
    """How long a tool may linger after its output is complete before it is killed."""


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Knows the exit code the moment the child exits.

    `Process.wait()` on Python 3.11 resolves only once stdout and stderr have closed too,
    which a grandchild can keep open for ever; `process_exited` comes straight from the
    child watcher.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=STREAM_LIMIT, loop=loop)
        self.exited: asyncio.Future[int] = loop.create_future()
        self._subprocess: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.SubprocessTransport):
            self._subprocess = transport

    def process_exited(self) -> None:
        super().process_exited()
        code = self._subprocess.get_returncode() if self._subprocess is not None else None
        if not self.exited.done():
            self.exited.set_result(code if code is not None else -signal.SIGKILL)


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Child:
    """A running tool. Use through `spawn()`, which guarantees the group is gone afterwards."""

    def __init__(self, invocation: Invocation, limits: Limits) -> None:
        self.invocation = invocation
        self.limits = limits
        self.pid = 0
        self.started = time.monotonic()
        self._stderr = bytearray()
        self._tasks: list[asyncio.Future[Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._pty: Any = None
        self._pty_queue: asyncio.Queue[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._closed = False
        self.stopped: str | None = None
        """Set when llmrun signalled the tool before it exited: why ("" when the run ended first)."""

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        inv = self.invocation
        if inv.cwd is not None and not os.path.isdir(inv.cwd):
            raise ConfigError(f"working directory does not exist: {inv.cwd}")
        if inv.interactive and inv.pty:
            raise ConfigError("an interactive tool runs over pipes, not a pty")
        try:
            if inv.pty:
                await self._start_pty()
            else:
                await self._start_pipes()
        except FileNotFoundError as exc:
            raise BinaryNotFound(f"cannot run {inv.argv[0]}: not found") from exc
        except PermissionError as exc:
            raise BinaryNotFound(f"cannot run {inv.argv[0]}: not executable") from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise RunnerError("the command line is too long for the operating system") from exc
            raise RunnerError(f"cannot start {inv.argv[0]}: {exc}") from exc
        _live_groups.add(self.pid)

    async def _start_pipes(self) -> None:
        inv = self.invocation
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitAwareProtocol(loop),
            *inv.argv,
            stdin=asyncio.subprocess.PIPE if inv.stdin is not None or inv.interactive else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=inv.cwd,
            env=inv.child_env(),
            start_new_session=True,
            preexec_fn=_death_signal(),
        )
        for fd in (1, 2):  # asyncio's pipes read 256 KiB at a time (see READ_SIZE); not uvloop's
            pipe = transport.get_pipe_transport(fd)
            if hasattr(type(pipe), "max_size"):
                pipe.max_size = READ_SIZE  # type: ignore[union-attr]
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        self._proc, self.pid = proc, proc.pid
        self._exited = protocol.exited
        self._tasks.append(asyncio.ensure_future(self._drain_stderr()))
        if inv.stdin is not None and not inv.interactive:
            self._tasks.append(asyncio.ensure_future(self._feed_stdin(inv.stdin)))

    async def _start_pty(self) -> None:
        from ptyprocess import PtyProcess  # only the pty mode needs it

        inv = self.invocation
        self._pty = PtyProcess.spawn(
            inv.argv, cwd=inv.cwd, env=inv.child_env(), dimensions=(50, 200), preexec_fn=_death_signal()
        )
        self.pid = self._pty.pid
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._pty_queue = queue

        def on_readable() -> None:
            try:
                data = os.read(self._pty.fd, READ_SIZE)
            except OSError:  # EIO: every holder of the terminal has gone
                data = b""
            if not data:
                loop.remove_reader(self._pty.fd)
            queue.put_nowait(data)

        loop.add_reader(self._pty.fd, on_readable)
        self._exited = loop.run_in_executor(None, self._wait_pty)
        if inv.stdin is not None:
            self._pty.write(inv.stdin)
            self._pty.sendeof()

    def _wait_pty(self) -> int:
        self._pty.wait()
        status = self._pty.exitstatus
        return int(status) if status is not None else -int(self._pty.signalstatus or signal.SIGKILL)

    async def _feed_stdin(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        # A child that exits without reading its stdin is its own business, not an error here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._proc.stdin.close()

    async def send(self, data: bytes) -> None:
        """Write to an interactive tool's stdin; a tool that has gone is a ProcessFailed."""
        assert self._proc is not None and self._proc.stdin is not None, "send() needs an interactive invocation"
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ProcessFailed("the tool closed its input: it has exited") from exc

    def close_stdin(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    @property
    def exited(self) -> asyncio.Future[int]:
        """Resolves with the exit code when the tool exits."""
        assert self._exited is not None
        return self._exited

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        keep = self.limits.stderr_tail_bytes
        while data := await self._proc.stderr.read(READ_SIZE):
            self._stderr += data
            if len(self._stderr) > 2 * keep:
                del self._stderr[:-keep]

    # --- state ---------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        if self._exited is not None and self._exited.done() and not self._exited.cancelled():
            return self._exited.result()
        return None

    def stderr_tail(self) -> str:
        return bytes(self._stderr[-self.limits.stderr_tail_bytes :]).decode("utf-8", "replace")

    # --- reading -------------------------------------------------------------------------

    async def _read(self) -> bytes:
        if self._pty_queue is not None:
            return await self._pty_queue.get()
        assert self._proc is not None and self._proc.stdout is not None
        return await self._proc.stdout.read(READ_SIZE)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Raw stdout as it arrives, until EOF.

        Raises RunnerTimeout on a stall or when the hard timeout passes. When the tool itself
        has exited but something it started still holds stdout open, reading stops after a
        short quiet spell instead of waiting for that straggler.
        """
        assert self._exited is not None
        limits = self.limits
        deadline = self.started + limits.timeout if limits.timeout else None
        last_output = time.monotonic()
        read: asyncio.Future[bytes] | None = None
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(self._read())
                exited = self._exited.done()
                timeout, expiry = self._next_timeout(exited, last_output, deadline)
                pending: set[asyncio.Future[Any]] = {read} if exited else {read, self._exited}
                done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    data = read.result()
                    read = None
                    if not data:
                        return
                    last_output = time.monotonic()
                    yield data
                elif not done:
                    if expiry == "quiet":
                        return  # the tool is gone; whatever still holds the pipe is killed on close
                    if expiry == "hard":
                        raise RunnerTimeout(f"the run exceeded its {limits.timeout:g} s time limit")
                    raise RunnerTimeout(f"no output for {limits.stall_timeout:g} s (stall timeout)")
        finally:
            if read is not None and not read.done():
                read.cancel()

    def _next_timeout(self, exited: bool, last_output: float, deadline: float | None) -> tuple[float | None, str]:
        """How long the next read may wait, and which limit expires then."""
        now = time.monotonic()
        timeout: float | None = None
        expiry = ""
        if exited:
            timeout, expiry = AFTER_EXIT_QUIET, "quiet"
        elif self.limits.stall_timeout is not None:
            timeout, expiry = last_output + self.limits.stall_timeout - now, "stall"
        if deadline is not None and (timeout is None or deadline - now < timeout):
            timeout, expiry = deadline - now, "hard"
        return (max(0.0, timeout) if timeout is not None else None), expiry

    async def lines(self) -> AsyncGenerator[str, None]:
        """stdout as complete lines, blank ones skipped."""
        async with contextlib.aclosing(self.line_batches()) as batches:
            async for batch in batches:
                for line in batch:
                    yield line

    async def line_batches(self) -> AsyncGenerator[list[str], None]:
        """stdout as complete lines, blank ones skipped: all those of one read in one list, so
        that a tool writing fast costs a step of the event loop per read, not per line.

        Framing happens on raw bytes: b"\\n" never occurs inside a multibyte UTF-8 sequence,
        so each complete line decodes on its own, whatever the read boundaries were.
        """
        cap = self.limits.max_line_bytes
        pending = bytearray()
        async for data in self.chunks():
            if b"\n" not in data:
                pending += data
                if len(pending) > cap:
                    raise OutputTooLarge(f"a line of output exceeded {cap} bytes")
                continue
            parts = data.split(b"\n")
            if pending:
                pending += parts[0]
                parts[0] = bytes(pending)
            batch: list[str] = []
            for raw in parts[:-1]:
                if len(raw) > cap:
                    if batch:
                        yield batch  # the lines before it
                    raise OutputTooLarge(f"a line of output exceeded {cap} bytes")
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line and not line.isspace():
                    batch.append(line)
            if batch:
                yield batch
            pending = bytearray(parts[-1])
            if len(pending) > cap:
                raise OutputTooLarge(f"a line of output exceeded {cap} bytes")
        tail = pending.decode("utf-8", "replace").rstrip("\r")
        if tail and not tail.isspace():
            yield [tail]

    async def text_batches(self) -> AsyncGenerator[list[str], None]:
        """`text()`, each piece in a list of its own (as `line_batches` gives lines)."""
        async with contextlib.aclosing(self.text()) as pieces:
            async for piece in pieces:
                yield [piece]

    async def text(self) -> AsyncGenerator[str, None]:
        """stdout as text pieces as soon as they arrive, for tools that stream plain text.

        The line cap holds here too: more than `max_line_bytes` without a newline (a
        spinner redrawn for ever, say) ends the run instead of growing without bound.
        """
        cap = self.limits.max_line_bytes
        since_newline = 0
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async for data in self.chunks():
            newline = data.rfind(b"\n")
            since_newline = len(data) - newline - 1 if newline >= 0 else since_newline + len(data)
            if since_newline > cap:
                raise OutputTooLarge(f"a line of output exceeded {cap} bytes")
            if piece := decoder.decode(data):
                yield strip_ansi(piece) if self._pty is not None else piece
        if piece := decoder.decode(b"", final=True):
            yield piece

    # --- ending --------------------------------------------------------------------------

    async def wait(self) -> int:
        """Wait for the tool to exit; one that lingers past `exit_grace` is stopped."""
        assert self._exited is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), self.limits.exit_grace)
        except asyncio.TimeoutError:
            self.stopped = f"{self.limits.exit_grace:g} s after it closed its output without exiting"
            await self.close()
            return self.returncode if self.returncode is not None else -signal.SIGKILL

    async def close(self) -> None:
        """SIGTERM the group, give it `kill_grace`, SIGKILL whatever is left, reap."""
        if self._closed:
            return
        self._closed = True
        assert self._exited is not None
        if not self._exited.done():
            self.stopped = self.stopped or ""
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), self.limits.kill_grace)
        # Also after a clean exit: grandchildren left in the group (or ignoring SIGTERM) go too.
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), self.limits.kill_grace)
        _live_groups.discard(self.pid)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pty is not None:
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self._pty.fd)
                self._pty.close(force=True)
        elif self._proc is not None:
            transport = getattr(self._proc, "_transport", None)
            if transport is not None:
                transport.close()


@contextlib.asynccontextmanager
async def spawn(invocation: Invocation, limits: Limits | None = None) -> AsyncIterator[Child]:
    """Start a tool; on leaving the block, for whatever reason, its process group is gone."""
    child = Child(invocation, limits or Limits())
    try:
        await child.start()
        yield child
    finally:
        try:
            if child.pid:
                closing = asyncio.ensure_future(child.close())
                try:
                    await asyncio.shield(closing)
                except asyncio.CancelledError:
                    await closing  # cleanup is bounded by kill_grace; finish it, then let the cancel through
                    raise
        finally:
            invocation.remove_files()


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group, read from /proc (none where there is no /proc)."""
    members = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            fields = _stat_fields(int(entry)) if entry.isdigit() else None
            if fields is not None and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                members.append(int(entry))
    return sorted(members)


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes, summed (0 for any that has gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


async def run_command(
    argv: list[str],
    *,
    timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    env_remove: tuple[str, ...] = (),
    stdin: bytes | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run a short command (a version or status check) and collect its output."""
    invocation = Invocation(argv=argv, stdin=stdin, env=env or {}, env_remove=env_remove, cwd=cwd)
    limits = Limits(stall_timeout=None, timeout=timeout, exit_grace=1.0, kill_grace=1.0)
    async with spawn(invocation, limits) as child:
        out = bytearray()
        async for data in child.chunks():
            out += data
        code = await child.wait()
        return CommandResult(code, out.decode("utf-8", "replace"), child.stderr_tail())


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """Terminal escapes (colours, cursor moves, titles) out; CRLF from a pty back to LF."""
    return _ANSI.sub("", text).replace("\r\n", "\n")


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onwards of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/<pid>/stat).

    A pid and its start time name one process for good: a reused pid has a later start.
    """
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def process_group(pid: int) -> int | None:
    """The process group of a live process (field 5 of /proc/<pid>/stat)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    try:
        return int(fields[2])
    except (IndexError, ValueError):
        return None


_own_tag: tuple[int, str] = (0, "")


def owner_tag() -> str:
    """This process as "<pid>-<start time>" (start time 0 where unknown): a name for good,
    as a reused pid has a later start."""
    global _own_tag
    pid = os.getpid()
    if _own_tag[0] != pid:  # computed once per process (a forked child computes its own)
        _own_tag = (pid, f"{pid}-{start_time(pid) or 0}")
    return _own_tag[1]


def is_running(tag: str) -> bool:
    """Whether the process an `owner_tag` names is still running (True for a malformed tag)."""
    pid_text, _, start_text = tag.partition("-")
    try:
        pid, started = int(pid_text), int(start_text)
    except ValueError:
        return True
    if started:
        return start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def kill_orphaned_tools() -> list[int]:
    """SIGKILL the process groups of this user's processes whose llmrun (named by
    `OWNER_VARIABLE` in their environment) has died: what tools started and left behind
    when their llmrun was killed outright. Returns the group ids killed.

    A process tagged like this one was started under the same llmrun as this one (a
    daemon that a tool started, say): it and its group are left alone."""
    inherited = os.environ.get(OWNER_VARIABLE)
    spared = {0, 1, os.getpgrp()}
    killed: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return killed
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        tag = _owner_of(pid)
        if tag is None or tag == inherited or is_running(tag):
            continue
        pgid = process_group(pid)
        if pgid is None or pgid in spared or pgid in killed:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(pgid)
    return killed


def _owner_of(pid: int) -> str | None:
    """The `OWNER_VARIABLE` a process of this user was started with; None for any other."""
    key = OWNER_VARIABLE.encode() + b"="
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode("ascii", "replace")
    return None


def kill_recorded_group(pgid: int, members: list[tuple[int, int]]) -> bool:
    """SIGKILL process group `pgid` if one of its recorded `members` (pid, start time) is
    still that very process and still in the group. That proves the group is the recorded
    one: a group id stays taken while any member lives. A pid reused since proves nothing."""
    for pid, started in members:
        if start_time(pid) == started and process_group(pid) == pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return False
            return True
    return False


def available_memory() -> int | None:
    """Memory the system can give to new processes without swapping (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
