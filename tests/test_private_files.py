"""What llmrun leaves on the machine: no run file after any run, no private directory after
the daemon stops (SIGTERM included), nothing of a killed llmrun after the next start, no
tool process after its llmrun died, and no file that other users may read."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import llmrun
from llmrun import ChatRequest, private, process
from llmrun.cli import state
from llmrun.process import OWNER_VARIABLE
from llmrun.runners.claude_code import SYSTEM_PROMPT_ARGV_LIMIT, ClaudeCodeRunner
from llmrun.server.sessions import SessionStore, StoredSession
from llmrun.server.warm import GroupRecord

from .conftest import FAKE_BIN, ROOT, FakeRun, is_alive, still_alive
from .server_support import claude_fake

pytestmark = pytest.mark.timeout(120)

LONG_SYSTEM = "rule " * SYSTEM_PROMPT_ARGV_LIMIT  # long enough to go through a file


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    yield from claude_fake(monkeypatch, tmp_path)


def files_in(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if not path.is_dir()]


def dead_owner() -> str:
    """The owner tag of a process that has exited."""
    proc = subprocess.Popen(["sleep", "60"])
    started = process.start_time(proc.pid)
    proc.kill()
    proc.wait()
    return f"{proc.pid}-{started}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the files of a run ---------------------------------------------------------------------


def test_run_files_are_written_into_the_private_directory(temp_dir: Path) -> None:
    invocation = ClaudeCodeRunner().build_invocation(ChatRequest.of("hi", system=LONG_SYSTEM), "claude")
    (path,) = map(Path, invocation.temp_files)
    directory = path.parent
    assert directory.parent == temp_dir and directory.name.startswith(f"llmrun-{process.owner_tag()}-")
    assert mode(directory) == 0o700 and mode(path) == 0o600
    invocation.remove_files()
    assert files_in(temp_dir) == []


class FailsAfterItsFiles(ClaudeCodeRunner):
    """A runner whose command line fails once its files are written (a bad option, say)."""

    def build_invocation(self, request: ChatRequest, binary: str) -> process.Invocation:
        invocation = super().build_invocation(request, binary)
        assert invocation.temp_files
        raise llmrun.InvalidRequest("an option the tool cannot take")


async def test_a_run_leaves_no_file_whatever_ends_it(claude: FakeRun, temp_dir: Path, tmp_path: Path) -> None:
    request = ChatRequest.of("hi", system=LONG_SYSTEM)

    # Success.
    assert (await claude.runner().complete(request)).content == "Hello from mock"
    assert claude.invocations()[-1]["argv"].count("--system-prompt-file") == 1

    # The command line fails after its files were written.
    with pytest.raises(llmrun.InvalidRequest):
        await FailsAfterItsFiles().complete(request)
    assert files_in(temp_dir) == []

    # The binary is there, but cannot be started.
    broken = tmp_path / "claude"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    with pytest.raises(llmrun.BinaryNotFound):
        await claude.runner(binary=str(broken)).complete(request)
    assert files_in(temp_dir) == []

    # A stall timeout.
    claude.fault("hang_after=1")
    with pytest.raises(llmrun.RunnerTimeout):
        await claude.runner().complete(ChatRequest.of("hi", system=LONG_SYSTEM, stall_timeout=0.5))
    assert files_in(temp_dir) == []

    # Cancelled while the tool runs.
    started = len(claude.invocations())
    run = asyncio.ensure_future(claude.runner().complete(request))
    for _ in range(3000):  # until the tool runs, bounded
        if len(claude.invocations()) > started:
            break
        await asyncio.sleep(0.01)
    assert files_in(temp_dir) != []  # the system prompt, while the tool reads it
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert files_in(temp_dir) == []


def test_the_instructions_of_a_warm_copilot_go_with_its_process(temp_dir: Path) -> None:
    from llmrun.runners.copilot import CopilotRunner
    from llmrun.sessions import SessionSettings

    runner = CopilotRunner(binary=str(FAKE_BIN / "copilot"))
    connection = runner.warm_connection(SessionSettings(system="Be terse"), None)
    run_dirs = [path for path in connection.invocation.temp_files if os.path.isdir(path)]
    assert len(run_dirs) == 1 and files_in(Path(run_dirs[0])) != []
    connection.invocation.remove_files()
    assert files_in(temp_dir) == []


# --- leftovers of processes that died -------------------------------------------------------


def test_a_sweep_removes_the_private_directories_of_dead_owners_only(temp_dir: Path, tmp_path: Path) -> None:
    dead_tag = dead_owner()
    dead = temp_dir / f"llmrun-{dead_tag}-abc123"
    (dead / "gemini-x").mkdir(parents=True)
    (dead / "system-x.md").write_text("x")
    living = temp_dir / f"llmrun-{process.owner_tag()}-def456"
    living.mkdir()
    unrelated = temp_dir / "llmrun-system-x.md"
    unrelated.write_text("x")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    link = temp_dir / f"llmrun-{dead_tag}-link"
    link.symlink_to(target)

    assert private.sweep() == [str(dead)]
    assert not dead.exists() and living.exists() and unrelated.exists()
    assert link.is_symlink() and (target / "keep").exists()

    # Making a private directory sweeps too.
    (temp_dir / f"llmrun-{dead_tag}-ghi789").mkdir()
    made = Path(private.directory())
    assert sorted(p.name for p in temp_dir.iterdir()) == sorted([made.name, living.name, unrelated.name, link.name])


def test_tools_left_by_a_dead_llmrun_are_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    def tool(owner: str) -> subprocess.Popen[bytes]:
        # A tool's own child: same process group and environment, no death signal.
        return subprocess.Popen(["sleep", "600"], env={**os.environ, OWNER_VARIABLE: owner}, start_new_session=True)

    inherited = dead_owner()
    monkeypatch.setenv(OWNER_VARIABLE, inherited)
    orphan, of_a_living_llmrun, kin = tool(dead_owner()), tool(process.owner_tag()), tool(inherited)
    try:
        killed = process.kill_orphaned_tools()
        assert orphan.wait(timeout=30) == -signal.SIGKILL and orphan.pid in killed
        # Spared: a tool of a running llmrun, and one started under the same llmrun as this one.
        assert is_alive(of_a_living_llmrun.pid) and is_alive(kin.pid)
        assert of_a_living_llmrun.pid not in killed and kin.pid not in killed
    finally:
        for proc in (orphan, of_a_living_llmrun, kin):
            proc.kill()
            proc.wait()


# --- the daemon -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`python -m llmrun serve` as a process of its own, ready to answer."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmrun", "serve", "--port", self.url.rsplit(":", 1)[1]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(600):  # its start-up, bounded
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "the daemon exited at start"
            time.sleep(0.1)
        raise AssertionError("the daemon did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def daemon_env(tmp_path: Path, **fake: str) -> dict[str, str]:
    """One-shot runs only (no warm sessions), with a temp directory of the test's own."""
    config = tmp_path / "config.toml"
    config.write_text("[server]\nmax_warm = 0\n")
    (tmp_path / "temp").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLMRUN_CONFIG": str(config),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TMPDIR": str(tmp_path / "temp"),
        **fake,
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_daemon_leaves_no_private_directory(tmp_path: Path, sig: signal.Signals) -> None:
    # Copilot keeps a private directory of its runner for as long as the runner lives.
    temp = tmp_path / "temp"
    env = daemon_env(
        tmp_path,
        LLMRUN_COPILOT_BIN=str(FAKE_BIN / "copilot"),
        LLMRUN_FAKE_SCENARIO="llmrun-text",
        LLMRUN_FAKE_RECORD=str(tmp_path / "record"),
    )
    daemon = Daemon(env)
    try:
        chat = {"model": "copilot", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{daemon.url}/v1/chat/completions", json=chat, timeout=60)
        assert response.status_code == 200, response.text
        assert list(temp.iterdir()) != []  # the runner's directory, while the daemon runs
        daemon.proc.send_signal(sig)
        code = daemon.proc.wait(timeout=60)
    finally:
        daemon.stop()
    assert code in (0, -sig, 128 + sig), code  # ended by the signal, or exited saying so
    assert list(temp.iterdir()) == []


def test_a_killed_daemon_takes_its_tools_along_and_the_next_start_clears_what_is_left(tmp_path: Path) -> None:
    record, temp = tmp_path / "record", tmp_path / "temp"
    record.mkdir()
    env = daemon_env(
        tmp_path,
        LLMRUN_CLAUDE_CODE_BIN=str(FAKE_BIN / "claude"),
        LLMRUN_FAKE_SCENARIO="mock-stream-json-partial",
        LLMRUN_FAKE_RECORD=str(record),
        LLMRUN_FAKE_FAULT="hang_after=1,grandchild",  # the tool hangs; its own child has no death signal
    )
    chat = {
        "model": "claude",
        "stream": True,
        "messages": [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "hi"}],
    }
    first = Daemon(env)
    second: Daemon | None = None
    leftovers: list[int] = []
    try:

        def request() -> None:
            try:
                with httpx.stream("POST", f"{first.url}/v1/chat/completions", json=chat, timeout=60) as response:
                    for _ in response.iter_lines():
                        pass
            except httpx.HTTPError:
                pass  # the daemon is killed under it

        threading.Thread(target=request, daemon=True).start()
        for _ in range(600):  # until the tool runs and has started its child, bounded
            if list(record.glob("invocation-*.json")) and list(record.glob("grandchild-*.pid")):
                break
            time.sleep(0.1)
        ((invocation,), (grandchild_file,)) = (
            list(record.glob("invocation-*.json")),
            list(record.glob("grandchild-*.pid")),
        )
        tool, grandchild = json.loads(invocation.read_text())["pid"], int(grandchild_file.read_text())
        leftovers = [tool, grandchild]
        assert files_in(temp) != []  # the system prompt file, while the tool runs

        first.proc.kill()
        first.proc.wait(timeout=30)
        assert still_alive([tool], within=30) == []  # it died with the daemon

        second = Daemon(env)  # its start kills the tool's child and removes the first daemon's files
        assert still_alive([grandchild], within=30) == []
        assert list(temp.iterdir()) == []
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for pid in leftovers:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- who may read llmrun's files --------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_the_session_database_and_its_companions_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "llmrun" / "sessions.sqlite3"
    store = SessionStore(path)
    try:
        store.put("claude_code", "c1", StoredSession("s1", 2, None))
        companions = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        assert [mode(p) for p in companions] == [0o600] * 3
        assert mode(path.parent) == 0o700
    finally:
        store.close()

    # A database an older llmrun left readable by others is made private.
    path.chmod(0o644)
    SessionStore(path).close()
    assert mode(path) == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_the_record_of_warm_tools_is_private(tmp_path: Path) -> None:
    record = GroupRecord(tmp_path / "warm")
    record.write([(4242, [(4242, 1)])])
    assert mode(record.path) == 0o600 and mode(record.directory) == 0o700
    assert [p.name for p in record.directory.iterdir()] == [record.path.name]


@pytest.mark.usefixtures("permissive_umask")
def test_the_chat_state_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    state.remember("claude_code", "s1", "sonnet")
    path = state.state_path()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert state.last_session("claude_code") is not None


@pytest.mark.usefixtures("permissive_umask")
def test_private_files_and_directories(temp_dir: Path) -> None:
    path = Path(private.write_file("x", prefix="system-", suffix=".md"))
    made = Path(private.mkdtemp(prefix="gemini-"))
    assert mode(path) == 0o600 and mode(made) == 0o700 and mode(path.parent) == 0o700
